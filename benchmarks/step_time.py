"""Time of one optimisation step: plain student vs STD, and STD vs timm's own distillation tasks.

    python benchmarks/step_time.py                                   # CPU, fp32, batch 16
    python benchmarks/step_time.py --device cuda --dtype bf16 --batch-size 128 [--compile]

For Mixer-S16 and CycleMLP-B1 at 224x224 and 1000 classes, built from the ImageNet recipes
(`recipes/imagenet/*_{baseline,std}.yaml`: two token pairs, ResNet-50-D at an intermediate
block and ResNet-101-D at the last, MINE on), with random weights and random images:

  plain                    the backbone alone, label loss
  std                      STD, teachers excluded (their logits computed once, outside the timing)
  std+teachers             STD, the two frozen teachers run inside the step
  timm kd+teacher          timm.task.LogitDistillationTask: the plain student, the first teacher
  timm deit+teacher        timm.task.TokenDistillationTask: the DeiT-token Mixer-S16, the first teacher

Every row is engine.train_step, the step `stdistill train` takes, on the task (STDTask or
timm's): autocast, the finite check, backward, the recipe's clipping, its optimizer (timm's
create_optimizer_v2) and schedule (create_scheduler_v2), and its EMA.
  std -MINE, std spatial,  with --breakdown: STD without MINE, with the spatial token only,
  std channel              with the channel token only (teachers excluded)

The rows without teachers and a dense matmul workload (4096x1024 @ 1024x4096, same dtype) are timed
round-robin, one call of each per round, so that the drift of a shared machine falls on all
of them alike; a row's time is the median over --steps rounds after --warmup (the rows with
teachers: --teacher-steps after one, round-robin among themselves, their ratios to timm's KD
paired within a round). The FLOPs of a step are counted once with
`torch.utils.flop_counter` (matmuls and convolutions, forward and backward, 2 FLOPs per MAC).
The peak is the matmul workload's median rate over all its calls. Ratios are paired: a row's
time over plain's is the median over rounds of the ratio within a round, and a row's fraction
of peak the median over rounds of its FLOP rate over that round's matmul rate, so that a
machine whose speed drifts between rounds (a shared VM) does not enter the ratios.

The last line, for Mixer-S16 with teachers excluded:
    std_overhead=R peak_fraction_plain=F1 peak_fraction_std=F2
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

import timm
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import DistillationTeacher, LogitDistillationTask, TokenDistillationTask, TrainingTask
from timm.utils import ModelEmaV3

from stdistill.training.builders import build_objective
from stdistill.config import TrainConfig, load_config
from stdistill.training.engine import STDTask, train_step

RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'recipes', 'imagenet')
MODELS = {'mixer_s16': 'Mixer-S16', 'cyclemlp_b1': 'CycleMLP-B1'}
BREAKDOWN = {'std -MINE': 'mine=false', 'std spatial': 'tokens=spatial', 'std channel': 'tokens=channel'}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}
DEIT_STUDENTS = {'mixer_s16': 'deit_mixer_s16_224'}  # the DeiT-token baseline of the paper's table


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    if os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), model)
    return f'CPU: {model}, {torch.get_num_threads()} threads'


def matmul_step(device: torch.device, dtype: torch.dtype) -> Tuple[Callable[[], None], int]:
    """A dense matmul workload timed like a row (round-robin with the steps), and its FLOPs: the
    machine's attainable matmul rate under the same conditions as the steps."""
    m, k, n = (4096, 1024, 4096) if device.type == 'cpu' else (16384, 8192, 16384)
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)  # no allocation to disturb the steps' memory
    repeats = 4 if device.type == 'cpu' else 20

    def run() -> None:
        for _ in range(repeats):
            torch.matmul(a, b, out=out)

    return run, 2 * m * k * n * repeats


def build(recipe: str, device: torch.device, overrides: Sequence[str] = ()) -> Tuple[STDTask, TrainConfig]:
    """The recipe's training task (student, teachers, losses, MINE) with random weights, and its config."""
    torch.manual_seed(0)
    cfg = load_config(os.path.join(RECIPES, f'{recipe}.yaml'), list(overrides))
    task = build_objective(cfg, 1000, device, mixup_active=False, pretrained=False)
    if device.type == 'cuda':
        task.student.to(memory_format=torch.channels_last)
    return task.train(), cfg


