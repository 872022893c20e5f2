"""What each head of a trained student scores and costs: the table `export` and `train` print.

    head  validation top-1        params   GMACs  CPU latency  timm loads it
    cls   65.66 (64.7-66.6)       0.84M    0.043  1.00x        with import stdistill   <- the plain backbone
    dist  76.43 (75.6-77.3)       0.87M    0.045  1.21x        with import stdistill
    avg   76.06 (75.2-76.9)       0.87M    0.045  1.22x        with import stdistill

A token student predicts with one of three heads (students.INFERENCE_HEADS): its class head alone,
which needs no token and is the plain backbone's network (`cls`), the distillation heads (`dist`),
or their mean with the class head (`avg`). The top-1 of each is its run's record for the
checkpoint's weights (validation split, 95% Wilson interval); params and GMACs are those of the
model the export of that head holds; latency is measured here, on the CPU, as a ratio to the
plain backbone (the run's model without tokens, freshly built) timed in the same rounds.
"""
from __future__ import annotations

import os
import time
from typing import List, NamedTuple, Optional

import timm
import torch
import torch.nn as nn

from ..utils.accuracy import wilson_interval
from .export import load_run_student, recorded_metrics, run_config, timm_needs_stdistill
from ..methods import method_of
from .profiling import count_macs
from ..method.teachers import TRAINING_ONLY_KWARGS

__all__ = ['HeadRow', 'HeadView', 'head_table', 'format_head_table', 'latency_ratios', 'busy_note']


class HeadRow(NamedTuple):
    head: str                      # cls, dist or avg
    top1: Optional[float]          # validation top-1 of the checkpoint's weights with this head (None: not recorded)
    interval: Optional[tuple]      # its 95% Wilson interval (low, high), percent
    images: Optional[int]          # validation images it was measured on
    params_m: float                # parameters of the exported model, millions
    gmacs: float                   # multiply-adds of one image, billions
    latency: float                 # CPU time of a batch, as a multiple of the plain backbone's
    architecture: str              # the timm name its export is built as
    needs_stdistill: bool          # timm knows the architecture only after `import stdistill`


def latency_ratios(models: List[nn.Module], input_size: tuple, budget_s: float = 0.5,
                   warm_up: bool = True) -> List[float]:
    """CPU time of one forward pass through each model, as a multiple of the first's: each model's
    fastest pass over rounds that time every model in turn, every other round in reverse order
    (the fastest, as timeit reports: what other work on the machine adds is never negative). The
    batch grows from 1 to 32 images while a round stays under about 10 ms (small models, whose
    single image is too short to time), the rounds from 3 to 200 while they fit in budget_s
    seconds (an ImageNet-size model takes a few seconds in all). fp32, inference mode. warm_up=False:
    the caller has run each model on one image already (first calls allocate)."""
    with torch.inference_mode():
        one = torch.zeros(1, *input_size)
        for model in models if warm_up else ():
            model(one)
        start = time.perf_counter()
        for model in models:
            model(one)
        single = max(time.perf_counter() - start, 1e-6)  # one image through every model
        batch = max(1, min(32, int(0.01 / single)))
        x = torch.zeros(batch, *input_size)
        rounds = max(3, min(200, int(budget_s / (single * batch))))
        times: List[List[float]] = [[] for _ in models]
        for r in range(rounds):
            for i in (range(len(models)) if r % 2 == 0 else reversed(range(len(models)))):
                start = time.perf_counter()
                models[i](x)
                times[i].append(time.perf_counter() - start)
    return [min(t) / min(times[0]) for t in times]


def busy_note() -> str:
    """'' on a machine with CPUs to spare; else a note that the latency column is unreliable now
    (the 1-minute load average is at or above the CPU count: other work takes the cores)."""
    try:
        load, cpus = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every platform
        return ''
    return f'; the machine is busy (load {load:.1f} on {cpus} CPUs): latency unreliable' if load >= cpus else ''


