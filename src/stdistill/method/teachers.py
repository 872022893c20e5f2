"""Teachers: any timm classifier, frozen, from pretrained weights or a local checkpoint.

    teacher = create_teacher('resnet50', num_classes=1000, pretrained=True)         # online
    teacher = create_teacher('resnet50', num_classes=10, checkpoint='r50.safetensors')

A teacher never trains: its parameters have requires_grad=False, it stays in eval mode even
when a parent calls .train(), and it runs under no_grad.

Each teacher knows its own input contract (`teacher.contract`: mean/std, channels, fixed size,
interpolation), read from, in order: the teacher's entry in the config (`mean`, `std`,
`img_size`, `interpolation`), the contract a stdistill checkpoint records, and the model's
timm pretrained cfg. `teacher.adapt_to(student_contract)` makes it turn the student's batch
into that input (teacher_input.py) and checks at once, with one blank image, that the model
takes it: what cannot be adapted is a UserError naming the teacher and the key to set.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import clean_state_dict, get_pretrained_cfg_value

from ..utils.errors import UserError, first_line, whole_message
from ..models.students import STDOutput, check_model_name, combine_heads, token_student_base
from .teacher_input import RECORD_KEY, InputContract, TeacherInput, autocast_enabled, fp32_region, to_float

__all__ = ['FrozenTeacher', 'create_teacher', 'create_with_weights', 'load_weights', 'check_num_classes',
           'recorded_contract', 'recorded_classes', 'recorded_score', 'recorded_head',
           'recorded_architecture', 'model_contract',
           'CLASSES_KEY', 'SCORE_KEY', 'ARCHITECTURE_KEY', 'TRAINING_ONLY_KWARGS', 'EMA_FILE']

CLASSES_KEY = 'stdistill.classes'  # a checkpoint's class names, JSON, in its safetensors header
ARCHITECTURE_KEY = 'stdistill.architecture'  # what rebuilds the student: model, its kwargs, size, tokens (JSON)
# model_kwargs that act during training only: the trained network is the same without them
TRAINING_ONLY_KWARGS = ('pretrained_cfg_overlay', 'drop_rate', 'drop_path_rate', 'proj_drop_rate', 'attn_drop_rate',
                        'pos_drop_rate', 'patch_drop_rate')
_RECORD_TYPES = {'model': str, 'model_kwargs': dict, 'img_size': int, 'in_chans': int, 'num_classes': int,
                 'method': str}
SCORE_KEY = 'stdistill.score'  # its validation top-1 (and its class head's), images and chance level, JSON
EMA_FILE = 'model_ema.safetensors'  # a stdistill checkpoint's EMA weights, beside model.safetensors


def load_weights(path: str, use_ema: bool = False) -> dict:
    """A state dict from safetensors or a torch file, never unpickling arbitrary objects.

    Torch files load with weights_only=True; the wrappers of timm's and DeiT's train scripts
    ('state_dict' / 'model', or with use_ema 'state_dict_ema' / 'model_ema') and a DDP 'module.'
    prefix are unwrapped. use_ema=True reads a stdistill checkpoint's model_ema.safetensors
    beside the given model.safetensors. Raises UserError when use_ema finds no EMA weights
    (timm would fall back to the raw ones in silence).
    """
    if use_ema and path.endswith('.safetensors') and os.path.basename(path) != EMA_FILE:
        beside = os.path.join(os.path.dirname(path), EMA_FILE)
        # only a stdistill checkpoint's model.safetensors has its EMA beside it, under that name
        if os.path.basename(path) != 'model.safetensors' or not os.path.isfile(beside):
            raise UserError(f'use_ema: {path} holds one set of weights and no {EMA_FILE} lies beside it (the run '
                            f'had no model_ema): set use_ema: false')
        path = beside
    if not os.path.isfile(path):
        raise UserError(f'checkpoint not found: {path}')
    try:
        if path.endswith('.safetensors'):
            return load_file(path)
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, foreign format: one clear line
        raise UserError(f'cannot load checkpoint {path} ({type(e).__name__}: {first_line(e)}): give a safetensors '
                        f'file or a torch weights file') from None
    if not isinstance(checkpoint, dict):
        raise UserError(f'cannot load checkpoint {path}: it holds a {type(checkpoint).__name__}, not a state dict')
    keys = ('state_dict_ema', 'model_ema') if use_ema else ('state_dict', 'model')
    key = next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)
    if use_ema and key is None:
        raise UserError(f'use_ema: {path} holds no EMA weights (no state_dict_ema or model_ema): set use_ema: false')
    return clean_state_dict(checkpoint[key] if key else checkpoint)


@functools.lru_cache(maxsize=32)
def _header_of(path: str, version: Tuple[int, int, int]) -> Dict[str, str]:
    with safe_open(path, 'pt') as f:
        return dict(f.metadata() or {})


def _header(path: str) -> Dict[str, str]:
    """A safetensors file's header metadata, read once per version of the file (its inode, size and
    modification time): a checkpoint's records (contract, architecture, score, classes) are read
    together whenever a student or teacher is rebuilt."""
    st = os.stat(path)
    return _header_of(os.path.abspath(path), (st.st_ino, st.st_size, st.st_mtime_ns))


def _recorded_json(path: str, key: str, what: str) -> Any:
    """The JSON value a stdistill checkpoint records under `key` in its safetensors header; None for
    a file that records none (or is not a safetensors file). A damaged record is a UserError naming `what`."""
    if not path.endswith('.safetensors') or not os.path.isfile(path):
        return None
    try:
        text = _header(path).get(key)
        return json.loads(text) if text else None
    except Exception as e:  # a damaged record
        raise UserError(f'cannot read the {what} recorded in {path}: {first_line(e)}') from None


def recorded_classes(path: str) -> Optional[List[str]]:
    """The class names (in index order) a stdistill checkpoint records; None when it records none."""
    names = _recorded_json(path, CLASSES_KEY, 'class names')
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise UserError(f'the class names recorded in {path} are damaged (not a list of names)')
    return names


def recorded_score(path: str) -> Optional[Dict[str, float]]:
    """The validation score a stdistill checkpoint records for its weights ({'top1', 'top1_cls',
    'images', 'chance_top1'}: percent, except images); None for a file that records none."""
    score = _recorded_json(path, SCORE_KEY, 'validation score')
    try:
        return None if score is None else {k: float(score[k]) for k in ('top1', 'top1_cls', 'images', 'chance_top1')}
    except (TypeError, KeyError, ValueError) as e:
        raise UserError(f'cannot read the validation score recorded in {path}: {first_line(e)}') from None


def recorded_head(path: str, chosen_on_holdout: bool = False) -> Optional[str]:
    """The head a stdistill checkpoint's weights predict with, as its run scored them; None for a
    file that records none. chosen_on_holdout: only a head that inference_head auto chose on the
    run's holdout images (None for any other)."""
    score = _recorded_json(path, SCORE_KEY, 'validation score')
    if not isinstance(score, dict) or (chosen_on_holdout and score.get('chosen_on') != 'holdout'):
        return None
    head = score.get('inference_head')
    return head if isinstance(head, str) else None


