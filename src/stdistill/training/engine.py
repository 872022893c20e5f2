"""The plain loops around a training task (task.STDTask): one epoch of training, one pass of evaluation.

Precision (the same on CPU and GPU): under `amp_dtype` (bf16) the student's forward and the
teachers' run under autocast; teacher logits, every loss, MINE and every evaluated head are
fp32. Evaluation takes top-1 and top-5 of each head from one ranking (topk), so `top1` is
exactly the inference head's `top1_<head>`.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from timm.task import TrainingTask
from timm.utils import dispatch_clip_grad, unwrap_model

from ..utils.accuracy import chance_top1
from ..utils.distributed import DistInfo, all_reduce_sum
from ..utils.errors import UserError
from ..method.losses import TeacherTargets
from ..data.schedule import scheduled_mixup
from ..models.students import INFERENCE_HEADS, combine_heads
from ..method.task import STDTask, to_float

DistillObjective = STDTask  # its name before it was a timm TrainingTask

__all__ = ['DistillObjective', 'STDTask', 'train_step', 'train_one_epoch', 'evaluate', 'NonFiniteLossError', 'to_float', 'Batch',
           'prepare_batch']


class NonFiniteLossError(UserError):
    """A loss that is not finite (a learning rate too high, data that is not what the recipe says): the recipe needs fixing."""


def _on_every_process(ok: bool, device: torch.device) -> bool:
    """Whether `ok` holds here and on every other process: under DDP the processes take a step
    together or skip it together, or their collectives would no longer match."""
    return all_reduce_sum([float(not ok)], device)[0] == 0


def _nonfinite_message(loss: torch.Tensor, terms: Dict[str, torch.Tensor], epoch: int, step: int,
                       num_updates: int) -> str:
    bad = [f'{name} = {float(v)}' for name, v in terms.items() if not math.isfinite(float(v))]
    if not bad:
        bad = [f'loss = {loss.item()}' if not math.isfinite(loss.item()) else 'the loss of another process']
    where = ', '.join(bad)
    # epochs and steps counted from 1 in text, as the progress bar counts them
    # the caller (train.train) says which checkpoint, if any, the run keeps
    return (f'non-finite loss at epoch {epoch + 1}, step {step + 1} (update {num_updates + 1}): {where}. Lower lr, '
            f'set clip_grad, check the data, or set skip_nonfinite: true')


def _unpack(batch) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], int]:
    """(images, targets, unreadable images dropped from the batch); our loaders add the count."""
    return batch[0], batch[1], int(batch[2]) if len(batch) > 2 else 0


class Batch(NamedTuple):
    """A training batch as the step uses it: images (B, C, H, W) and targets ((B,) or mixed
    (B, classes)) on the device, after mixup; indices (B,) the dataset indices of the images
    (None from a loader without the data schedule); the counts of unreadable images left out
    by the loader and of the unpaired image left out under mixup. images is None when the
    loader found no readable image."""
    images: Optional[torch.Tensor]
    targets: Optional[torch.Tensor]
    indices: Optional[torch.Tensor]
    unreadable: int
    unpaired: int


def prepare_batch(batch, device: torch.device, mixup: Optional[Callable], data_seed: int, epoch: int, step: int,
                  rank: int) -> Batch:
    """A loader's batch as the training step (and the teacher pass, store.py) sees it: moved to
    `device`; under mixup an odd batch loses its last image (timm pairs the images) and the
    batch is mixed with draws seeded from (data_seed, epoch, step, rank) (schedule.py)."""
    images, targets, unreadable = _unpack(batch)
    indices = batch[3] if len(batch) > 3 else None
    unpaired = 0
    if images is None:
        return Batch(None, None, None, unreadable, 0)
    if mixup is not None and images.shape[0] % 2:
        images, targets = images[:-1], targets[:-1]
        indices = indices[:-1] if indices is not None else None
        unpaired = 1
    if images.shape[0] == 0:  # a batch of one unpaired image: nothing left to mix
        return Batch(None, None, None, unreadable, unpaired)
    images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    images, targets = scheduled_mixup(mixup, images, targets, data_seed, epoch, step, rank)
    return Batch(images, targets, indices, unreadable, unpaired)


def train_step(task: TrainingTask, images: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer,
               scheduler, num_updates: int, teacher_outputs: Optional[List[TeacherTargets]] = None, *,
               amp_dtype: Optional[torch.dtype] = None, params: Optional[List[torch.Tensor]] = None,
               clip_grad: Optional[float] = None, clip_mode: str = 'norm', ema=None, skip_nonfinite: bool = False,
               mine_penalty: bool = True, epoch: int = 0, step: int = 0) -> Tuple[Optional[Dict[str, float]], int]:
    """One optimisation step, the one `stdistill train` takes (and the benchmarks time): the task's
    forward under bf16 autocast (amp_dtype), the finite check (on every process together),
    backward, gradient clipping of `params` (default: the task's trainable parameters), the
    optimizer step, the scheduler's update count, the EMA of the student's weights, and MINE's
    penalty on or off (its warm-up). images (B, C, H, W), targets (B,) or (B, classes);
    teacher_outputs: the teachers' outputs read from a store (None: the task runs its teachers).

    Returns the step's logged values ({'loss', 'loss_cls', ...}, floats) and the update count;
    (None, num_updates) for a non-finite loss skipped under skip_nonfinite. Otherwise a non-finite
    loss raises NonFiniteLossError naming epoch, step and term, before anything is updated.
    """
    mi = getattr(task, 'mi', None)  # any timm TrainingTask steps here too (the benchmarks' timm rows)
    if mi is not None:
        mi.set_penalty(mine_penalty)
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        result = task(images, targets) if teacher_outputs is None else task(images, targets, teacher_outputs)
    loss = result['loss']
    terms = {k: v for k, v in result.items() if k not in ('loss', 'output')}
    if not _on_every_process(math.isfinite(loss.item()), images.device):
        if not skip_nonfinite:
            raise NonFiniteLossError(_nonfinite_message(loss, terms, epoch, step, num_updates))
        return None, num_updates
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad is not None:
        dispatch_clip_grad(params if params is not None else [p for p in task.parameters() if p.requires_grad],
                           clip_grad, mode=clip_mode)
    optimizer.step()
    num_updates += 1
    scheduler.step_update(num_updates=num_updates)
    if ema is not None:
        ema.update(task.student if isinstance(task, STDTask) else unwrap_model(task.get_trainable_module()),
                   step=num_updates)
    return {'loss': loss.item(), **{k: float(v.detach() if isinstance(v, torch.Tensor) else v)
                                    for k, v in terms.items()}}, num_updates


def train_one_epoch(
        task: STDTask,
        loader,
        optimizer: torch.optim.Optimizer,
        scheduler,
        device: torch.device,
        epoch: int,
        num_updates: int,
        mixup: Optional[Callable] = None,
        clip_grad: Optional[float] = None,
        clip_mode: str = 'norm',
        amp_dtype: Optional[torch.dtype] = None,
        ema=None,
        on_step: Optional[Callable[[int, Dict[str, float], int], None]] = None,
        skip_nonfinite: bool = False,
        min_batch: int = 1,
        data_seed: int = 0,
        rank: int = 0,
        teacher_outputs: Optional[Callable[[int, int, Optional[torch.Tensor]], List[TeacherTargets]]] = None,
        mine_warmup_updates: int = 0,
) -> Tuple[Dict[str, float], int]:
    """One pass over `loader`; returns the epoch's mean loss terms and counts, and the updated
    step count.

    A non-finite loss raises NonFiniteLossError naming the step and the term, before anything
    is updated; with skip_nonfinite the step is skipped instead (no update) and counted. A batch
    that unreadable images shrank is trained on as it is, except: one image of an odd batch is
    left out under mixup (timm pairs the images; counted as `unpaired_images`), and a batch of
    fewer than `min_batch` images (MINE and BatchNorm need 2) is skipped (`skipped_batches`).
    Under DDP every process skips a step that any process cannot take. Mixup draws from
    (data_seed, epoch, step, rank) (schedule.py). teacher_outputs(epoch, step, indices): the
    teachers' outputs for a batch, read from a store, instead of running the teachers. MINE's
    penalty reaches the tokens from update `mine_warmup_updates` on (its statistics networks
    learn from the first).
    """
    task.train()
    sums: Dict[str, float] = defaultdict(float)
    steps, images_seen, skipped_steps, skipped_images, start = 0, 0, 0, 0, time.perf_counter()
    skipped_batches, unpaired_images = 0, 0
    params = [p for p in task.parameters() if p.requires_grad]
    for step, batch in enumerate(loader):
        images, targets, indices, unreadable, unpaired = prepare_batch(batch, device, mixup, data_seed, epoch, step,
                                                                       rank)
        skipped_images, unpaired_images = skipped_images + unreadable, unpaired_images + unpaired
        count = 0 if images is None else images.shape[0]
        if not _on_every_process(count >= max(min_batch, 1), device):
            skipped_batches += 1
            continue
        stored = teacher_outputs(epoch, step, indices) if teacher_outputs is not None else None
        values, num_updates = train_step(task, images, targets, optimizer, scheduler, num_updates, stored,
                                         amp_dtype=amp_dtype, params=params, clip_grad=clip_grad, clip_mode=clip_mode,
                                         ema=ema, skip_nonfinite=skip_nonfinite,
                                         mine_penalty=num_updates >= mine_warmup_updates, epoch=epoch, step=step)
        if values is None:  # a non-finite loss, skipped (skip_nonfinite)
            skipped_steps += 1
            continue
        for k, v in values.items():
            sums[k] += v
        steps += 1
        images_seen += images.shape[0]
        if on_step is not None:
            values['lr'] = optimizer.param_groups[0]['lr']
            values['img_per_s'] = images_seen / max(time.perf_counter() - start, 1e-9)
            on_step(num_updates, values, images.shape[0])
    metrics = {k: v / max(steps, 1) for k, v in sums.items()}
    metrics['updates'] = steps  # the same on every process, as the two counts of skipped steps
    metrics['skipped_steps'] = skipped_steps
    metrics['skipped_batches'] = skipped_batches
    summed = all_reduce_sum([float(skipped_images), float(unpaired_images)], device)
    metrics['skipped_images'], metrics['unpaired_images'] = int(summed[0]), int(summed[1])
    metrics['lr'] = optimizer.param_groups[0]['lr']
    metrics['train_img_per_s'] = images_seen / max(time.perf_counter() - start, 1e-9)
    return metrics, num_updates


def _heads(model: nn.Module, images: torch.Tensor, amp_dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
    """Every prediction a model can make, fp32: the features under autocast, the heads in fp32;
    for token students each inference head, from one pass."""
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        features = model.forward_features(images)
    with torch.autocast(images.device.type, enabled=False):
        out = to_float(model.forward_head(to_float(features)))
        if hasattr(model, 'token_pairs') or hasattr(model, 'head_dist'):
            return {head: combine_heads(out, head) for head in INFERENCE_HEADS}
        return {'cls': out}


def _correct(logits: torch.Tensor, targets: torch.Tensor) -> Tuple[int, int]:
    """Top-1 and top-5 hits of (B, classes) logits, both from one ranking (ties broken once)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return int((top[:, 0] == targets).sum()), int((top == targets[:, None]).any(1).sum())


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, info: DistInfo,
             amp_dtype: Optional[torch.dtype] = None, head: str = 'avg') -> Dict[str, float]:
    """Top-1/top-5 (percent) over the whole evaluation set, summed over processes.

    For token students also top-1 of each inference head (cls, dist, avg): the paper's ablation.
    `images` is how many were scored, and `chance_top1` what always guessing the split's most
    frequent class would score (accuracy.chance_top1; at least 100 / classes).
    """
    model.eval()
    counts: Dict[str, float] = defaultdict(float)
    loss_sum, total, per_class = 0.0, 0, None
    for batch in loader:
        images, targets, unreadable = _unpack(batch)
        counts['skipped_images'] += unreadable
        if images is None:
            continue
        images, targets = images.to(device), targets.to(device)
        outputs = _heads(model, images, amp_dtype)
        main_head = head if head in outputs else 'cls'
        # labels per class: what always guessing the most frequent class scores (accuracy.chance_top1)
        found = torch.bincount(targets, minlength=outputs[main_head].shape[-1]).double().cpu()
        per_class = found if per_class is None else per_class + found
        loss_sum += nn.functional.cross_entropy(outputs[main_head], targets, reduction='sum').item()
        for name, logits in outputs.items():
            top1, top5 = _correct(logits, targets)
            if name == main_head:
                counts['top1'] += top1
                counts['top5'] += top5
            if len(outputs) > 1:
                counts[f'top1_{name}'] += top1
        total += targets.shape[0]
    names = sorted(set(counts) | {'top1', 'top5', 'skipped_images'})
    # every process evaluates the same model on its shard: the classes are the same on each
    histogram = per_class.tolist() if per_class is not None else [0.0] * int(getattr(model, 'num_classes', 0))
    summed = all_reduce_sum([counts[n] for n in names] + histogram + [loss_sum, float(total)], device, info)
    histogram, summed = summed[len(names):-2], summed[:len(names)] + summed[-2:]
    total = summed[-1]
    if total == 0:
        skipped = int(summed[names.index('skipped_images')])
        raise UserError(f'the evaluation split has no readable image ({skipped} unreadable): check val_split, '
                        f'data_dir and the images')
    result = {n: int(v) if n == 'skipped_images' else 100.0 * v / max(total, 1) for n, v in zip(names, summed)}
    result['loss'] = summed[-2] / max(total, 1)
    result['images'] = int(total)
    result['chance_top1'] = chance_top1(len(histogram), 100.0 * max(histogram) / total)
    return result