def _plain_backbone(cfg, num_classes: int) -> nn.Module:
    """The run's model without tokens, as method none would build it (random weights: timed only)."""
    kwargs = {k: v for k, v in cfg.model_kwargs.items() if k not in TRAINING_ONLY_KWARGS}
    kwargs = dict(dict(num_classes=num_classes, in_chans=cfg.in_chans, img_size=cfg.img_size), **kwargs)
    try:
        return timm.create_model(cfg.model, pretrained=False, **kwargs).eval()
    except TypeError:  # a model without an img_size argument (a CNN)
        kwargs.pop('img_size')
        return timm.create_model(cfg.model, pretrained=False, **kwargs).eval()


def head_table(run: str, which: str = 'best', ema: bool = False) -> List[HeadRow]:
    """A row per head of the run's `which` checkpoint (a student without tokens: one, cls). Raises
    UserError as export.load_run_student does (no run folder, a damaged checkpoint)."""
    tokens = method_of(run_config(run).method).has_distillation_heads
    loaded = load_run_student(run, which, ema, 'avg' if tokens else None)  # a token student: whole
    cfg = loaded.cfg
    row = recorded_metrics(os.path.join(run, which))
    images = row.get('val_images')
    size = (cfg.in_chans, cfg.img_size, cfg.img_size)
    if not tokens:  # a plain student: the one head it has, the plain backbone itself
        heads, models = ['cls'], [loaded.model]
    else:
        student, heads = loaded.model, ['cls', 'dist', 'avg']
        # an STD student's class head is its backbone alone; a DeiT token student's needs the token
        models = [student.backbone if h == 'cls' and hasattr(student, 'token_pairs') else HeadView(student, h)
                  for h in heads]
    # the plain backbone: an STD student's own (its cls model), else the run's model built without tokens
    plain = models[0] if not tokens or hasattr(loaded.model, 'token_pairs') else \
        _plain_backbone(cfg, len(loaded.classes))
    timed = models if plain is models[0] else [plain, *models]
    macs = [count_macs(m, size) for m in models]  # one image through each: also the timing's warm-up
    ratios = latency_ratios(timed, size, warm_up=plain is not models[0])[len(timed) - len(models):]
    out = []
    for head, m, ratio, mac in zip(heads, models, ratios, macs):
        # each head is scored for the student's weights; their EMA, for the run's head alone
        top1 = row.get('ema_top1' if ema else 'val_top1') if not tokens else None if ema else row.get(f'val_top1_{head}')
        arch = (getattr(m, 'pretrained_cfg', None) or {}).get('architecture', cfg.model)
        out.append(HeadRow(head, top1, wilson_interval(top1, images) if top1 is not None and images else None, images,
                           sum(p.numel() for p in m.parameters()) / 1e6, mac / 1e9, ratio, arch,
                           timm_needs_stdistill(arch)))
    return out


class HeadView(nn.Module):
    """A token student predicting with one head, sharing the student's weights (no copy)."""

    def __init__(self, student: nn.Module, head: str) -> None:
        super().__init__()
        self.student, self.head = student, head
        self.pretrained_cfg = student.pretrained_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, self.student.inference_head = self.student.inference_head, self.head
        try:
            return self.student(x)
        finally:
            self.student.inference_head = kept


def format_head_table(rows: List[HeadRow], chosen: Optional[str] = None) -> str:
    """The rows as an aligned text table; `chosen` (the exported or run's head) is marked."""
    def top1(r: HeadRow) -> str:
        if r.top1 is None:
            return 'not recorded'
        return f'{r.top1:.2f}' + (f' ({r.interval[0]:.1f}-{r.interval[1]:.1f})' if r.interval else '')
    table = [('head', 'validation top-1 (95% CI)', 'params', 'GMACs', 'CPU latency', 'timm loads it')]
    for r in rows:
        note = []
        if r.head == 'cls' and not r.needs_stdistill:
            note.append('plain timm model')
        elif r.head == 'cls' and r.architecture and not r.architecture.startswith(('std_', 'deit_')):
            note.append('plain backbone')
        if r.head == chosen:
            note.append('<- this one')
        table.append((r.head, top1(r), f'{r.params_m:.3g}M', f'{r.gmacs:.3g}', f'{r.latency:.2f}x',
                      ('with import stdistill' if r.needs_stdistill else 'alone') + ('; ' if note else '')
                      + ', '.join(note)))
    widths = [max(len(t[i]) for t in table) for i in range(5)]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(t[:5], widths)) + '  ' + t[5] for t in table)