def recorded_architecture(path: str) -> Optional[Dict[str, Any]]:
    """The architecture a stdistill checkpoint records (architecture.student_architecture: model,
    model_kwargs, img_size, in_chans, num_classes, method and, for STD, each teacher's token
    block); None for a file that records none (older checkpoints, other programs')."""
    arch = _recorded_json(path, ARCHITECTURE_KEY, 'architecture')
    if arch is None:
        return None
    wrong = next((k for k, kind in _RECORD_TYPES.items() if not isinstance(arch.get(k), kind)), None) \
        if isinstance(arch, dict) else 'the record'
    if wrong:
        raise UserError(f'the architecture recorded in {path} is damaged ({wrong} is missing or of the wrong '
                        f'type): use the checkpoint as its run wrote it')
    return arch


def _recorded_kwargs(checkpoint: str, model_name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """kwargs for a teacher built from a stdistill checkpoint: the model_kwargs it was trained with
    (a model_kwargs key that changes no weight shape, global_pool say, would otherwise be lost in
    silence). A teacher entry that names another model or gives another value is refused."""
    arch = recorded_architecture(checkpoint)
    if arch is None:
        return kwargs
    base = token_student_base(model_name) or model_name.split('.')[0]
    if arch['model'] != base:
        raise UserError(f'checkpoint {checkpoint} holds a {arch["model"]}, not a {base}: set the teacher\'s '
                        f'model to {arch["model"]}')
    token_args = {}
    if token_student_base(model_name):  # the token keys are checked against the record by themselves
        token_args = _recorded_token_args(checkpoint, arch, model_name, kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in token_args}
    recorded = arch['model_kwargs']
    for key in sorted(set(recorded) | set(kwargs)):
        if key in TRAINING_ONLY_KWARGS or key not in kwargs or kwargs[key] == recorded.get(key):
            continue
        trained = f'with model_kwargs.{key}={recorded[key]!r}' if key in recorded else f'without model_kwargs.{key}'
        raise UserError(f'checkpoint {checkpoint} was trained {trained}, and the teacher entry gives '
                        f'kwargs.{key}={kwargs[key]!r}: remove it (a teacher is built as it was trained)')
    return {**recorded, **kwargs, **token_args}


def _recorded_token_args(checkpoint: str, arch: Dict[str, Any], model_name: str, kwargs: Dict[str, Any]
                         ) -> Dict[str, Any]:
    """A token student as a teacher (std_*, deit_*), built as its checkpoint records it: its token
    pairs (count, blocks, kind, depth), and by default the head its run predicted with (for
    inference_head auto, the one chosen on the holdout images). A kwarg that contradicts the record
    is refused: tokens at another block load the same weights and are another model."""
    method = 'deit' if model_name.startswith('deit_') else 'std'
    if arch.get('method') != method:
        raise UserError(f'checkpoint {checkpoint} holds a student trained with method {arch.get("method")}, not a '
                        f'{model_name} ({method}): name the teacher after its method')
    recorded = {}
    if method == 'std':
        positions = [t['token_position'] for t in arch.get('teachers', [])]
        recorded = dict(num_teachers=len(positions), token_positions=positions, tokens=arch.get('tokens', 'both'),
                        token_depth=arch.get('token_depth', 1))
    for key, value in recorded.items():
        given = kwargs.get(key)
        if given is not None and (list(given) if key == 'token_positions' else given) != value:
            raise UserError(f'checkpoint {checkpoint} was trained with {key}={value!r}, and the teacher entry gives '
                            f'kwargs.{key}={given!r}: remove it (a teacher is built as it was trained)')
    head = recorded_head(checkpoint)
    given = {k: v for k, v in kwargs.items() if k in (*recorded, 'inference_head')}
    return {**recorded, 'inference_head': head if head in ('avg', 'cls', 'dist') else 'avg', **given}


def check_num_classes(teacher_classes: int, student_classes: int, teacher_name: str) -> None:
    if teacher_classes != student_classes:
        raise UserError(f'teacher {teacher_name} predicts {teacher_classes} classes but the student has '
                        f'{student_classes}; use a teacher trained on the same label set')


def recorded_contract(path: str) -> Dict[str, Any]:
    """The input contract a stdistill checkpoint (safetensors) records, as InputContract fields;
    {} for a file that records none (another program's, or a torch file)."""
    if not path.endswith('.safetensors'):
        return {}
    try:
        text = _header(path).get(RECORD_KEY)
        return InputContract.from_record(text) if text else {}
    except Exception as e:  # a damaged record: the weights loader names the file too
        raise UserError(f'cannot read the input contract recorded in {path}: {first_line(e)}') from None


def _in_chans(model: nn.Module) -> int:
    """The channel count of the model's first convolution (timm's `first_conv`), else in_chans."""
    first = (getattr(model, 'pretrained_cfg', None) or {}).get('first_conv')
    first = first[0] if isinstance(first, (list, tuple)) else first
    try:
        return int(model.get_submodule(first).in_channels)
    except (AttributeError, TypeError):
        return int(getattr(model, 'in_chans', 3))


def _fixed_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The one input size a model takes (a ViT or Mixer patch embedding checks it), or None."""
    for attr in ('patch_embed', 'stem'):
        embed = getattr(model, attr, None)
        if getattr(embed, 'strict_img_size', False) and getattr(embed, 'img_size', None):
            return tuple(embed.img_size)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('fixed_input_size') and not getattr(model, 'dynamic_img_size', False):
        return tuple(cfg['input_size'][-2:])
    return None


def model_contract(model: nn.Module, recorded: Optional[Dict[str, Any]] = None,
                   overrides: Optional[Dict[str, Any]] = None) -> InputContract:
    """A model's input contract: `overrides` (mean, std, img_size, interpolation; None = unset)
    over `recorded` (a stdistill checkpoint's) over its timm pretrained cfg. A size is kept when
    the model needs a fixed one, when the checkpoint records the size it was trained at (a CNN
    trained on 32x32 images does not predict well on 64x64 ones), or when an override gives it;
    otherwise (timm's cfg alone) the student's size is used. Raises UserError when the mean and
    std do not have one value per input channel."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    fields = {'mean': tuple(cfg.get('mean', IMAGENET_DEFAULT_MEAN)), 'std': tuple(cfg.get('std', IMAGENET_DEFAULT_STD)),
              'interpolation': cfg.get('interpolation') or 'bicubic'}
    fields.update({k: v for k, v in (recorded or {}).items() if k != 'img_size'})
    fields['in_chans'] = _in_chans(model)
    fields['img_size'] = _fixed_size(model) or (recorded or {}).get('img_size')
    for key, value in (overrides or {}).items():
        if value is not None:
            fields[key] = (value, value) if key == 'img_size' and isinstance(value, int) else \
                tuple(value) if isinstance(value, (list, tuple)) else value
    return InputContract(**fields)


class FrozenTeacher(nn.Module):
    """A frozen classifier: eval mode always, no gradients, fp32 weights and statistics,
    channels-last. With an input adapter (`adapt_to`), it takes the student's batch."""

    def __init__(self, model: nn.Module, name: str = '', contract: Optional[InputContract] = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.name = name or type(model).__name__
        self.num_classes = model.num_classes
        self.contract = contract or model_contract(model)
        self.input: Optional[TeacherInput] = None

    def train(self, mode: bool = True) -> 'FrozenTeacher':
        return super().train(False)  # batch norm statistics and dropout stay in inference mode

    def adapt_to(self, student: InputContract, label: str = 'teacher') -> 'FrozenTeacher':
        """Take batches of the student's contract from now on; check once, with a blank image on
        the teacher's device, that the model takes the adapted input. `label` names the teacher
        in errors (e.g. 'teachers.0'). Raises UserError naming the config key to set."""
        key = f'{label} ({self.name})'
        try:
            adapter = TeacherInput(student, self.contract)
        except UserError as e:
            raise UserError(f'{key}: {e}') from None
        device = next(self.model.parameters(), torch.empty(0)).device
        self.input = adapter.to(device)
        size = tuple(student.img_size) if student.img_size else (224, 224)
        probe = torch.zeros(1, student.in_chans, *size, device=device)
        shape = 'x'.join(map(str, adapter.output_shape(probe.shape)[1:]))
        try:
            out = self(probe)
        except Exception as e:  # the model's own check (a ViT at another size, a Swin window...)
            raise UserError(f'{key} cannot take {shape} inputs ({first_line(e)}): set {label}.img_size to '
                            f'the size it was trained at') from None
        if tuple(out.shape) != (1, self.num_classes):
            raise UserError(f'{key} returns {tuple(out.shape)} for one {shape} image, not (1, {self.num_classes}) '
                            f'class logits: use a classifier')
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes), fp32, of a batch in the student's contract (after adapt_to)
        or the teacher's own. The features run under the caller's autocast; the classifier
        runs in fp32, since bf16 logits (8-bit mantissa) tie and flip the teacher's argmax."""
        if self.input is not None:
            x = self.input(x)
        x = x.contiguous(memory_format=torch.channels_last)
        if not autocast_enabled(x.device.type) or not hasattr(self.model, 'forward_head'):
            return self.model(x).float()
        features = self.model.forward_features(x)
        with fp32_region(x.device.type):
            out = self.model.forward_head(to_float(features))
            if isinstance(out, STDOutput):  # a token student: the head it predicts with
                out = combine_heads(out, self.model.inference_head)
            return out.float()


def _cfg_value(model_name: str, key: str, default: Any) -> Any:
    try:
        value = get_pretrained_cfg_value(model_name, key) or default
    except RuntimeError:  # a model registered without a pretrained cfg
        value = default
    return value[0] if isinstance(value, (list, tuple)) else value


def create_with_weights(model_name: str, pretrained: bool, role: str = 'model', **kwargs: Any) -> nn.Module:
    """timm.create_model, with pretrained weights failing in one line (UserError) instead of a
    hub or state-dict traceback. A local file given as `pretrained_cfg_overlay=dict(file=...)`
    (what a hub download ends in) must exist, and its class count is read from its classifier
    when the overlay does not give it, so that timm keeps the file's head instead of dropping
    it as another label set's. TypeError (an argument the model does not take) passes through.
    `role` ('teacher', 'student') names the model in errors."""
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if pretrained and isinstance(overlay, dict) and overlay.get('file'):
        path = str(overlay['file'])
        if not os.path.isfile(path):
            raise UserError(f'pretrained_cfg_overlay file not found for {role} {model_name}: {path}')
        if 'num_classes' not in overlay:
            head = load_weights(path).get(f'{_cfg_value(model_name, "classifier", "head")}.weight')
            if head is not None:
                kwargs['pretrained_cfg_overlay'] = dict(overlay, num_classes=int(head.shape[0]))
    try:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except TypeError:
        raise
    except (OSError, RuntimeError, ValueError) as e:  # offline, no weights released, a file that does not fit
        if not pretrained:
            raise
        local = 'a checkpoint, or ' if role == 'teacher' else ''
        raise UserError(f'cannot load pretrained weights for {role} {model_name} ({whole_message(e)}); give '
                        f'{local}a local file with pretrained_cfg_overlay: {{file: ...}}, or set pretrained: '
                        f'false') from None


def _backbone_of_std_student(state: Dict[str, Any], model_name: str) -> Dict[str, Any]:
    """An STD student's checkpoint (backbone.* and token_pairs.*) as its plain timm backbone, whose
    class head is then the teacher, unless the teacher is the token student itself (std_*); any
    other state dict unchanged."""
    if token_student_base(model_name):
        return state
    if state and all(k.startswith(('backbone.', 'token_pairs.')) for k in state):
        return {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    return state


def _create_sized(model_name: str, recorded_size: Optional[Tuple[int, int]], **kwargs: Any) -> nn.Module:
    """A model for a checkpoint trained at `recorded_size` (recorded by stdistill): built at that
    size when the model takes an img_size argument (Mixers, ViTs), as is otherwise (CNNs)."""
    if recorded_size and 'img_size' not in kwargs:
        try:
            return timm.create_model(model_name, pretrained=False, img_size=tuple(recorded_size), **kwargs)
        except TypeError:
            pass
    return timm.create_model(model_name, pretrained=False, **kwargs)


def create_teacher(
        model_name: str,
        num_classes: Optional[int] = None,
        pretrained: bool = False,
        checkpoint: Optional[str] = None,
        input_overrides: Optional[Dict[str, Any]] = None,
        use_ema: bool = False,
        **kwargs: Any,
) -> FrozenTeacher:
    """Build a frozen timm teacher and its input contract.

    With `checkpoint`, the model is built with the checkpoint's class count (read from its
    classifier) and input channels (read from its first convolution), and the weights loaded
    strictly; with `pretrained`, timm's weights are used (a hub download, or a local file
    through `pretrained_cfg_overlay=dict(file=...)`). `num_classes` is the student's class
    count: a teacher that predicts another number of classes is refused, since its labels
    would mean nothing to the student. `input_overrides` (mean, std, img_size, interpolation)
    override the teacher's input contract (see `model_contract`); `use_ema` takes the
    checkpoint's EMA weights (see `load_weights`); `kwargs` go to timm.create_model. Raises
    UserError for all of these, in one line.
    """
    check_model_name(model_name)
    state, recorded = None, {}
    if checkpoint is not None:
        state = _backbone_of_std_student(load_weights(checkpoint, use_ema), model_name)
        recorded = recorded_contract(checkpoint)
        kwargs = _recorded_kwargs(checkpoint, model_name, kwargs)
        weight = state.get(f'{_cfg_value(model_name, "classifier", "head")}.weight')
        if weight is not None:
            kwargs = dict(kwargs, num_classes=weight.shape[0])
        stem = state.get(f'{_cfg_value(model_name, "first_conv", "")}.weight')
        if stem is not None and stem.ndim == 4 and 'in_chans' not in kwargs:
            kwargs['in_chans'] = stem.shape[1]
        model = _create_sized(model_name, recorded.get('img_size'), **kwargs)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f'checkpoint {checkpoint} does not fit teacher {model_name}: '
                            f'{whole_message(e)}') from None
    elif pretrained:
        model = create_with_weights(model_name, True, 'teacher', **kwargs)
    else:  # random weights (tests, smoke runs): sized for the student's classes
        if num_classes is not None:
            kwargs = dict(kwargs, num_classes=kwargs.get('num_classes', num_classes))
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    if num_classes is not None:
        check_num_classes(model.num_classes, num_classes, model_name)
    given = {k for k, v in (input_overrides or {}).items() if v is not None}
    if len(given & {'mean', 'std'}) == 1:
        raise UserError(f'teacher {model_name}: give both mean and std of its input, or neither')
    try:
        contract = model_contract(model, recorded, input_overrides)
    except (ValueError, TypeError) as e:
        if given & {'mean', 'std'}:  # the user's own values: say so, and what they must be
            raise UserError(f'teacher {model_name} takes {_in_chans(model)} channel(s); the mean and std given in '
                            f'its config entry do not fit ({e}): give {_in_chans(model)} values each') from None
        source = 'recorded in its checkpoint' if recorded else 'of its timm cfg'
        raise UserError(f'teacher {model_name} takes {_in_chans(model)} channel(s); the input {source} does not fit '
                        f'({e}): set its mean, std and interpolation in its config entry') from None
    return FrozenTeacher(model, model_name, contract)
