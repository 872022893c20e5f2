"""Teachers: any timm classifier, frozen, from pretrained weights or a local checkpoint.

    teacher = create_teacher('resnet50', num_classes=1000, pretrained=True)         # online
    teacher = create_teacher('resnet50', num_classes=10, checkpoint='r50.safetensors')

A teacher never trains: its parameters have requires_grad=False, it stays in eval mode even
when a parent calls .train(), and it runs under no_grad.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import timm
import torch
import torch.nn as nn
from timm.models import get_pretrained_cfg_value, load_state_dict

from .students import check_model_name

__all__ = ['FrozenTeacher', 'create_teacher', 'load_weights', 'check_num_classes']


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_weights(path: str) -> dict:
    """A state dict from safetensors or a torch file, never unpickling arbitrary objects.

    Torch files load with weights_only=True; 'state_dict'/'model' wrappers and a DDP
    'module.' prefix are unwrapped (timm's load_state_dict does this).
    """
    if not os.path.isfile(path):
        raise ValueError(f'checkpoint not found: {path}')
    try:
        return load_state_dict(path, use_ema=False, weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, foreign format: one clear line
        raise ValueError(f'cannot load checkpoint {path}: {_first_line(e)}') from None


def check_num_classes(teacher_classes: int, student_classes: int, teacher_name: str) -> None:
    if teacher_classes != student_classes:
        raise ValueError(f'teacher {teacher_name} predicts {teacher_classes} classes but the student has '
                         f'{student_classes}; use a teacher trained on the same label set')


class FrozenTeacher(nn.Module):
    """A frozen classifier: eval mode always, no gradients."""

    def __init__(self, model: nn.Module, name: str = '') -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name or type(model).__name__
        self.num_classes = model.num_classes

    def train(self, mode: bool = True) -> 'FrozenTeacher':
        return super().train(False)  # batch norm statistics and dropout stay in inference mode

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def create_teacher(
        model_name: str,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
        checkpoint: Optional[str] = None,
        **kwargs: Any,
) -> FrozenTeacher:
    """Build a frozen timm teacher.

    With `checkpoint`, the model is built with the checkpoint's class count (read from its
    classifier) and the weights loaded strictly; with `pretrained`, timm's weights are used.
    `num_classes` is the student's class count: a teacher that predicts another number of
    classes is refused, since its labels would mean nothing to the student.
    """
    check_model_name(model_name)
    state = None
    if checkpoint is not None:
        state = load_weights(checkpoint)
        try:
            head_key = get_pretrained_cfg_value(model_name, 'classifier') or 'head'
        except RuntimeError:  # a model registered without a pretrained cfg
            head_key = 'head'
        head_key = head_key[0] if isinstance(head_key, (list, tuple)) else head_key
        weight = state.get(f'{head_key}.weight')
        if weight is not None:
            kwargs = dict(kwargs, num_classes=weight.shape[0])
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f'checkpoint {checkpoint} does not fit teacher {model_name}: {_first_line(e)}') from None
    elif pretrained:
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as e:  # offline, no weights released, hub refused
            raise ValueError(f'cannot fetch pretrained weights for teacher {model_name} ({_first_line(e)}); '
                             f'give a local checkpoint instead') from None
    else:  # random weights (tests, smoke runs): sized for the student's classes
        if num_classes is not None:
            kwargs = dict(kwargs, num_classes=kwargs.get('num_classes', num_classes))
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    if num_classes is not None:
        check_num_classes(model.num_classes, num_classes, model_name)
    return FrozenTeacher(model, model_name)