def timm_tasks(model: str, device: torch.device, std: STDTask) -> Dict[str, TrainingTask]:
    """timm's own distillation tasks, with the STD recipe's first teacher: logit KD of the plain
    student, and DeiT's token on the DeiT-token student (its distilled training mode)."""
    teacher = DistillationTeacher(std.teachers[0].model)  # the raw timm model; timm renormalises for it
    plain, _ = build(f'{model}_baseline', device)
    rows = {'timm kd+teacher': LogitDistillationTask(plain.student, teacher, criterion=nn.CrossEntropyLoss(),
                                                     task_loss_weight=0.5, verbose=False)}
    if model in DEIT_STUDENTS:
        torch.manual_seed(0)
        student = timm.create_model(DEIT_STUDENTS[model], num_classes=1000).to(device)
        rows['timm deit+teacher'] = TokenDistillationTask(student, teacher, criterion=nn.CrossEntropyLoss(),
                                                          distill_type='hard', task_loss_weight=0.5, verbose=False)
    return {row: task.train() for row, task in rows.items()}


def make_step(task: TrainingTask, cfg: TrainConfig, device: torch.device, dtype: torch.dtype, batch_size: int,
              include_teachers: bool) -> Dict:
    """A closure running one optimisation step of `task` (engine.train_step: what stdistill train runs,
    with the recipe's optimizer, schedule, clipping and EMA), and its FLOP count."""
    images = torch.randn(batch_size, 3, 224, 224, device=device)
    targets = torch.randint(0, 1000, (batch_size,), device=device)
    cached = None
    if isinstance(task, STDTask) and task.teachers and not include_teachers:
        with torch.no_grad():
            cached = task.teacher_logits(images)
    trainable = task.trainable_module
    optimizer = create_optimizer_v2(trainable, opt=cfg.opt, lr=cfg.lr or 5e-4, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                       warmup_epochs=cfg.warmup_epochs, step_on_epochs=False, updates_per_epoch=1000)
    student = task.student if isinstance(task, STDTask) else trainable
    ema = ModelEmaV3(student, decay=cfg.model_ema_decay) if cfg.model_ema else None
    updates = [0]

    def step() -> None:
        _, updates[0] = train_step(task, images, targets, optimizer, scheduler, updates[0], cached,
                                   amp_dtype=None if dtype == torch.float32 else dtype, clip_grad=cfg.clip_grad,
                                   clip_mode=cfg.clip_mode, ema=ema)

    with FlopCounterMode(display=False) as counter:  # counted eagerly, before any compilation
        step()
    return {'step': step, 'flops': counter.get_total_flops(),
            'params_m': sum(p.numel() for p in student.parameters()) / 1e6}


