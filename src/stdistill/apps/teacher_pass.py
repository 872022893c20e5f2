"""`stdistill teacher-pass`: run a recipe's data schedule through its teachers once, into a store.

    stdistill teacher-pass --config recipes/fashion_mnist/std.yaml --output stores/fm
    stdistill train --config recipes/fashion_mnist/std.yaml teacher_outputs=stores/fm

The pass builds exactly what `train()` builds for the data and the teachers (loaders, mixup,
the teachers adapted to the student's input), but no student: for every epoch of the recipe
it walks the batches a training run will see (schedule.py), runs the teachers in inference
mode (channels-last, bf16 under `amp: true`, as in training) and writes what the loss needs
(store.py). Under torchrun each process writes its own shards. Run again after a kill, it
keeps the whole shards and continues from the first missing step.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import Any, Dict, Optional

import timm
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..training.builders import amp_dtype, build_teachers, refuse_labels_teacher_in_store, student_contract, teacher_line
from ..config import TrainConfig
from ..utils.disk import WriteRefused, writing
from ..utils.distributed import DistInfo, init_distributed, resolve_device
from ..training.engine import prepare_batch
from ..utils.errors import UserError
from ..data.loaders import build_data, build_mixup, data_seed_of, fit_workers
from ..utils.locks import lock_folder_on_main
from ..utils.log import setup_logging
from ..methods import method_of
from ..training.store import SHARD_STEPS, StoreWriter, describe_outputs, outputs_spec, run_fingerprint
from ..method.task import run_teachers

__all__ = ['teacher_pass']

_logger = logging.getLogger(__name__)


def teacher_pass(cfg: TrainConfig, output: str, shard_steps: Optional[int] = None) -> Dict[str, Any]:
    """Write the teacher outputs of every training step of `cfg` into the store `output` (or
    complete a store a killed pass left there); return a summary (images, seconds, img/s).

    Raises UserError (one line) for a recipe without teachers, for a recipe that itself reads a
    store, and for an `output` that holds something else (another store, other files)."""
    setup_logging()  # progress and warnings as the command line shows them (log.py)
    if not method_of(cfg.method).needs_teachers or not cfg.teachers:
        raise UserError('teacher-pass runs a recipe\'s teachers: give one with method kd, deit or std and teachers')
    if cfg.teacher_outputs:
        raise UserError('teacher-pass makes a store: remove teacher_outputs from the recipe (or set teacher_outputs='
                        'null)')
    refuse_labels_teacher_in_store(cfg, 'train such a recipe without a store (the labels cost nothing to read)')
    if not output:
        raise UserError('--output is empty: give a folder for the store')
    shard_steps = SHARD_STEPS if shard_steps is None else shard_steps
    if shard_steps < 1:
        raise UserError('--shard-steps must be a positive number of steps')
    info = init_distributed(cfg.device, cfg.dist_timeout)
    claim = lock_folder_on_main(output, 'the teacher store', info)  # one live process writes a store; refuses a file
    existed = os.path.isdir(output)
    try:
        with writing(output, 'the teacher store', 'run the command again (it keeps the whole shards)'):
            return _pass(cfg, output, shard_steps, info)
    except WriteRefused:
        shards = os.path.isdir(output) and any(n.startswith('epoch') and os.listdir(os.path.join(output, n))
                                               for n in os.listdir(output))
        if info.is_main and not existed and not shards:  # nothing worth keeping: no half-made store
            shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        claim.release()


def _pass(cfg: TrainConfig, output: str, shard_steps: int, info: DistInfo) -> Dict[str, Any]:
    """teacher_pass(), once the store folder is claimed."""
    device = resolve_device(cfg.device, info)
    student_input = student_contract(cfg)
    data = build_data(fit_workers(cfg, info), info, student_input.mean, student_input.std,
                      pin_memory=device.type == 'cuda')
    cfg = dataclasses.replace(cfg, batch_size=data.batch_size)  # as train lowers it on a small training set
    mixup = build_mixup(cfg, data.num_classes)
    teachers = build_teachers(cfg, data.num_classes, device, classes=data.classes)
    steps = len(data.train_loader)
    fingerprint = run_fingerprint(cfg, data.train_loader.dataset, data.classes, info.world_size,
                                  student_input.to_json())
    outputs = outputs_spec(cfg)
    about = {'teacher_inputs': [teacher_line(i, t) for i, t in enumerate(teachers)],
             'device': device.type, 'torch': torch.__version__, 'timm': timm.__version__}
    writer = StoreWriter(output, fingerprint, outputs, steps, info.rank, data.num_classes, about, shard_steps)
    if info.distributed:
        dist.barrier()  # store.json is written (by rank 0) before any process reports
    autocast_dtype, data_seed = amp_dtype(cfg, device), data_seed_of(cfg)
    done = [writer.stored_steps(epoch) for epoch in range(cfg.epochs)]
    remaining = sum(steps - d for d in done) * cfg.batch_size
    if info.is_main:
        _logger.info(f'teacher-pass: {len(teachers)} teacher(s), {cfg.epochs} epoch(s) of {steps} steps, '
                     f'{describe_outputs(outputs, data.num_classes)}, into {output}'
                     + (f' ({sum(done)} steps already stored)' if sum(done) else ''))
        if not remaining:
            _logger.info(f'teacher-pass: {output} is complete: nothing to do')
    bar = tqdm(total=remaining * info.world_size, unit='img', unit_scale=True, dynamic_ncols=True,
               disable=not (cfg.progress and info.is_main), desc='teacher-pass')
    images, start = 0, time.perf_counter()
    sampler = data.train_loader.sampler
    for epoch in range(cfg.epochs):
        if done[epoch] >= steps:
            continue
        sampler.set_epoch(epoch)
        sampler.skip = done[epoch] * cfg.batch_size  # the stored steps are not loaded again
        writer.start(epoch, done[epoch])
        for i, raw in enumerate(data.train_loader):
            batch = prepare_batch(raw, device, mixup, data_seed, epoch, done[epoch] + i, info.rank)
            logits = []
            if batch.images is not None:
                with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                                            enabled=autocast_dtype is not None):
                    logits = run_teachers(teachers, batch.images)
                images += batch.images.shape[0]
            writer.add(batch.indices, logits)
            bar.update(cfg.batch_size * info.world_size)
        writer.flush()
        sampler.skip = 0
    bar.close()
    if info.distributed:
        dist.barrier()  # every process's shards are written
    seconds = time.perf_counter() - start
    return {'store': output, 'epochs': cfg.epochs, 'steps_per_epoch': steps, 'images': images,
            'seconds': seconds, 'img_per_s': images / max(seconds, 1e-9), 'outputs': outputs}
