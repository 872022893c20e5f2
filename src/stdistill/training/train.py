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
import logging
import os
import shutil
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, random_seed

from ..method.architecture import student_architecture
from .builders import (amp_dtype, build_objective, build_student, build_teachers, load_student_checkpoint,
                       refuse_labels_teacher_in_store, resolve_norm, student_contract, teacher_line)
from .checkpoint import (RESUMABLE, checkpoint_entry, file_sha256, load_checkpoint, newest_valid_checkpoint,
                         remove_stale_temporaries, rng_state, rng_state_fits, save_checkpoint, set_rng_state)
from ..config import (SCHEDULE_KEYS, TrainConfig, check_holdout, config_from_dict, load_config, resume_changes,
                     save_config, schedule_problem, with_absolute_paths)
from ..utils.distributed import DistInfo, gather_objects, init_distributed, resolve_device, weights_digest
from ..utils.disk import WriteRefused, write_json, writing
from .engine import NonFiniteLossError, evaluate, train_one_epoch
from ..utils.errors import UserError, first_line
from ..data.folders import read_class_map, write_class_map
from ..utils.hints import command, option
from ..data.loaders import build_data, build_mixup, check_batch_size, data_seed_of, fit_workers
from ..utils.locks import lock_folder_on_main
from ..utils.log import setup_logging
from ..methods import method_of
from .monitor import RunMonitor, write_plots
from .store import TeacherStore, outputs_spec, run_fingerprint
from ..models.students import INFERENCE_HEADS, choose_head
from ..method.task import STDTask
from ..method.teacher_input import RECORD_KEY
from ..method.teachers import ARCHITECTURE_KEY, CLASSES_KEY, SCORE_KEY

# the builders lived here before builders.py: these names stay importable from stdistill.training.train
__all__ = ['train', 'build_student', 'build_teachers', 'build_objective', 'resolve_norm',
           'teacher_line', 'refuse_labels_teacher_in_store',
           'student_contract', 'with_absolute_paths', 'load_student_checkpoint']