def time_rows(steps: Dict[str, Callable], device: torch.device, warmup: int, repeats: int) -> Dict[str, List[float]]:
    """Seconds of each closure's calls after `warmup`, timed round-robin (one call of each per round,
    in reverse order every other round so that no row always follows the same one)."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in list(steps.items())[::1 if i % 2 == 0 else -1]:
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def paired(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median over rounds of a ratio taken within each round (drift between rounds cancels)."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default=None, choices=tuple(DTYPES), help='default: fp32 on CPU, bf16 on GPU')
    parser.add_argument('--compile', action='store_true', help='torch.compile the student (FLOPs are counted eagerly)')
    parser.add_argument('--batch-size', type=int, default=None, help='default: 16 on CPU, 128 on GPU')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--steps', type=int, default=7, help='timed steps per row (the median is reported)')
    parser.add_argument('--teacher-steps', type=int, default=3, help='timed steps of the std+teachers rows')
    parser.add_argument('--breakdown', action='store_true',
                        help='also time STD without MINE, with the spatial token only, with the channel token only')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=tuple(MODELS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ('fp32' if device.type == 'cpu' else 'bf16')]
    batch_size = args.batch_size or (16 if device.type == 'cpu' else 128)
    if args.compile:
        args.warmup = max(args.warmup, 3)  # the first compiled steps trace and compile
    print(f'# {datetime.date.today()}  {device_name(device)}  torch {torch.__version__}  dtype {str(dtype)[6:]}  '
          f'compile {args.compile}  batch {batch_size}  224x224  median of {args.steps} steps after {args.warmup}')
    matmul, matmul_flops = matmul_step(device, dtype)
    results, matmul_seconds = {}, []
    for model in args.models:
        (plain, plain_cfg), (std, std_cfg) = build(f'{model}_baseline', device), build(f'{model}_std', device)
        tasks = {'plain': (plain, plain_cfg), 'std': (std, std_cfg)}
        if args.breakdown:  # STD with one part removed at a time: where its time goes
            tasks.update({row: build(f'{model}_std', device, [override]) for row, override in BREAKDOWN.items()})
        steps = {row: make_step(task, cfg, device, dtype, batch_size, False) for row, (task, cfg) in tasks.items()}
        # with teachers inside the step: STD's two, and timm's own tasks with the first of them
        with_teachers = {'std+teachers': make_step(std, std_cfg, device, dtype, batch_size, True)}
        with_teachers.update({row: make_step(task, plain_cfg, device, dtype, batch_size, True)
                              for row, task in timm_tasks(model, device, std).items()})
        if args.compile:  # after the FLOPs were counted eagerly
            for task, _ in tasks.values():
                task.compile()
        # The compared rows and the matmul workload are timed round-robin; the rows with teachers
        # after them, round-robin among themselves, with fewer steps (several times slower).
        times = time_rows(dict({row: s['step'] for row, s in steps.items()}, matmul=matmul), device, args.warmup,
                          args.steps)
        matmul_round = times.pop('matmul')
        matmul_seconds += matmul_round
        for row, t in times.items():  # paired with the same round's plain step and matmul call
            results[(model, row)] = dict(steps[row], seconds=statistics.median(t), vs_plain=paired(t, times['plain']),
                                         of_peak=paired(matmul_round, t) * steps[row]['flops'] / matmul_flops)
        teacher_times = time_rows({row: s['step'] for row, s in with_teachers.items()}, device, 1, args.teacher_steps)
        for row, t in teacher_times.items():  # paired with the same round's timm KD step
            results[(model, row)] = dict(with_teachers[row], seconds=statistics.median(t),
                                         vs_timm_kd=paired(t, teacher_times['timm kd+teacher']))
        print(f'# {MODELS[model]} timed', flush=True)
    peak = matmul_flops / statistics.median(matmul_seconds)
    print(f'# dense {str(dtype)[6:]} matmul rate (median of {len(matmul_seconds)}, interleaved with the steps): '
          f'{peak / 1e9:.1f} GFLOP/s (min {matmul_flops / max(matmul_seconds) / 1e9:.1f}, '
          f'max {matmul_flops / min(matmul_seconds) / 1e9:.1f})')
    print(f'\n{"model":<12} {"row":<13} {"params":>7} {"GFLOP/step":>10} {"ms/step":>8} {"img/s":>7} '
          f'{"GFLOP/s":>8} {"of peak":>7}')
    for (model, row), r in results.items():
        r['achieved'] = r['flops'] / r['seconds']
        r.setdefault('vs_plain', r['seconds'] / results[(model, 'plain')]['seconds'])  # std+teachers: not paired
        r.setdefault('of_peak', r['achieved'] / peak)
        print(f'{MODELS[model]:<12} {row:<13} {r["params_m"]:>6.2f}M {r["flops"] / 1e9:>10.1f} {r["seconds"] * 1e3:>8.0f} '
              f'{batch_size / r["seconds"]:>7.1f} {r["achieved"] / 1e9:>8.1f} {r["of_peak"]:>7.1%}')
    print('(of peak: the median over rounds of the row\'s FLOP rate over the same round\'s matmul rate; '
          'std+teachers, timed on its own: over the median matmul rate)\n')
    for model in args.models:
        plain = results[(model, 'plain')]
        for row in [r for m, r in results if m == model and r in BREAKDOWN]:
            print(f'{MODELS[model]}: {row} / plain step time {results[(model, row)]["vs_plain"]:.3f} '
                  f'(FLOPs {results[(model, row)]["flops"] / plain["flops"]:.3f})')
    for model in args.models:
        plain, std, full = (results[(model, row)] for row in ('plain', 'std', 'std+teachers'))
        print(f'{MODELS[model]}: STD / plain step time {std["vs_plain"]:.3f} '
              f'(FLOPs {std["flops"] / plain["flops"]:.3f}); with teachers {full["vs_plain"]:.3f} '
              f'(FLOPs {full["flops"] / plain["flops"]:.3f})')
    for model in args.models:
        kd = results[(model, 'timm kd+teacher')]
        for row in [r for m, r in results if m == model and r in ('std+teachers', 'timm deit+teacher')]:
            print(f'{MODELS[model]}: {row} / timm kd+teacher step time {results[(model, row)]["vs_timm_kd"]:.3f} '
                  f'(FLOPs {results[(model, row)]["flops"] / kd["flops"]:.3f}; STD runs the recipe\'s 2 teachers, '
                  f'timm\'s tasks its first)')
    if 'mixer_s16' in args.models:
        plain, std = results[('mixer_s16', 'plain')], results[('mixer_s16', 'std')]
        print(f'Mixer-S16 mac_overhead={std["flops"] / plain["flops"]:.3f} (FLOPs of a step; paper: 4.3G / 3.8G = '
              f'{4.3 / 3.8:.3f} forward MACs)')
        print(f'std_overhead={std["vs_plain"]:.3f} peak_fraction_plain={plain["of_peak"]:.3f} '
              f'peak_fraction_std={std["of_peak"]:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
