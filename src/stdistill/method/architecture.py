"""What a trained student is, recorded in its checkpoint, so that it is rebuilt as it was trained.

A checkpoint's weights do not say everything about the network that holds them: an STD
student's token pair reads the same-sized features at every block of a Mixer, so weights
trained with tokens at block 1 load without complaint into tokens at block 3, and score
another model. Every checkpoint therefore records the architecture (`stdistill.architecture`
in its safetensors header), and whatever rebuilds a trained student (eval, export, predict,
a student as a teacher) checks what it was given against that record:

    {"model": "mixer_t4_32", "model_kwargs": {}, "img_size": 32, "in_chans": 1, "num_classes": 10,
     "method": "std", "teachers": [{"token_position": 1}], "tokens": "both", "token_depth": 1}

Token positions are recorded as the block index they resolve to (-1 in a 4-block Mixer is 3).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict

import torch.nn as nn

from ..config import first_difference
from ..utils.errors import UserError
from ..methods import method_of
from .teachers import TRAINING_ONLY_KWARGS, recorded_architecture

if TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = ['student_architecture', 'check_architecture']


def student_architecture(cfg: 'TrainConfig', student: nn.Module) -> Dict[str, Any]:
    """The record of a student built from `cfg` (train.build_student): JSON-ready. kd and none
    train the same network (the backbone alone) and record method none."""
    arch = {'model': cfg.model.split('.')[0],
            'model_kwargs': {k: v for k, v in cfg.model_kwargs.items() if k not in TRAINING_ONLY_KWARGS},
            'img_size': cfg.img_size, 'in_chans': cfg.in_chans, 'num_classes': student.num_classes,
            'method': method_of(cfg.method).student}
    if method_of(cfg.method).student == 'std':
        arch.update(teachers=[{'token_position': int(p)} for p in student.token_positions], tokens=cfg.tokens,
                    token_depth=cfg.token_depth)
    return json.loads(json.dumps(arch))  # as read back: tuples become lists


def check_architecture(path: str, cfg: 'TrainConfig', student: nn.Module) -> None:
    """Refuse, in one line, a student built from `cfg` that is not the one the checkpoint `path`
    records. Checkpoints written before the record was kept have none, and are not checked."""
    recorded = recorded_architecture(path)
    if recorded is None:
        return
    built = student_architecture(cfg, student)
    if recorded == built:
        return
    key, was, now = first_difference('', recorded, built)
    if key == 'method':  # kd and none build the same network, recorded as none: show what was given
        now = cfg.method
    block = ' (block index)' if key.endswith('token_position') else ''
    raise UserError(f'{path} holds a student trained with {key}={json.dumps(was)}{block}, and the config given '
                    f'builds {key}={json.dumps(now)}: a trained student is rebuilt as it was trained, so drop the '
                    f'override or --config that changes {key} (the run\'s own config.yaml is the default)')
