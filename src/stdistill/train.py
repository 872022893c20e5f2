"""A training run, from a config to a run folder: `stdistill train` calls `train(cfg)`.

    run/config.yaml    the resolved config        run/last/, run/best/   checkpoints
    run/log.jsonl, run/tb/, run/*.png (monitor.py)  run/summary.json   final figures

Setup builds the student (method none | kd | deit | std), the frozen teachers (or, with
`teacher_outputs`, a reader of their stored outputs: store.py), the loss, the
MI regulariser, timm's optimizer and scheduler and (optionally) an EMA; each epoch trains,
evaluates, and rank 0 writes `last/` (and `best/` when top-1 improves). `resume=run_folder`
restores weights, optimizer, scheduler position, EMA, MINE and every RNG from the newest
checkpoint that passes its checksums (`last/`, else `previous/`), and continues exactly where
the run stopped; `stop_after=N` ends this process after N epochs (for
time-limited jobs: resume later).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import get_pretrained_cfg
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, random_seed

from .accuracy import chance_note, is_at_chance
from .architecture import check_architecture, student_architecture
from .checkpoint import (EMA_FILE, MODEL_FILE, RESUMABLE, STATE_JSON, checkpoint_entry, file_sha256, load_checkpoint,
                         newest_valid_checkpoint,
                         remove_stale_temporaries, rng_state, rng_state_fits, save_checkpoint, set_rng_state,
                         verify_checkpoint)
from .config import (RESIZE_INTERPOLATIONS, SCHEDULE_KEYS, TrainConfig, config_from_dict, load_config, resume_changes,
                     save_config, schedule_problem)
from .deit import DeiTTokenStudent
from .distributed import DistInfo, cpu_bf16_native, gather_objects, init_distributed, resolve_device, weights_digest
from .disk import WriteRefused, write_atomic, writing
from .engine import NonFiniteLossError, evaluate, train_one_epoch
from .folders import read_class_map, write_class_map
from .hints import command, option, train_longer
from .loaders import FASHION_MNIST_NORM, build_data, build_mixup, check_batch_size, data_seed_of
from .locks import lock_folder_on_main
from .losses import LABELS_TEACHER, DistillationLoss, LabelsTeacher
from .mine import MIRegularizer
from .monitor import RunMonitor, write_plots
from .schedule import schedule_seed, seeded_random_states
from .store import TeacherStore, outputs_spec, run_fingerprint
from .students import STDStudent, check_model_name
from .task import STDTask
from .teacher_input import RECORD_KEY, InputContract
from .teachers import (ARCHITECTURE_KEY, CLASSES_KEY, SCORE_KEY, FrozenTeacher, _first_line, _whole_message,
                       create_teacher, create_with_weights, load_weights, recorded_classes, recorded_contract,
                       recorded_score)

__all__ = ['train', 'evaluate_checkpoint', 'build_student', 'build_teachers', 'build_objective', 'resolve_norm',
           'teacher_line', 'refuse_labels_teacher_in_store',
           'student_contract', 'with_absolute_paths', 'load_student_checkpoint']


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
            raise ValueError(f'{name} fixes its {key}: model_kwargs cannot change it; take a student whose sizes '
                             f'model_kwargs can change (stdistill models: mixer_t4_32, resmlp_t8_64, ...)') from None
        if not unused:
            raise ValueError(f'cannot build {name}: {e}') from None
        return _create(name, pretrained, {k: v for k, v in kwargs.items() if k not in unused}, optional)
    except ValueError:
        raise
    except Exception as e:  # someone else's constructor given user kwargs (model_kwargs): any error, one line
        raise ValueError(f'cannot build {name} with model_kwargs: {type(e).__name__}: {_first_line(e)}') from None


def _refuse_unused_overlay(kwargs: Dict[str, Any], pretrained: bool, key: str) -> None:
    """A weights file in pretrained_cfg_overlay is read only with pretrained weights: refuse one
    that would be ignored (random weights, or a checkpoint's)."""
    overlay = kwargs.get('pretrained_cfg_overlay')
    if isinstance(overlay, dict) and overlay.get('file') and not pretrained:
        raise ValueError(f'{key}.pretrained_cfg_overlay.file is given but pretrained weights are off (pretrained: '
                         f'false, or a checkpoint is given): set pretrained: true, or remove the file')


def build_student(cfg: TrainConfig, num_classes: int, pretrained: Optional[bool] = None) -> nn.Module:
    """The backbone `cfg.model`, wrapped for the method: STD token pairs, a DeiT token, or as is."""
    if cfg.model.startswith(('std_', 'deit_')):
        base = cfg.model.split('_', 1)[1]
        raise ValueError(f'model {cfg.model}: give the base model ({base}) and choose the method with '
                         f'method: {cfg.model.split("_")[0]}')
    given = cfg.model_kwargs.get('num_classes', num_classes)
    if given != num_classes:
        raise ValueError(f'model_kwargs.num_classes is {given!r} but the data has {num_classes} classes: remove it '
                         f'(num_classes is read from the data)')
    if pretrained is None:  # weights forced off (a trained student rebuilt, a resumed run) read no file
        _refuse_unused_overlay(cfg.model_kwargs, cfg.pretrained, 'model_kwargs')
    kwargs = dict(num_classes=num_classes, in_chans=cfg.in_chans, img_size=cfg.img_size, drop_path_rate=cfg.drop_path)
    kwargs.update(cfg.model_kwargs)
    backbone = _create(cfg.model, cfg.pretrained if pretrained is None else pretrained, kwargs,
                       optional=('img_size',) if 'img_size' not in cfg.model_kwargs else ())
    _check_patch_grid(cfg, backbone)
    positions = [t['token_position'] for t in cfg.teachers]
    if cfg.method == 'std':
        return STDStudent(backbone, num_teachers=len(positions), token_positions=positions, tokens=cfg.tokens,
                          token_depth=cfg.token_depth, inference_head=cfg.inference_head)
    if cfg.method == 'deit':
        if len(positions) != 1:
            raise ValueError(f'method deit takes exactly one teacher, got {len(positions)}')
        return DeiTTokenStudent(backbone, inference_head=cfg.inference_head)
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
        raise ValueError(f'img_size {cfg.img_size} is not a multiple of {cfg.model}\'s patch size {patch[0]}: the last '
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
        raise ValueError(f'{checkpoint} records no input normalisation and its run\'s {path} cannot be read '
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
    raise ValueError(f'{label}: {checkpoint} was trained on {how} (its class {first} is '
                     f'{recorded[first] if first < len(recorded) else "missing"!r}, this run\'s '
                     f'{classes[first] if first < len(classes) else "missing"!r}): give class_map the teacher\'s '
                     f'order (its run folder\'s class_map.txt), or use a teacher trained on these classes')


def _labels_teacher(spec: Dict[str, Any], i: int, num_classes: int, mixup_smoothing: float) -> LabelsTeacher:
    """teachers.i with `model: labels`; refuses the keys that only a network takes."""
    given = [k for k in ('checkpoint', 'pretrained', 'mean', 'std', 'img_size', 'interpolation')
             if spec[k] is not None] + [k for k in ('kwargs', 'use_ema') if spec[k]]
    if given:
        raise ValueError(f'teachers.{i} is the labels teacher (the ground truth), which has no weights or input: '
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
        raise ValueError(f'teachers.{labels[0]} is the labels teacher, which a teacher-output store does not hold: '
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
            raise ValueError(f'teachers.{i}.kwargs.num_classes is {spec["kwargs"]["num_classes"]!r} but the student '
                             f'has {num_classes} classes; use a teacher trained on the same label set')
        if not isinstance(kwargs.get('pretrained_cfg_overlay', {}), dict):
            raise ValueError(f'teachers.{i}.kwargs.pretrained_cfg_overlay must be a mapping '
                             f'(e.g. {{file: w.safetensors}})')
        if {'checkpoint_path', 'pretrained_cfg', 'features_only'} & set(kwargs):
            raise ValueError(f'teachers.{i}.kwargs: give weights as teachers.{i}.checkpoint or '
                             f'kwargs.pretrained_cfg_overlay.file; a teacher is a whole classifier (no features_only)')
        _refuse_unused_overlay(kwargs, use_pretrained, f'teachers.{i}.kwargs')
        if spec['checkpoint'] is not None:
            _check_teacher_checkpoint(spec['checkpoint'], i)
        try:
            contract = _contract_of_run(spec['checkpoint'])
            contract.update({k: spec[k] for k in ('mean', 'std', 'img_size', 'interpolation') if spec[k] is not None})
            if spec['use_ema'] and not spec['checkpoint']:
                raise ValueError('use_ema reads a checkpoint\'s EMA weights: give checkpoint, or set use_ema: false')
            _check_teacher_classes(spec['checkpoint'], classes, f'teachers.{i}')
            # seeded apart from the global stream: a teacher with random weights is the same model in
            # every run of a seed (and in a teacher pass), and building teachers draws nothing that the
            # student, MINE or dropout would draw next (a run from a store builds none)
            with seeded_random_states(schedule_seed(cfg.seed, _TEACHER_STREAM, i)):
                teacher = create_teacher(spec['model'], num_classes, use_pretrained, spec['checkpoint'], contract,
                                         use_ema=spec['use_ema'], **kwargs)
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith(f'teachers.{i}') else f'teachers.{i}: {e}') from None
        except Exception as e:  # someone else's constructor given user kwargs: any error, one line
            raise ValueError(f'cannot build teachers.{i} ({spec["model"]}) with kwargs {spec["kwargs"]}: '
                             f'{type(e).__name__}: {_first_line(e)}') from None
        teachers.append(teacher.to(device).adapt_to(student, label=f'teachers.{i}'))
        if spec['checkpoint'] is not None and not spec['use_ema']:
            _warn_chance_teacher(spec['checkpoint'], i)
    return teachers


def _check_teacher_checkpoint(path: str, i: int) -> None:
    """A teacher checkpoint that is not there: say so, and how to make it or point to it."""
    if os.path.isfile(path):
        return
    key = f'teachers.{i}.checkpoint'
    if os.path.isdir(path):
        inside = os.path.join(path, 'best', MODEL_FILE) if os.path.isdir(os.path.join(path, 'best')) \
            else os.path.join(path, MODEL_FILE)
        raise ValueError(f'{key} {path} is a folder: give the weights file'
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
    raise ValueError(f'{key}: the teacher checkpoint {path} does not exist: {how}')


def _warn_chance_teacher(path: str, i: int) -> None:
    """Say so when a teacher's checkpoint records a validation top-1 at chance: it teaches noise."""
    score = recorded_score(path)
    note = score and chance_note({'val_top1': score['top1_cls'], 'val_images': score['images'],
                                  'val_chance_top1': score['chance_top1']})
    if not is_at_chance(note):  # a split too small to tell says nothing of the teacher
        return
    run = os.path.dirname(os.path.dirname(path)) or '.'  # RUN/best/model.safetensors: its run, if stdistill trained it
    try:
        with open(os.path.join(run, 'summary.json')) as f:
            again = ' ' + train_longer(run, json.load(f))
    except (OSError, ValueError, KeyError, TypeError):
        again = ''
    print(f'stdistill: warning: teachers.{i} ({path}): {note}; distilling from it teaches noise.{again}',
          file=sys.stderr, flush=True)


def resolve_norm(cfg: TrainConfig) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Normalisation: the config's, Fashion-MNIST's for 1-channel Fashion-MNIST, else the student's
    pretrained cfg (read from timm's registry, without building the model)."""
    check_model_name(cfg.model)
    if (cfg.mean is None) != (cfg.std is None):
        raise ValueError('give both mean and std (one value per input channel), or neither')
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
        raise ValueError(f'mean and std need {cfg.in_chans} values (in_chans {cfg.in_chans}), {given} have {len(mean)}: '
                         f'set mean and std, {hint}')
    return mean, std


def build_objective(cfg: TrainConfig, num_classes: int, device: torch.device, mixup_active: bool,
                    pretrained: Optional[bool] = None, classes: Optional[List[str]] = None,
                    with_teachers: bool = True, student_pretrained: Optional[bool] = None) -> STDTask:
    """Student + teachers + losses (+ MINE), on `device`. pretrained=False forces random weights;
    classes: the run's class names (teacher checkpoints that record theirs must match);
    with_teachers=False: no teacher is built (a run that reads their outputs from a store)."""
    if cfg.method == 'none' and cfg.teachers:
        raise ValueError('method none takes no teachers: remove them, or choose method kd, deit or std')
    if cfg.method != 'none' and not cfg.teachers:
        raise ValueError(f'method {cfg.method} needs teachers: add a list under teachers')
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
    if cfg.method != 'none':
        distill_loss = DistillationLoss(base, alpha=cfg.alpha, tau=cfg.tau,
                                        distill=cfg.distill,
                                        teacher_weighting=cfg.teacher_weighting)
    mi = None
    if cfg.method == 'std' and cfg.mine and cfg.tokens == 'both':
        mi = MIRegularizer(student, weight=cfg.mine_weight, hidden=cfg.mine_hidden).to(device)
    if cfg.mine_warmup_epochs > 0 and mi is None:
        raise ValueError('mine_warmup_epochs applies to MINE (method std, tokens both, mine true), which this run '
                         'does not use: set mine_warmup_epochs=0')
    if cfg.mine_warmup_epochs >= cfg.epochs:
        raise ValueError(f'mine_warmup_epochs {cfg.mine_warmup_epochs} is not below epochs {cfg.epochs}: the MINE '
                         f'penalty would never apply (set mine=false for that)')
    return STDTask(student, cfg.method, base, teachers, distill_loss, mi)


def input_files(cfg: TrainConfig) -> Dict[str, str]:
    """The files a run reads its teachers and labels from, by config key: each teacher's
    checkpoint and pretrained_cfg_overlay file, and the class_map. (The student's own pretrained
    file is read once, at the start: a resumed run takes its checkpoint's weights.)"""
    files = {}
    for i, spec in enumerate(cfg.teachers):
        overlay = spec['kwargs'].get('pretrained_cfg_overlay')
        files[f'teachers.{i}.checkpoint'] = spec['checkpoint']
        files[f'teachers.{i}.kwargs.pretrained_cfg_overlay.file'] = overlay.get('file') \
            if isinstance(overlay, dict) else None
    files['class_map'] = cfg.class_map
    return {key: os.path.abspath(path) for key, path in files.items() if isinstance(path, str) and os.path.isfile(path)}


def input_digests(cfg: TrainConfig) -> Dict[str, Dict[str, str]]:
    """{key: {'path', 'sha256'}} of input_files(cfg): kept in every checkpoint, and compared on
    resume, so that a teacher file replaced in place between two runs of one training is caught."""
    return {key: {'path': path, 'sha256': file_sha256(path)} for key, path in input_files(cfg).items()}


def _check_inputs(recorded: Any, now: Dict[str, Dict[str, str]]) -> None:
    """A resumed run reads the files its run started with, byte for byte: refuse one edited or
    replaced in place since. (A teacher file cannot move: resume_changes refuses that first; a
    class_map that moves is compared by the classes it names, _check_classes.) Checkpoints
    written before inputs were recorded are not checked."""
    if not isinstance(recorded, dict):
        return
    for key, then in recorded.items():
        current = now.get(key)
        if (isinstance(then, dict) and current is not None and then.get('path') == current['path']
                and current['sha256'] != then.get('sha256')):
            folder = os.path.dirname(current['path'])
            trained = (os.path.basename(folder) in ('best', *RESUMABLE)
                       and os.path.isfile(os.path.join(os.path.dirname(folder), 'config.yaml')))
            why = (f' (its run {os.path.dirname(folder)} has trained since: it replaces its checkpoints; copy one '
                   f'elsewhere before pointing a teacher at it)' if trained else '')
            raise ValueError(f'{key} {current["path"]} has changed since the run started (SHA-256 '
                             f'{str(then.get("sha256"))[:12]}... then, {current["sha256"][:12]}... now){why}: the run '
                             f'would finish against another file: put the original back, or start a new run '
                             f'(output=...) with this one')


def _check_mine_warmup(cfg: TrainConfig, objective: STDTask, steps: int) -> None:
    """The warm-up is counted in updates (round(mine_warmup_epochs * steps per epoch)): refuse one
    that rounds to no update (no warm-up) or to every update (the penalty never applies)."""
    if objective.mi is None or cfg.mine_warmup_epochs == 0:
        return
    updates = round(cfg.mine_warmup_epochs * steps)
    if updates == 0 or updates >= cfg.epochs * steps:
        what = 'no update: there would be no warm-up' if updates == 0 else \
            f'all {cfg.epochs * steps} updates: the MINE penalty would never apply'
        raise ValueError(f'mine_warmup_epochs {cfg.mine_warmup_epochs} at {steps} updates an epoch is {what}; '
                         f'give between {1 / steps:.3g} and {cfg.epochs - 1 / steps:.3g} epochs')


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast under amp on every device: CPU runs take the GPU's code path. On a CPU that
    emulates bf16, said once (by rank 0) with the fix: the run stays as configured."""
    if cfg.amp and device.type == 'cpu' and cpu_bf16_native() is False and int(os.environ.get('RANK', 0)) == 0:
        print('stdistill: warning: amp=true on a CPU without bf16 instructions (no avx512_bf16 or amx_bf16 in '
              '/proc/cpuinfo): bf16 is emulated there, about 13x slower than fp32: set amp=false',
              file=sys.stderr, flush=True)
    return torch.bfloat16 if cfg.amp else None


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """cfg with its data folder, teacher checkpoints, pretrained_cfg_overlay files and store as absolute
    paths: `--resume` from another working directory must read the same files, not others that happen to
    share a relative name."""
    def absolute(path: Optional[str]) -> Optional[str]:
        return os.path.abspath(path) if isinstance(path, str) and path else path

    def overlay(kwargs: Dict[str, Any]) -> Dict[str, Any]:
        given = kwargs.get('pretrained_cfg_overlay')
        if not isinstance(given, dict) or not given.get('file'):
            return kwargs
        return dict(kwargs, pretrained_cfg_overlay=dict(given, file=absolute(given['file'])))
    teachers = [dict(t, checkpoint=absolute(t['checkpoint']), kwargs=overlay(t['kwargs'])) for t in cfg.teachers]
    return dataclasses.replace(cfg, output=absolute(cfg.output), data_dir=absolute(cfg.data_dir),
                               class_map=absolute(cfg.class_map), teachers=teachers,
                               model_kwargs=overlay(cfg.model_kwargs), teacher_outputs=absolute(cfg.teacher_outputs))


def _check_output_path(cfg: TrainConfig) -> None:
    path = os.path.abspath(cfg.output)
    while path and not os.path.exists(path):  # the output or the first of its parents that exists
        path = os.path.dirname(path) if os.path.dirname(path) != path else ''
    if path and not os.path.isdir(path):
        raise ValueError(f'output {cfg.output}: {path} is a file, not a folder: choose another output')


# what train() writes into a run folder (monitor.py, checkpoint.py); dot-names are checkpoint writes
_RUN_FILES = ('config.yaml', 'class_map.txt', 'log.jsonl', 'tb', 'curves.png', 'mi.png', 'summary.json', 'best',
              *RESUMABLE)


def _remove_unfinished_run(run: str) -> None:
    """Remove what a run that committed no epoch wrote (only that: anything else in its folder stays),
    and the folder when nothing else is there."""
    for name in os.listdir(run) if os.path.isdir(run) else ():
        path = os.path.join(run, name)
        if name in _RUN_FILES or (name.startswith(('.best.', '.last.')) and os.path.isdir(path)):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    try:
        os.rmdir(run)
    except OSError:  # other files are there
        pass


def _check_run_folder(cfg: TrainConfig, resume: bool) -> None:
    has_run = any(os.path.isdir(os.path.join(cfg.output, name)) for name in RESUMABLE)
    if resume and not has_run:
        raise ValueError(f'nothing to resume in {cfg.output}: it holds no last/ or previous/ checkpoint')
    if not resume and has_run:
        raise ValueError(f'{cfg.output} already holds a run: continue it with '
                         f'{command("stdistill", "train", *option("--resume", cfg.output))}, or set output to a new folder')


def _training_state(epoch: int, num_updates: int, best: Dict, history: List[Dict], optimizer, scheduler,
                    objective: STDTask, ema, config: TrainConfig, batch_size: int) -> Dict[str, Any]:
    return {
        'epoch': epoch, 'num_updates': num_updates, 'best': best, 'history': history,
        'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
        'mi': objective.mi.state_dict() if objective.mi is not None else None,
        'ema': None,  # the EMA weights are a file of their own, beside the student's (EMA_FILE)
        'config': json.dumps(dataclasses.asdict(config)),  # what trained this epoch: --resume compares with it
        'batch_size': batch_size,  # per process, as trained: min_updates_per_epoch may have lowered config's
    }


def _restore_rng(saved: Any, info: DistInfo, device: torch.device, seed: int, epoch: int) -> None:
    """Each process takes back its own random states. A checkpoint from another world size, or
    with (or without) a GPU state where this process has none (or one), cannot be restored
    exactly: every process reseeds from (seed, rank, epoch) instead, and rank 0 says so."""
    states = saved if isinstance(saved, list) else [saved]  # older checkpoints: rank 0's state only
    if len(states) == info.world_size and rng_state_fits(states[info.rank], device):
        set_rng_state(states[info.rank], device)
        return
    derived = int.from_bytes(hashlib.sha256(f'{seed}:{info.rank}:{epoch}'.encode()).digest()[:4], 'little')
    random_seed(derived)
    if info.is_main:
        where = f'{len(states)} process(es)' + (' with a GPU' if 'cuda' in states[0] else ' on the CPU')
        here = f'{info.world_size} process(es)' + (' with a GPU' if device.type == 'cuda' else ' on the CPU')
        print(f'stdistill: warning: the checkpoint was written by {where} and this run has {here}: random '
              f'states reseeded from (seed, rank, epoch); the run continues, but not bitwise as it would have',
              file=sys.stderr)


def _fit_workers(cfg: TrainConfig, info: DistInfo) -> TrainConfig:
    """cfg with at most as many data-loader workers as this process has CPUs (more only contend;
    torch warns of them), said once."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    if cfg.workers <= cpus:
        return cfg
    if info.is_main:
        print(f'stdistill: workers {cfg.workers} -> {cpus}: this machine gives a process {cpus} CPU(s)', flush=True)
    return dataclasses.replace(cfg, workers=cpus)


def _warn_small_grid(cfg: TrainConfig, student: nn.Module) -> None:
    """Say so when a patch-16 model gets small images: a 2x2 grid leaves nothing to mix."""
    stem = getattr(getattr(student, 'backbone', student), 'stem', None)
    grid = getattr(stem, 'grid_size', None)
    if grid is not None and grid[0] * grid[1] < 16:
        print(f'stdistill: warning: {cfg.model} at img_size {cfg.img_size} sees a {grid[0]}x{grid[1]} grid of '
              f'patches: take a student for small images (stdistill models), or a larger img_size',
              file=sys.stderr, flush=True)


def _warn_short_data(cfg: TrainConfig, dropped: int, images: int, steps: int) -> None:
    """Say so when settings made for ImageNet waste a small dataset: an incomplete last batch
    that leaves out a large part of each epoch, or an EMA longer than the whole run."""
    if dropped > 0.1 * images:
        print(f'stdistill: warning: batch_size {cfg.batch_size} leaves {dropped} of {images} training images out '
              f'of each epoch (the incomplete last batch): lower batch_size', file=sys.stderr, flush=True)
    updates = steps * cfg.epochs
    initial = cfg.model_ema_decay ** updates  # the share of the initial weights in the EMA at the end
    if cfg.model_ema and initial > 0.5:
        print(f'stdistill: warning: with model_ema_decay {cfg.model_ema_decay}, after this run\'s {updates} updates the '
              f'EMA is still {initial:.0%} the initial weights: lower it (e.g. {0.001 ** (1 / updates):.4g})',
              file=sys.stderr, flush=True)


def _resume_changes(cfg: TrainConfig, folder: str) -> Dict[str, List[Any]]:
    """What `cfg` changes from the config the checkpoint `folder` was trained with (recorded in
    it; for an older checkpoint, the run's config.yaml; {} for a run with neither). config.yaml
    is not enough: a resume that changed it and then failed before saving an epoch would hide
    the change from the next one. A key a resumed run may not change is a ValueError."""
    recorded = checkpoint_entry(folder, 'config')
    path = os.path.join(cfg.output, 'config.yaml')
    try:
        if recorded is not None:
            saved = config_from_dict(json.loads(recorded))
        elif os.path.isfile(path):
            saved = load_config(path)
        else:
            return {}
    except (ValueError, TypeError) as e:
        raise ValueError(f'cannot read the config of the run to resume ({e})') from None
    return resume_changes(with_absolute_paths(saved), with_absolute_paths(cfg))


def _check_classes(run: str, classes: Optional[List[str]], trained_count: Optional[int], count: int) -> None:
    """A resumed run's data must have the classes it was trained on, in the same order."""
    path = os.path.join(run, 'class_map.txt')
    if trained_count is not None and count != trained_count:
        raise ValueError(f'the training data now has {count} classes and the run was trained on {trained_count}: '
                         f'point data_dir at the data it was trained on')
    if classes is None or not os.path.isfile(path):
        return
    trained = read_class_map(path)
    if trained != classes and sorted(trained) == sorted(classes):
        first = next(i for i, (a, b) in enumerate(zip(trained, classes)) if a != b)
        raise ValueError(f'the training data names the run\'s classes in another order (label {first} is now '
                         f'{classes[first]!r}, the run trained it as {trained[first]!r}, {path}): give class_map the '
                         f'run\'s order, or point data_dir at the data it was trained on')
    if trained != classes:
        raise ValueError(f'the training data now has {len(classes)} classes ({", ".join(classes[:3])}, ...) and the '
                         f'run was trained on {len(trained)} ({path}): point data_dir at the data it was trained on')


def _best_of(row: Dict[str, Any], ema: bool) -> Dict[str, Any]:
    """The epoch's best top-1, of the student's weights or (with model_ema) of their EMA."""
    split = {'images': row['val_images'], 'chance_top1': row['val_chance_top1']}  # what a top-1 is judged by
    if ema and row['ema_top1'] > row['val_top1']:
        return {'top1': row['ema_top1'], 'top5': row['ema_top5'], 'epoch': row['epoch'], 'weights': 'ema', **split}
    return {'top1': row['val_top1'], 'top5': row['val_top5'], 'epoch': row['epoch'], 'weights': 'student', **split}


def _no_update_message(epoch: int, metrics: Dict[str, Any]) -> str:
    return (f'epoch {epoch + 1} made no update: {metrics["skipped_steps"]} step(s) had a non-finite loss and '
            f'{metrics["skipped_batches"]} batch(es) too few readable images ({metrics["skipped_images"]} unreadable '
            f'image(s)); nothing of this epoch is saved: check the data (bad_images), lr and clip_grad')


def train(cfg: TrainConfig, resume: bool = False, stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Run (or continue, with resume=True) the training `cfg` describes; return the summary.

    Raises ValueError (one line) for bad input, for a key a resumed run may not change, and for
    an epoch that made no update (the run stops there; its last checkpoint is the epoch before).
    """
    info = init_distributed(cfg.device, cfg.dist_timeout)
    device = resolve_device(cfg.device, info)
    _check_output_path(cfg)
    claim = lock_folder_on_main(cfg.output, 'the run', info)  # one live process per run folder
    existed = os.path.isdir(cfg.output)
    try:
        then = (f'continue with {command("stdistill", "train", *option("--resume", cfg.output))}' if resume else
                'run the command again')
        with writing(cfg.output, 'the run', then):
            return _run(cfg, resume, stop_after, info, device)
    except WriteRefused as e:
        kept = [n for n in RESUMABLE if os.path.isdir(os.path.join(cfg.output, n))]  # what --resume continues
        if info.is_main and not existed and not kept:  # no epoch committed: leave no half-made run folder
            _remove_unfinished_run(cfg.output)
        elif kept and not resume:
            raise WriteRefused(str(e).replace('run the command again', f'continue with '
                               f'{command("stdistill", "train", *option("--resume", cfg.output))}')) from None
        raise
    finally:
        claim.release()


def _run(cfg: TrainConfig, resume: bool, stop_after: Optional[int], info: DistInfo,
         device: torch.device) -> Dict[str, Any]:
    """train(), once its run folder is claimed."""
    _check_run_folder(cfg, resume)
    changes, folder = {}, None
    if resume:
        folder, damaged = newest_valid_checkpoint(cfg.output)
        for reason in damaged if info.is_main else ():
            print(f'stdistill: warning: passing over {reason}', file=sys.stderr)
        changes = _resume_changes(cfg, folder)
    inputs = input_digests(cfg)  # before anything is read from them
    if resume:
        _check_inputs(checkpoint_entry(folder, 'inputs'), inputs)
    if info.is_main and os.path.isdir(cfg.output):
        remove_stale_temporaries(cfg.output)  # half-written checkpoints of a killed process
    random_seed(cfg.seed, info.rank)
    amp_dtype = _amp_dtype(cfg, device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels

    student_input = student_contract(cfg)
    loading = _fit_workers(cfg, info)
    # a resumed run reads its class count from the data, and checks it against the run's below
    data = build_data(dataclasses.replace(loading, num_classes=None) if resume else loading, info, student_input.mean,
                      student_input.std, pin_memory=device.type == 'cuda')
    if resume:
        _check_classes(cfg.output, data.classes, cfg.num_classes, data.num_classes)
    # config.yaml keeps the batch_size asked for; a small training set may have lowered it (said in the report)
    requested_batch, cfg = cfg.batch_size, dataclasses.replace(cfg, batch_size=data.batch_size)
    mixup = build_mixup(cfg, data.num_classes)
    store = None
    if cfg.teacher_outputs:  # the teachers' outputs are read, not computed: no teacher is built
        if cfg.method == 'none':
            raise ValueError('method none uses no teachers: remove teacher_outputs')
        refuse_labels_teacher_in_store(cfg, 'remove teacher_outputs (the labels cost nothing to read)')
        fingerprint = run_fingerprint(cfg, data.train_loader.dataset, data.classes, info.world_size,
                                      student_input.to_json())
        store = TeacherStore(cfg.teacher_outputs, fingerprint, outputs_spec(cfg), info.rank,
                             len(data.train_loader), device)
    # a resumed student takes its checkpoint's weights: its pretrained file is not read again
    objective = build_objective(cfg, data.num_classes, device, mixup is not None, classes=data.classes,
                                with_teachers=store is None, student_pretrained=False if resume else None)
    student = objective.student
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules())
    check_batch_size(cfg, info, mixup is not None, batch_norm)
    if info.is_main:
        _warn_small_grid(cfg, student)
    if cfg.channels_last:
        student.to(memory_format=torch.channels_last)
    # recorded in every checkpoint, so that this student can be a teacher later (teacher_input.py)
    record = {RECORD_KEY: student_input.to_json(), ARCHITECTURE_KEY: json.dumps(student_architecture(cfg, student))}
    if data.classes is not None:
        record[CLASSES_KEY] = json.dumps(data.classes)
    teacher_inputs = [teacher_line(i, t) for i, t in enumerate(objective.teachers)]
    if store is not None:
        teacher_inputs = [f'teacher outputs from the store {cfg.teacher_outputs}: {store.describe()}',
                          *(f'{line} (in the teacher pass)' for line in store.doc['info'].get('teacher_inputs', []))]
    if info.is_main:
        for line in data.report + teacher_inputs:
            print(line, flush=True)

    lr = cfg.lr if cfg.lr is not None else 5e-4 * cfg.batch_size * info.world_size / 512
    problem = schedule_problem(cfg, lr) if cfg.lr is None and info.is_main else None
    if problem:  # DeiT's rule on a small batch: said, as the recipe may be run at that size on purpose
        print(f'stdistill: warning: {problem}', file=sys.stderr, flush=True)
    steps = len(data.train_loader)
    _check_mine_warmup(cfg, objective, steps)
    try:  # timm's factories: an unknown name is an assertion or a bare message
        optimizer = create_optimizer_v2(objective.trainable_module, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum)
    except (AssertionError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f'config key opt: {_first_line(e)} (timm optimizer names: adamw, sgd, lamb, ...)') from None
    try:
        scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                           warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                                           step_on_epochs=False, updates_per_epoch=steps)
    except (AssertionError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f'config key sched: {_first_line(e)} (timm scheduler names: cosine, step, ...)') from None
    ema = ModelEmaV3(student, decay=cfg.model_ema_decay) if cfg.model_ema else None
    start_epoch, num_updates, best, history, state, changelog = 0, 0, {'top1': -1.0, 'epoch': -1}, [], None, []
    if resume:
        state = load_checkpoint(folder, student, verified=True, ema=ema.module if ema is not None else None)
        if ema is not None and state['ema'] is not None:  # written before the EMA had a file of its own
            ema.module.load_state_dict(state['ema'])
        start_epoch, num_updates = state['epoch'] + 1, state['num_updates']
        trained = state.get('batch_size', cfg.batch_size)  # absent from checkpoints written before it was kept
        if trained != cfg.batch_size:  # the same batch_size asked for, but the data now lowers it otherwise
            raise ValueError(f'the run trained with batch_size {trained} and its training data now gives '
                             f'{cfg.batch_size} (min_updates_per_epoch lowers it on a small training set): point '
                             f'data_dir at the data it was trained on')
        if cfg.epochs < start_epoch:
            raise ValueError(f'epochs={cfg.epochs}, but the run has done {start_epoch} epochs: give epochs >= '
                             f'{start_epoch}')
        optimizer.load_state_dict(state['optimizer'])
        if objective.mi is not None:
            objective.mi.load_state_dict(state['mi'])
        best, history, changelog = state['best'], state['history'], state.get('changes') or []
        rebuilt = any(k in SCHEDULE_KEYS for k in changes)
        if not rebuilt:  # else the scheduler made above from cfg is the rebuilt one
            scheduler.load_state_dict(state['scheduler'])
        scheduler.step_update(num_updates=num_updates)
        changelog += [{'epoch': start_epoch, 'key': k, 'from': a, 'to': b} for k, (a, b) in changes.items()]
        if changes and info.is_main:
            said = ', '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items())
            how = (f': the learning-rate schedule is rebuilt for {cfg.epochs} epochs and continues at update '
                   f'{num_updates} (lr {optimizer.param_groups[0]["lr"]:.4g})') if rebuilt else ''
            print(f'stdistill: resuming at epoch {start_epoch + 1} with {said}{how}', flush=True)

    if info.distributed:  # DDP around student and MINE, the teachers outside; buffers synced only for BatchNorm
        ddp = nn.parallel.DistributedDataParallel
        # torch 2.14 renamed broadcast_buffers (per-forward sync) to forward_sync_buffers
        sync = 'forward_sync_buffers' if 'forward_sync_buffers' in inspect.signature(ddp).parameters \
            else 'broadcast_buffers'
        objective.prepare_distributed(device_ids=[device.index] if device.type == 'cuda' else None,
                                      **{sync: batch_norm})
    if cfg.compile:
        student.compile()
    if state is not None:
        _restore_rng(state['rng'], info, device, cfg.seed, start_epoch)

    monitor, resolved = None, with_absolute_paths(dataclasses.replace(cfg, num_classes=data.num_classes,
                                                                       batch_size=requested_batch))
    if info.is_main:
        os.makedirs(cfg.output, exist_ok=True)
        save_config(resolved, os.path.join(cfg.output, 'config.yaml'))
        if data.classes is not None:
            write_class_map(data.classes, os.path.join(cfg.output, 'class_map.txt'))
        monitor = RunMonitor(cfg.output, history, cfg.log_interval, cfg.progress, num_updates)
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    # BatchNorm and MINE (a derangement of the batch) need two images of a batch
    min_batch = 2 if batch_norm or objective.mi is not None else 1
    # drop_last leaves the images of the sampler's incomplete last batch out of each epoch
    dropped_last = (len(data.train_loader.sampler) - steps * cfg.batch_size) * info.world_size
    if info.is_main:
        _warn_short_data(cfg, dropped_last, len(data.train_loader.sampler) * info.world_size, steps)
    try:
        for epoch in range(start_epoch, last_epoch):
            data.train_loader.sampler.set_epoch(epoch)
            data.loader_generator.manual_seed(cfg.seed * 100003 + epoch)
            if monitor:
                monitor.start_epoch(epoch, cfg.epochs, steps)
            start = time.perf_counter()
            metrics, num_updates = train_one_epoch(
                objective, data.train_loader, optimizer, scheduler, device, epoch, num_updates, mixup=mixup,
                clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode, amp_dtype=amp_dtype, ema=ema,
                on_step=monitor.step if monitor else None, skip_nonfinite=cfg.skip_nonfinite, min_batch=min_batch,
                data_seed=data_seed_of(cfg), rank=info.rank, teacher_outputs=store,
                mine_warmup_updates=round(cfg.mine_warmup_epochs * steps))
            if metrics['updates'] == 0:
                raise ValueError(_no_update_message(epoch, metrics))
            row = {'epoch': epoch, **metrics, 'dropped_last_images': dropped_last}
            row.update({f'val_{k}': v for k, v in
                        evaluate(student, data.val_loader, device, info, amp_dtype, cfg.inference_head).items()})
            if ema is not None:
                row.update({f'ema_{k}': v for k, v in
                            evaluate(ema.module, data.val_loader, device, info, amp_dtype, cfg.inference_head).items()
                            if k in ('top1', 'top5')})
            if epoch == start_epoch and changes:
                row['config_changes'] = changes
            row['epoch_s'] = time.perf_counter() - start
            history.append(row)
            candidate = _best_of(row, ema is not None)
            improved = candidate['top1'] > best['top1']
            if improved:
                best = candidate
            rng = gather_objects(rng_state(device), info)  # every process's own states, by rank
            if info.is_main:
                monitor.end_epoch(row, num_updates)
                ema_module = ema.module if ema is not None else None
                # best/ before last/: last/ commits the epoch, so a crash between the two redoes
                # the epoch (identically) and writes best/ again.
                # the weights' own validation score travels with them: a teacher made of them is checked
                scored = dict(record, **{SCORE_KEY: json.dumps({
                    'top1': row['val_top1'], 'top1_cls': row.get('val_top1_cls', row['val_top1']),
                    'images': row['val_images'], 'chance_top1': row['val_chance_top1']})})
                if improved:
                    save_checkpoint(os.path.join(cfg.output, 'best'), student, {'epoch': epoch, 'metrics': row},
                                    metadata=scored, ema=ema_module)
                state = _training_state(epoch, num_updates, best, history, optimizer, scheduler, objective, ema,
                                        resolved, cfg.batch_size)
                state['rng'], state['changes'], state['inputs'] = rng, changelog, inputs
                save_checkpoint(os.path.join(cfg.output, 'last'), student, state,
                                previous=os.path.join(cfg.output, 'previous'), metadata=scored, ema=ema_module)
    except NonFiniteLossError as e:
        kept = (f'the checkpoint of epoch {history[-1]["epoch"] + 1} is kept in {cfg.output}/last' if history else
                'no epoch finished, so the run has no checkpoint')
        raise NonFiniteLossError(f'{e} ({kept})') from None
    finally:
        if monitor:
            monitor.close()
    digests = gather_objects(weights_digest(student), info)
    summary = {
        'epochs_done': len(history), 'epochs': cfg.epochs, 'batch_size': cfg.batch_size, 'best': best,
        'final': history[-1] if history else None,
        'params_m': sum(p.numel() for p in student.parameters()) / 1e6,
        'num_updates': num_updates,
        **{key: sum(row.get(key, 0) for row in history)
           for key in ('skipped_steps', 'skipped_batches', 'skipped_images', 'unpaired_images', 'dropped_last_images')},
        'world_size': info.world_size, 'weights_sha256_per_rank': digests, 'teacher_inputs': teacher_inputs,
        'teacher_outputs': cfg.teacher_outputs,
        'data': data.report, 'config_changes': changelog,
    }
    if info.is_main:
        summary['plots'] = write_plots(cfg.output, history)
        write_atomic(os.path.join(cfg.output, 'summary.json'), lambda f: json.dump(summary, f, indent=1))
    return summary


def load_student_checkpoint(cfg: TrainConfig, checkpoint: str, ema: bool = False
                            ) -> Tuple[nn.Module, Optional[List[str]]]:
    """The student a checkpoint holds (a checkpoint folder or its model.safetensors), built from
    cfg, with its weights or (ema=True) their EMA; and the class names it was trained on (recorded
    in it, else its run's class_map.txt; None when neither names them). A checkpoint folder with
    a state.json is checked against its checksums first. Raises ValueError (one line) for a
    damaged checkpoint, missing EMA weights, or weights that do not fit cfg's model."""
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    path = os.path.join(checkpoint, MODEL_FILE) if os.path.isdir(checkpoint) else checkpoint
    if os.path.isdir(checkpoint) and os.path.isfile(os.path.join(checkpoint, STATE_JSON)):
        verify_checkpoint(checkpoint)  # a damaged or edited checkpoint folder is refused, not used
    if ema and not os.path.isfile(os.path.join(folder, EMA_FILE)):
        raise ValueError(f'{checkpoint} holds no EMA weights ({EMA_FILE}; the run had model_ema off): '
                         f'use it without --ema')
    weights = load_weights(path, use_ema=ema)
    run_map = os.path.join(os.path.dirname(folder), 'class_map.txt')
    classes = recorded_classes(path) or (read_class_map(run_map) if os.path.isfile(run_map) else None)
    num_classes = len(classes) if classes else cfg.num_classes
    if num_classes is None:
        raise ValueError('num_classes is not set in the config')
    student = build_student(cfg, num_classes, pretrained=False)
    check_architecture(path, cfg, student)  # weights that fit are not enough: tokens at another block fit too
    try:
        student.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f'{path} does not fit {cfg.model} with method {cfg.method}: '
                         f'{_whole_message(e)}') from None
    return student, classes


def evaluate_checkpoint(cfg: TrainConfig, checkpoint: str, ema: bool = False) -> Dict[str, float]:
    """Top-1/top-5 of a saved student (see load_student_checkpoint), or with ema=True of its EMA
    weights, on cfg's val split, labelled with the class names the checkpoint was trained on."""
    from .loaders import build_eval_loader

    info = init_distributed(cfg.device)
    device = resolve_device(cfg.device, info)
    student, classes = load_student_checkpoint(cfg, checkpoint, ema)
    student.to(device)
    loader = build_eval_loader(cfg, info, *resolve_norm(cfg), classes=classes)
    amp_dtype = _amp_dtype(cfg, device)
    return evaluate(student, loader, device, info, amp_dtype, cfg.inference_head)
