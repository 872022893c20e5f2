"""What a run is made of, built from its config: the student, the teachers, the task, and a
trained student loaded back.

`build_objective(cfg, ...)` gives the `STDTask` that `stdistill train`, `teacher-pass`, the
benchmarks and `examples/timm_loop.py` run: the student for the method (methods.py), the
frozen teachers adapted to the student's input (or none, for a run that replays a store), the
losses and MINE. `load_student_checkpoint` rebuilds a trained student for `eval`, `export`
and `predict`, which therefore never import the training loop (train.py).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg

from ..utils.accuracy import chance_note, is_at_chance
from ..method.architecture import check_architecture
from .checkpoint import EMA_FILE, MODEL_FILE, RESUMABLE, STATE_JSON, verify_checkpoint
from ..config import RESIZE_INTERPOLATIONS, TrainConfig, load_config
from ..models.deit import DeiTTokenStudent
from ..utils.distributed import cpu_bf16_native
from ..utils.errors import UserError, first_line, whole_message
from ..data.folders import read_class_map
from ..utils.hints import train_longer
from ..data.loaders import FASHION_MNIST_NORM
from ..method.losses import LABELS_TEACHER, DistillationLoss, LabelsTeacher
from ..methods import method_of, uses_mine
from ..method.mine import MIRegularizer
from ..data.schedule import schedule_seed, seeded_random_states
from ..models.students import INFERENCE_HEADS, STDStudent, check_model_name
from ..method.task import STDTask
from ..method.teacher_input import InputContract
from ..method.teachers import (FrozenTeacher, create_teacher, create_with_weights, load_weights, recorded_classes,
                       recorded_contract, recorded_head, recorded_score)

__all__ = ['build_student', 'build_teachers', 'build_objective', 'resolve_norm', 'student_contract', 'teacher_line',
           'refuse_labels_teacher_in_store', 'amp_dtype', 'load_student_checkpoint', 'auto_head']

_logger = logging.getLogger(__name__)


_TEACHER_STREAM = 0x7EAC  # tags the random streams teachers are built from


def _create(name: str, pretrained: bool, kwargs: Dict[str, Any], optional: Tuple[str, ...] = ()) -> nn.Module:
    """timm.create_model; arguments in `optional` are dropped for models that do not take them."""
    check_model_name(name)
    try:
        return create_with_weights(name, pretrained, 'student', **kwargs)
    except TypeError as e:
        unused = [k for k in optional if f"'{k}'" in str(e)]
        if 'multiple values for keyword argument' in str(e):  # timm's registrations fix their sizes
            key = str(e).split("'")[-2]
            raise UserError(f'{name} fixes its {key}: model_kwargs cannot change it; take a student whose sizes '
                            f'model_kwargs can change (stdistill models: mixer_t4_32, resmlp_t8_64, ...)') from None
        if not unused:
            raise UserError(f'cannot build {name}: {e}') from None
        return _create(name, pretrained, {k: v for k, v in kwargs.items() if k not in unused}, optional)
    except UserError:
        raise
    except Exception as e:  # someone else's constructor given user kwargs (model_kwargs): any error, one line
        raise UserError(f'cannot build {name} with model_kwargs: {type(e).__name__}: {first_line(e)}') from None


def _refuse_unused_overlay(kwargs: Dict[str, Any], pretrained: bool, key: str) -> None:
    """A weights file in pretrained_cfg_overlay is read only with pretrained weights: refuse one
    that would be ignored (random weights, or a checkpoint's)."""
    overlay = kwargs.get('pretrained_cfg_overlay')
    if isinstance(overlay, dict) and overlay.get('file') and not pretrained:
        raise UserError(f'{key}.pretrained_cfg_overlay.file is given but pretrained weights are off (pretrained: '
                        f'false, or a checkpoint is given): set pretrained: true, or remove the file')


def build_student(cfg: TrainConfig, num_classes: int, pretrained: Optional[bool] = None) -> nn.Module:
    """The backbone `cfg.model`, wrapped for the method: STD token pairs, a DeiT token, or as is."""
    if cfg.model.startswith(('std_', 'deit_')):
        base = cfg.model.split('_', 1)[1]
        raise UserError(f'model {cfg.model}: give the base model ({base}) and choose the method with '
                        f'method: {cfg.model.split("_")[0]}')
    given = cfg.model_kwargs.get('num_classes', num_classes)
    if given != num_classes:
        raise UserError(f'model_kwargs.num_classes is {given!r} but the data has {num_classes} classes: remove it '
                        f'(num_classes is read from the data)')
    for key in ('img_size', 'in_chans'):  # the data's size and channels are the config's keys
        if key in cfg.model_kwargs and cfg.model_kwargs[key] != getattr(cfg, key):
            raise UserError(f'model_kwargs.{key} is {cfg.model_kwargs[key]!r} but the batches have {key} '
                            f'{getattr(cfg, key)}: remove it from model_kwargs and set {key}={cfg.model_kwargs[key]} '
                            f'instead')
    if pretrained is None:  # weights forced off (a trained student rebuilt, a resumed run) read no file
        _refuse_unused_overlay(cfg.model_kwargs, cfg.pretrained, 'model_kwargs')
    kwargs = dict(num_classes=num_classes, in_chans=cfg.in_chans, img_size=cfg.img_size, drop_path_rate=cfg.drop_path)
    kwargs.update(cfg.model_kwargs)
    backbone = _create(cfg.model, cfg.pretrained if pretrained is None else pretrained, kwargs,
                       optional=('img_size',) if 'img_size' not in cfg.model_kwargs else ())
    _check_patch_grid(cfg, backbone)
    positions = [t['token_position'] for t in cfg.teachers]
    method = method_of(cfg.method)
    if method.max_teachers == 1 and len(positions) != 1:  # (none's teachers are refused by build_objective)
        raise UserError(f'method {cfg.method} takes exactly one teacher, got {len(positions)}')
    # auto: avg until the holdout images choose (train.py), or the head a checkpoint records (recorded_head)
    head = 'avg' if cfg.inference_head == 'auto' else cfg.inference_head
    if method.student == 'std':
        return STDStudent(backbone, num_teachers=len(positions), token_positions=positions, tokens=cfg.tokens,
                          token_depth=cfg.token_depth, inference_head=head)
    if method.student == 'deit':
        return DeiTTokenStudent(backbone, inference_head=head)
    return backbone


def _check_patch_grid(cfg: TrainConfig, backbone: nn.Module) -> None:
    """Refuse an img_size that a patch embedding does not tile: its strided convolution drops the
    last rows and columns (img_size 30 with 4-pixel patches trains on the top-left 28x28 alone)."""
    from timm.layers import PatchEmbed
    stem = next((m for m in backbone.modules() if isinstance(m, PatchEmbed)), None)
    if stem is None:  # CycleMLP and CNNs: overlapping, padded stems see every pixel
        return
    patch = tuple(stem.patch_size)
    if any(cfg.img_size % p for p in patch):
        low, high = (cfg.img_size // patch[0]) * patch[0], -(-cfg.img_size // patch[0]) * patch[0]
        raise UserError(f'img_size {cfg.img_size} is not a multiple of {cfg.model}\'s patch size {patch[0]}: the last '
                        f'{cfg.img_size - low} rows and columns would never reach the model; set img_size={high}'
                        + (f' or {low}' if low else ''))


def student_contract(cfg: TrainConfig) -> InputContract:
    """What the student's batches are: cfg's normalisation (resolve_norm), channels and size."""
    mean, std = resolve_norm(cfg)
    interpolation = cfg.interpolation if cfg.interpolation in RESIZE_INTERPOLATIONS else 'bicubic'
    return InputContract(mean, std, cfg.in_chans, (cfg.img_size, cfg.img_size), interpolation)


def _contract_of_run(checkpoint: Optional[str]) -> Dict[str, Any]:
    """For a checkpoint that records no input contract but lies in a stdistill run folder
    (RUN/best/model.safetensors, written before checkpoints recorded it): the normalisation
    that run's config.yaml resolves to. {} otherwise."""
    if checkpoint is None or recorded_contract(checkpoint):
        return {}
    folder = os.path.dirname(os.path.abspath(checkpoint))
    path = os.path.join(os.path.dirname(folder), 'config.yaml')
    # only the layout train() writes: RUN/{best,last,previous}/model.safetensors beside state.json
    if (os.path.basename(checkpoint) != MODEL_FILE or os.path.basename(folder) not in ('best', *RESUMABLE)
            or not os.path.isfile(os.path.join(folder, STATE_JSON)) or not os.path.isfile(path)):
        return {}
    try:
        run = student_contract(load_config(path))
    except ValueError as e:  # guessing would feed the teacher another normalisation in silence
        raise UserError(f'{checkpoint} records no input normalisation and its run\'s {path} cannot be read '
                        f'({e}): set the teacher\'s mean and std') from None
    return {'mean': run.mean, 'std': run.std, 'interpolation': run.interpolation}


def _check_teacher_classes(checkpoint: Optional[str], classes: Optional[List[str]], label: str) -> None:
    """A teacher whose checkpoint records its class names must name this run's classes in this
    order: its label i is the student's label i."""
    recorded = recorded_classes(checkpoint) if checkpoint else None
    if recorded is None or classes is None or recorded == classes:
        return
    first = next((i for i, (a, b) in enumerate(zip(recorded, classes)) if a != b), min(len(recorded), len(classes)))
    how = 'the same classes in another order' if sorted(recorded) == sorted(classes) else 'another set of classes'
    raise UserError(f'{label}: {checkpoint} was trained on {how} (its class {first} is '
                    f'{recorded[first] if first < len(recorded) else "missing"!r}, this run\'s '
                    f'{classes[first] if first < len(classes) else "missing"!r}): give class_map the teacher\'s '
                    f'order (its run folder\'s class_map.txt), or use a teacher trained on these classes')


def _labels_teacher(spec: Dict[str, Any], i: int, num_classes: int, mixup_smoothing: float) -> LabelsTeacher:
    """teachers.i with `model: labels`; refuses the keys that only a network takes."""
    given = [k for k in ('checkpoint', 'pretrained', 'mean', 'std', 'img_size', 'interpolation')
             if spec[k] is not None] + [k for k in ('kwargs', 'use_ema') if spec[k]]
    if given:
        raise UserError(f'teachers.{i} is the labels teacher (the ground truth), which has no weights or input: '
                        f'remove teachers.{i}.{given[0]} (or set teachers.{i}.{given[0]}=null)')
    return LabelsTeacher(num_classes, mixup_smoothing)


def teacher_line(i: int, teacher: Union[FrozenTeacher, LabelsTeacher]) -> str:
    """What teachers.i sees, for the run's log."""
    if isinstance(teacher, LabelsTeacher):
        return (f'teachers.{i} (labels) gives the ground truth: one-hot labels, or under mixup/cutmix the mixed '
                f'labels (without label smoothing)')
    adapted = '' if teacher.input is None or teacher.input.identity else ' (adapted from the student batch)'
    return f'teachers.{i} ({teacher.name}) sees {teacher.contract.describe()}{adapted}'


def refuse_labels_teacher_in_store(cfg: TrainConfig, fix: str) -> None:
    """A store holds what networks predicted; the labels teacher's targets are the batch's own."""
    labels = [i for i, t in enumerate(cfg.teachers) if t['model'] == LABELS_TEACHER]
    if labels:
        raise UserError(f'teachers.{labels[0]} is the labels teacher, which a teacher-output store does not hold: '
                        f'{fix}')


def build_teachers(cfg: TrainConfig, num_classes: int, device: torch.device,
                   pretrained: Optional[bool] = None, classes: Optional[List[str]] = None,
                   mixup_smoothing: float = 0.0) -> List[Union[FrozenTeacher, LabelsTeacher]]:
    """The frozen teachers of cfg on `device`, each adapted to the student's batches (its own
    normalisation, size and channels) and checked with one blank image. classes: the run's
    class names, which a teacher checkpoint that records its own must match. An entry
    `model: labels` is the ground truth (losses.LabelsTeacher); mixup_smoothing is the label
    smoothing that the run's Mixup folds into its targets (0 without mixup)."""
    student = student_contract(cfg)
    teachers = []
    for i, spec in enumerate(cfg.teachers):
        if spec['model'] == LABELS_TEACHER:
            teachers.append(_labels_teacher(spec, i, num_classes, mixup_smoothing))
            continue
        use_pretrained = spec['pretrained'] if spec['pretrained'] is not None else spec['checkpoint'] is None
        if pretrained is not None:
            use_pretrained = pretrained and spec['checkpoint'] is None
        kwargs = dict(spec['kwargs'])
        if kwargs.pop('num_classes', num_classes) != num_classes:
            raise UserError(f'teachers.{i}.kwargs.num_classes is {spec["kwargs"]["num_classes"]!r} but the student '
                            f'has {num_classes} classes; use a teacher trained on the same label set')
        if not isinstance(kwargs.get('pretrained_cfg_overlay', {}), dict):
            raise UserError(f'teachers.{i}.kwargs.pretrained_cfg_overlay must be a mapping '
                            f'(e.g. {{file: w.safetensors}})')
        if {'checkpoint_path', 'pretrained_cfg', 'features_only'} & set(kwargs):
            raise UserError(f'teachers.{i}.kwargs: give weights as teachers.{i}.checkpoint or '
                            f'kwargs.pretrained_cfg_overlay.file; a teacher is a whole classifier (no features_only)')
        _refuse_unused_overlay(kwargs, use_pretrained, f'teachers.{i}.kwargs')
        if spec['checkpoint'] is not None:
            _check_teacher_checkpoint(spec['checkpoint'], i)
        try:
            contract = _contract_of_run(spec['checkpoint'])
            contract.update({k: spec[k] for k in ('mean', 'std', 'img_size', 'interpolation') if spec[k] is not None})
            if spec['use_ema'] and not spec['checkpoint']:
                raise UserError('use_ema reads a checkpoint\'s EMA weights: give checkpoint, or set use_ema: false')
            _check_teacher_classes(spec['checkpoint'], classes, f'teachers.{i}')
            # seeded apart from the global stream: a teacher with random weights is the same model in
            # every run of a seed (and in a teacher pass), and building teachers draws nothing that the
            # student, MINE or dropout would draw next (a run from a store builds none)
            with seeded_random_states(schedule_seed(cfg.seed, _TEACHER_STREAM, i)):
                teacher = create_teacher(spec['model'], num_classes, use_pretrained, spec['checkpoint'], contract,
                                         use_ema=spec['use_ema'], **kwargs)
        except ValueError as e:
            raise UserError(str(e) if str(e).startswith(f'teachers.{i}') else f'teachers.{i}: {e}') from None
        except Exception as e:  # someone else's constructor given user kwargs: any error, one line
            raise UserError(f'cannot build teachers.{i} ({spec["model"]}) with kwargs {spec["kwargs"]}: '
                            f'{type(e).__name__}: {first_line(e)}') from None
        teachers.append(teacher.to(device).adapt_to(student, label=f'teachers.{i}'))
        if spec['checkpoint'] is not None and not spec['use_ema']:
            _warn_chance_teacher(spec['checkpoint'], i, getattr(teacher.model, 'inference_head', 'cls'))
    return teachers


def _check_teacher_checkpoint(path: str, i: int) -> None:
    """A teacher checkpoint that is not there: say so, and how to make it or point to it."""
    if os.path.isfile(path):
        return
    key = f'teachers.{i}.checkpoint'
    if os.path.isdir(path):
        inside = os.path.join(path, 'best', MODEL_FILE) if os.path.isdir(os.path.join(path, 'best')) \
            else os.path.join(path, MODEL_FILE)
        raise UserError(f'{key} {path} is a folder: give the weights file'
                        + (f', {key}={inside}' if os.path.isfile(inside) else ''))
    folder = os.path.dirname(os.path.abspath(path))
    run = os.path.dirname(folder) if os.path.basename(folder) in ('best', *RESUMABLE) else None
    shown = os.path.dirname(os.path.dirname(path)) or '.'  # the run folder as the user wrote it
    if run and os.path.isfile(os.path.join(run, 'config.yaml')):  # its run exists, the checkpoint not (yet)
        kept = next((n for n in RESUMABLE if os.path.isfile(os.path.join(run, n, MODEL_FILE))), None)
        how = (f'its run {shown} holds {kept}/{MODEL_FILE} but no {os.path.basename(folder)}/{MODEL_FILE}: set {key}='
               f'{os.path.join(shown, kept, MODEL_FILE)}' if kept else
               f'its run {shown} has not finished an epoch: let it finish its first, or train it again')
    else:
        how = ('train the teacher first' + (f' with output={shown} (its best/{MODEL_FILE} is this file)' if run else '')
               + f', or set {key} to a teacher\'s weights file')
    raise UserError(f'{key}: the teacher checkpoint {path} does not exist: {how}')


def _warn_chance_teacher(path: str, i: int, head: str = 'cls') -> None:
    """Say so when a teacher's checkpoint records a validation top-1 at chance, for the head the
    teacher predicts with (a plain model built from a token student's checkpoint: its class head;
    the token student itself: its recorded head): it teaches noise."""
    score = recorded_score(path)
    top1 = score and (score['top1_cls'] if head == 'cls' or recorded_head(path) != head else score['top1'])
    note = score and chance_note({'val_top1': top1, 'val_images': score['images'],
                                  'val_chance_top1': score['chance_top1']})
    if not is_at_chance(note):  # a split too small to tell says nothing of the teacher
        return
    run = os.path.dirname(os.path.dirname(path)) or '.'  # RUN/best/model.safetensors: its run, if stdistill trained it
    try:
        with open(os.path.join(run, 'summary.json')) as f:
            again = ' ' + train_longer(run, json.load(f))
    except (OSError, ValueError, KeyError, TypeError):
        again = ''
    _logger.warning(f'teachers.{i} ({path}): {note}; distilling from it teaches noise.{again}')


def resolve_norm(cfg: TrainConfig) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Normalisation: the config's, Fashion-MNIST's for 1-channel Fashion-MNIST, else the student's
    pretrained cfg (read from timm's registry, without building the model)."""
    check_model_name(cfg.model)
    if (cfg.mean is None) != (cfg.std is None):
        raise UserError('give both mean and std (one value per input channel), or neither')
    if cfg.mean is not None and cfg.std is not None:
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    elif cfg.dataset in ('fashion-mnist', 'fashion_mnist') and cfg.in_chans == 1:
        mean, std = FASHION_MNIST_NORM
    else:
        pcfg = get_pretrained_cfg(cfg.model)
        mean, std = (tuple(pcfg.mean), tuple(pcfg.std)) if pcfg else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    if len(mean) != cfg.in_chans or len(std) != cfg.in_chans:
        given = 'the config\'s' if cfg.mean is not None else f'{cfg.model}\'s'
        hint = (f'e.g. mean={list(mean) * cfg.in_chans} std={list(std) * cfg.in_chans} (its values repeated), '
                f'or your data\'s' if len(mean) == 1 else 'e.g. your data\'s per-channel values')
        raise UserError(f'mean and std need {cfg.in_chans} values (in_chans {cfg.in_chans}), {given} have {len(mean)}: '
                        f'set mean and std, {hint}')
    return mean, std


def build_objective(cfg: TrainConfig, num_classes: int, device: torch.device, mixup_active: bool,
                    pretrained: Optional[bool] = None, classes: Optional[List[str]] = None,
                    with_teachers: bool = True, student_pretrained: Optional[bool] = None) -> STDTask:
    """Student + teachers + losses (+ MINE), on `device`. pretrained=False forces random weights;
    classes: the run's class names (teacher checkpoints that record theirs must match);
    with_teachers=False: no teacher is built (a run that reads their outputs from a store)."""
    method = method_of(cfg.method)
    if not method.needs_teachers and cfg.teachers:
        raise UserError(f'method {cfg.method} takes no teachers: remove them, or choose method kd, deit or std')
    if method.needs_teachers and not cfg.teachers:
        raise UserError(f'method {cfg.method} needs teachers: add a list under teachers')
    student = build_student(cfg, num_classes, pretrained if student_pretrained is None else student_pretrained
                            ).to(device)
    teachers = (build_teachers(cfg, num_classes, device, pretrained, classes,
                               mixup_smoothing=cfg.smoothing if mixup_active else 0.0) if with_teachers else [])
    if mixup_active:
        base = SoftTargetCrossEntropy()  # mixup/cutmix give soft targets (with the smoothing folded in)
    elif cfg.smoothing > 0:
        base = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    distill_loss = None
    if method.needs_teachers:
        distill_loss = DistillationLoss(base, alpha=cfg.alpha, tau=cfg.tau,
                                        distill=cfg.distill,
                                        teacher_weighting=cfg.teacher_weighting, cls_distill=cfg.cls_distill)
    mi = None
    if uses_mine(cfg.method, cfg.mine, cfg.tokens):
        mi = MIRegularizer(student, weight=cfg.mine_weight, hidden=cfg.mine_hidden).to(device)
    if cfg.mine_warmup_epochs > 0 and mi is None:
        raise UserError('mine_warmup_epochs applies to MINE (method std, tokens both, mine true), which this run '
                        'does not use: set mine_warmup_epochs=0')
    if cfg.mine_warmup_epochs >= cfg.epochs:
        raise UserError(f'mine_warmup_epochs {cfg.mine_warmup_epochs} is not below epochs {cfg.epochs}: the MINE '
                        f'penalty would never apply (set mine=false for that)')
    return STDTask(student, cfg.method, base, teachers, distill_loss, mi)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast under amp on every device: CPU runs take the GPU's code path. On a CPU that
    emulates bf16, said once (by rank 0) with the fix: the run stays as configured."""
    if cfg.amp and device.type == 'cpu' and cpu_bf16_native() is False and int(os.environ.get('RANK', 0)) == 0:
        _logger.warning('amp=true on a CPU without bf16 instructions (no avx512_bf16 or amx_bf16 in '
                        '/proc/cpuinfo): bf16 is emulated there, about 13x slower than fp32: set amp=false')
    return torch.bfloat16 if cfg.amp else None


def load_student_checkpoint(cfg: TrainConfig, checkpoint: str, ema: bool = False
                            ) -> Tuple[nn.Module, Optional[List[str]]]:
    """The student a checkpoint holds (a checkpoint folder or its model.safetensors), built from
    cfg, with its weights or (ema=True) their EMA; and the class names it was trained on (recorded
    in it, else its run's class_map.txt; None when neither names them). A checkpoint folder with
    a state.json is checked against its checksums first. Raises UserError (one line) for a
    damaged checkpoint, missing EMA weights, or weights that do not fit cfg's model."""
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    path = os.path.join(checkpoint, MODEL_FILE) if os.path.isdir(checkpoint) else checkpoint
    if os.path.isdir(checkpoint) and os.path.isfile(os.path.join(checkpoint, STATE_JSON)):
        verify_checkpoint(checkpoint)  # a damaged or edited checkpoint folder is refused, not used
    if ema and not os.path.isfile(os.path.join(folder, EMA_FILE)):
        raise UserError(f'{checkpoint} holds no EMA weights ({EMA_FILE}; the run had model_ema off): '
                        f'use it without --ema')
    weights = load_weights(path, use_ema=ema)
    run_map = os.path.join(os.path.dirname(folder), 'class_map.txt')
    classes = recorded_classes(path) or (read_class_map(run_map) if os.path.isfile(run_map) else None)
    num_classes = len(classes) if classes else cfg.num_classes
    if num_classes is None:
        raise UserError('num_classes is not set in the config')
    student = build_student(cfg, num_classes, pretrained=False)
    check_architecture(path, cfg, student)  # weights that fit are not enough: tokens at another block fit too
    try:
        student.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f'{path} does not fit {cfg.model} with method {cfg.method}: '
                        f'{whole_message(e)}') from None
    if cfg.inference_head == 'auto' and hasattr(student, 'inference_head'):
        student.inference_head = auto_head(path)
    return student, classes


def auto_head(path: str) -> str:
    """The head inference_head auto chose for the weights file `path` (on its run's holdout images,
    recorded in its header). Raises UserError for a file that records no choice."""
    head = recorded_head(path, chosen_on_holdout=True)
    if head not in INFERENCE_HEADS:
        raise UserError(f'{path} records no head chosen by inference_head auto (it was trained with another '
                        f'inference_head): give inference_head=avg, cls or dist')
    return head