_logger = logging.getLogger(__name__)


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
            raise UserError(f'{key} {current["path"]} has changed since the run started (SHA-256 '
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
        raise UserError(f'mine_warmup_epochs {cfg.mine_warmup_epochs} at {steps} updates an epoch is {what}; '
                        f'give between {1 / steps:.3g} and {cfg.epochs - 1 / steps:.3g} epochs')


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
        raise UserError(f'nothing to resume in {cfg.output}: it holds no last/ or previous/ checkpoint')
    if not resume and has_run:
        raise UserError(f'{cfg.output} already holds a run: continue it with '
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
        _logger.warning(f'the checkpoint was written by {where} and this run has {here}: random '
                        f'states reseeded from (seed, rank, epoch); the run continues, but not bitwise as it would have')


def _warn_small_grid(cfg: TrainConfig, student: nn.Module) -> None:
    """Say so when a patch-16 model gets small images: a 2x2 grid leaves nothing to mix."""
    stem = getattr(getattr(student, 'backbone', student), 'stem', None)
    grid = getattr(stem, 'grid_size', None)
    if grid is not None and grid[0] * grid[1] < 16:
        _logger.warning(f'{cfg.model} at img_size {cfg.img_size} sees a {grid[0]}x{grid[1]} grid of '
                        f'patches: take a student for small images (stdistill models), or a larger img_size')


def _warn_short_data(cfg: TrainConfig, dropped: int, images: int, steps: int) -> None:
    """Say so when settings made for ImageNet waste a small dataset: an incomplete last batch
    that leaves out a large part of each epoch, or an EMA longer than the whole run."""
    if dropped > 0.1 * images:
        _logger.warning(f'batch_size {cfg.batch_size} leaves {dropped} of {images} training images out '
                        f'of each epoch (the incomplete last batch): lower batch_size')
    updates = steps * cfg.epochs
    initial = cfg.model_ema_decay ** updates  # the share of the initial weights in the EMA at the end
    if cfg.model_ema and initial > 0.5:
        _logger.warning(f'with model_ema_decay {cfg.model_ema_decay}, after this run\'s {updates} updates the '
                        f'EMA is still {initial:.0%} the initial weights: lower it (e.g. {0.001 ** (1 / updates):.4g})')


def _resume_changes(cfg: TrainConfig, folder: str) -> Dict[str, List[Any]]:
    """What `cfg` changes from the config the checkpoint `folder` was trained with (recorded in
    it; for an older checkpoint, the run's config.yaml; {} for a run with neither). config.yaml
    is not enough: a resume that changed it and then failed before saving an epoch would hide
    the change from the next one. A key a resumed run may not change is a UserError."""
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
        raise UserError(f'cannot read the config of the run to resume ({e})') from None
    return resume_changes(with_absolute_paths(saved), with_absolute_paths(cfg))


def _check_classes(run: str, classes: Optional[List[str]], trained_count: Optional[int], count: int) -> None:
    """A resumed run's data must have the classes it was trained on, in the same order."""
    path = os.path.join(run, 'class_map.txt')
    if trained_count is not None and count != trained_count:
        raise UserError(f'the training data now has {count} classes and the run was trained on {trained_count}: '
                        f'point data_dir at the data it was trained on')
    if classes is None or not os.path.isfile(path):
        return
    trained = read_class_map(path)
    if trained != classes and sorted(trained) == sorted(classes):
        first = next(i for i, (a, b) in enumerate(zip(trained, classes)) if a != b)
        raise UserError(f'the training data names the run\'s classes in another order (label {first} is now '
                        f'{classes[first]!r}, the run trained it as {trained[first]!r}, {path}): give class_map the '
                        f'run\'s order, or point data_dir at the data it was trained on')
    if trained != classes:
        raise UserError(f'the training data now has {len(classes)} classes ({", ".join(classes[:3])}, ...) and the '
                        f'run was trained on {len(trained)} ({path}): point data_dir at the data it was trained on')


def _best_of(row: Dict[str, Any], ema: bool) -> Dict[str, Any]:
    """The epoch's best top-1, of the student's weights or (with model_ema) of their EMA."""
    split = {'images': row['val_images'], 'chance_top1': row['val_chance_top1']}  # what a top-1 is judged by
    if 'inference_head' in row:  # inference_head auto: the epoch's head (this top-1's) and its holdout top-1
        split.update(inference_head=row['inference_head'], holdout_top1=row[f'holdout_top1_{row["inference_head"]}'])
    # (inference_head auto scores the student's weights on the holdout, not their EMA: no pick by validation)
    if ema and 'inference_head' not in row and row['ema_top1'] > row['val_top1']:
        return {'top1': row['ema_top1'], 'top5': row['ema_top5'], 'epoch': row['epoch'], 'weights': 'ema', **split}
    return {'top1': row['val_top1'], 'top5': row['val_top5'], 'epoch': row['epoch'], 'weights': 'student', **split}


def choose_on_holdout(student: nn.Module, ema: Optional[ModelEmaV3], loader, device: torch.device, info: DistInfo,
                      autocast_dtype: Optional[torch.dtype]) -> Dict[str, Any]:
    """inference_head auto, after an epoch: every head's top-1 on the holdout images, and the best
    (students.choose_head), which the student (and its EMA) then predicts with. Returns the log
    row's fields: inference_head, holdout_images, holdout_top1_<head>."""
    held = evaluate(student, loader, device, info, autocast_dtype, 'avg')
    scores = {h: held[f'top1_{h}'] for h in INFERENCE_HEADS}
    head = choose_head(scores)
    for model in (student, ema.module if ema is not None else None):
        if model is not None:
            model.inference_head = head
    return {'inference_head': head, 'holdout_images': held['images'],
            **{f'holdout_top1_{h}': v for h, v in scores.items()}}


def _no_update_message(epoch: int, metrics: Dict[str, Any]) -> str:
    return (f'epoch {epoch + 1} made no update: {metrics["skipped_steps"]} step(s) had a non-finite loss and '
            f'{metrics["skipped_batches"]} batch(es) too few readable images ({metrics["skipped_images"]} unreadable '
            f'image(s)); nothing of this epoch is saved: check the data (bad_images), lr and clip_grad')


def train(cfg: TrainConfig, resume: bool = False, stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Run (or continue, with resume=True) the training `cfg` describes; return the summary.

    Raises UserError (one line) for bad input, for a key a resumed run may not change, and for
    an epoch that made no update (the run stops there; its last checkpoint is the epoch before).
    """
    setup_logging()  # progress and warnings as the command line shows them (log.py)
    info = init_distributed(cfg.device, cfg.dist_timeout)
    device = resolve_device(cfg.device, info)
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
    few = check_holdout(cfg)  # refused here; a warning once the data has given the holdout
    _check_run_folder(cfg, resume)
    changes, folder = {}, None
    if resume:
        folder, damaged = newest_valid_checkpoint(cfg.output)
        for reason in damaged if info.is_main else ():
            _logger.warning(f'passing over {reason}')
        changes = _resume_changes(cfg, folder)
    inputs = input_digests(cfg)  # before anything is read from them
    if resume:
        _check_inputs(checkpoint_entry(folder, 'inputs'), inputs)
    if info.is_main and os.path.isdir(cfg.output):
        remove_stale_temporaries(cfg.output)  # half-written checkpoints of a killed process
    random_seed(cfg.seed, info.rank)
    autocast_dtype = amp_dtype(cfg, device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels

    student_input = student_contract(cfg)
    loading = fit_workers(cfg, info)
    # a resumed run reads its class count from the data, and checks it against the run's below
    data = build_data(dataclasses.replace(loading, num_classes=None) if resume else loading, info, student_input.mean,
                      student_input.std, pin_memory=device.type == 'cuda')
    if resume:
        _check_classes(cfg.output, data.classes, cfg.num_classes, data.num_classes)
    if few and info.is_main:
        _logger.warning(few)
    # config.yaml keeps the batch_size asked for; a small training set may have lowered it (said in the report)
    requested_batch, cfg = cfg.batch_size, dataclasses.replace(cfg, batch_size=data.batch_size)
    mixup = build_mixup(cfg, data.num_classes)
    store = None
    if cfg.teacher_outputs:  # the teachers' outputs are read, not computed: no teacher is built
        if not method_of(cfg.method).needs_teachers:
            raise UserError(f'method {cfg.method} uses no teachers: remove teacher_outputs')
        refuse_labels_teacher_in_store(cfg, 'remove teacher_outputs (the labels cost nothing to read)')
        fingerprint = run_fingerprint(cfg, data.train_loader.dataset, data.classes, info.world_size,
                                      student_input.to_json(), {d['path']: d['sha256'] for d in inputs.values()})
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
            _logger.info(line)

    lr = cfg.lr if cfg.lr is not None else 5e-4 * cfg.batch_size * info.world_size / 512
    problem = schedule_problem(cfg, lr) if cfg.lr is None and info.is_main else None
    if problem:  # DeiT's rule on a small batch: said, as the recipe may be run at that size on purpose
        _logger.warning(f'{problem}')
    steps = len(data.train_loader)
    _check_mine_warmup(cfg, objective, steps)
    try:  # timm's factories: an unknown name is an assertion or a bare message
        optimizer = create_optimizer_v2(objective.trainable_module, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum)
    except (AssertionError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f'config key opt: {first_line(e)} (timm optimizer names: adamw, sgd, lamb, ...)') from None
    try:
        scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                           warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                                           step_on_epochs=False, updates_per_epoch=steps)
    except (AssertionError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f'config key sched: {first_line(e)} (timm scheduler names: cosine, step, ...)') from None
    if scheduler is None:  # timm's 'none': no warm-up, no decay, and nothing for the step to update
        raise UserError(f'config key sched {cfg.sched!r} gives no schedule: choose a timm scheduler (cosine, step, '
                        f'...); for a constant learning rate, sched=cosine with min_lr equal to lr and '
                        f'warmup_epochs=0')
    ema = ModelEmaV3(student, decay=cfg.model_ema_decay) if cfg.model_ema else None
    start_epoch, num_updates, best, history, state, changelog = 0, 0, {'top1': -1.0, 'epoch': -1}, [], None, []
    if resume:
        state = load_checkpoint(folder, student, verified=True, ema=ema.module if ema is not None else None)
        if ema is not None and state['ema'] is not None:  # written before the EMA had a file of its own
            ema.module.load_state_dict(state['ema'])
        start_epoch, num_updates = state['epoch'] + 1, state['num_updates']
        trained = state.get('batch_size', cfg.batch_size)  # absent from checkpoints written before it was kept
        if trained != cfg.batch_size:  # the same batch_size asked for, but the data now lowers it otherwise
            raise UserError(f'the run trained with batch_size {trained} and its training data now gives '
                            f'{cfg.batch_size} (min_updates_per_epoch lowers it on a small training set): point '
                            f'data_dir at the data it was trained on')
        if cfg.epochs < start_epoch:
            raise UserError(f'epochs={cfg.epochs}, but the run has done {start_epoch} epochs: give epochs >= '
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
            _logger.info(f'stdistill: resuming at epoch {start_epoch + 1} with {said}{how}')

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
                clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode, amp_dtype=autocast_dtype, ema=ema,
                on_step=monitor.step if monitor else None, skip_nonfinite=cfg.skip_nonfinite, min_batch=min_batch,
                data_seed=data_seed_of(cfg), rank=info.rank, teacher_outputs=store,
                mine_warmup_updates=round(cfg.mine_warmup_epochs * steps))
            if metrics['updates'] == 0:
                raise UserError(_no_update_message(epoch, metrics))
            row = {'epoch': epoch, **metrics, 'dropped_last_images': dropped_last}
            head = cfg.inference_head
            if data.holdout_loader is not None:  # inference_head auto: chosen on the holdout, then validated
                row.update(choose_on_holdout(student, ema, data.holdout_loader, device, info, autocast_dtype))
                head = row['inference_head']
            row.update({f'val_{k}': v for k, v in
                        evaluate(student, data.val_loader, device, info, autocast_dtype, head).items()})
            if ema is not None:
                row.update({f'ema_{k}': v for k, v in
                            evaluate(ema.module, data.val_loader, device, info, autocast_dtype, head).items()
                            if k in ('top1', 'top5')})
            if epoch == start_epoch and changes:
                row['config_changes'] = changes
            row['epoch_s'] = time.perf_counter() - start
            history.append(row)
            candidate = _best_of(row, ema is not None)
            # inference_head auto: best/ is the epoch whose chosen head scores best on the holdout too,
            # so that neither the head nor the epoch shipped is chosen on the split reported
            improved = candidate.get('holdout_top1', candidate['top1']) > best.get('holdout_top1', best['top1'])
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
                    'inference_head': head if method_of(cfg.method).has_distillation_heads else 'cls',
                    **({'chosen_on': 'holdout'} if 'inference_head' in row else {}),
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
        'output': cfg.output, 'epochs_done': len(history), 'epochs': cfg.epochs, 'batch_size': cfg.batch_size, 'best': best,
        'final': history[-1] if history else None,
        'params_m': sum(p.numel() for p in student.parameters()) / 1e6,
        'num_updates': num_updates,
        **{key: sum(row.get(key, 0) for row in history)
           for key in ('skipped_steps', 'skipped_batches', 'skipped_images', 'unpaired_images', 'dropped_last_images')},
        # the head best/ predicts with (inference_head auto: its epoch's choice on the holdout)
        'head': (best.get('inference_head') or getattr(student, 'inference_head', 'cls'))
        if method_of(cfg.method).has_distillation_heads else 'cls',
        'world_size': info.world_size, 'weights_sha256_per_rank': digests, 'teacher_inputs': teacher_inputs,
        'teacher_outputs': cfg.teacher_outputs,
        'data': data.report, 'config_changes': changelog,
    }
    if info.is_main:
        summary['plots'] = write_plots(cfg.output, history)
        write_json(os.path.join(cfg.output, 'summary.json'), summary)
    return summary

