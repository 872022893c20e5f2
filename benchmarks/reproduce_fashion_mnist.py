"""The paper's comparisons at small scale: one MLP-Mixer student on Fashion-MNIST, two CNN teachers.

    python benchmarks/reproduce_fashion_mnist.py                      # the CPU budget (about an hour on 2 cores)
    python benchmarks/reproduce_fashion_mnist.py --budget full        # all 60k images, more epochs (a GPU)
    python benchmarks/reproduce_fashion_mnist.py --rows none std_both_mine --seeds 0

Two CNN teachers of different depth (timm `resnet18` and `resnet10t`, one input channel) are
trained once and cached under OUTPUT/teachers; then each row below is trained from scratch
with seeds 0, 1, 2 (a seed sets the initialisation, the data order and the training subset,
the same subset for every row), on the student recipe `recipes/fashion_mnist/std.yaml`
(`mixer_t4_28`), and evaluated on all 10,000 test images after its last epoch. A finished run
is kept (OUTPUT/rows/ROW/seedS/summary.json, checked against its config), so an interrupted
study continues where it stopped.

The teachers run once per teacher set and seed (`stdistill teacher-pass`, store.py): one
store for the stronger teacher (top-10 soft at tau 1, exact for 10 classes: it serves the
soft KD row and every hard row) and one for the two teachers, under OUTPUT/stores/SET/seedS;
each row trains from its store (`teacher_outputs`), which replays the online run (bitwise for
hard distillation). `--online` runs the teachers inside every step instead, as before.
Wall time, rows kd, std_both_mine and two_entropy, seed 0, 2-core AVX2 CPU (RESULTS.md): the
rows took 1.1 / 1.45 / 1.63 min online and 1.32 / 1.47 / 1.53 min from the store, plus
0.6 min of teacher passes, with the same test top-1 in every row. Small CNN teachers at 28x28
cost little here; the store pays where they dominate the step (benchmarks/teacher_store.py).

Writes OUTPUT/results.json (every run), OUTPUT/table.md (mean +- sample std over seeds, the
markdown of RESULTS.md) and OUTPUT/bars.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import yaml

from stdistill.config import config_from_dict
from stdistill.quickstart import RECIPES, _clear_run

BUDGETS = {  # training images per epoch (0: all 60k), epochs; test images (0: all 10k)
    # students: one pass over 12k images, cosine from the recipe's lr without warm-up
    'cpu': {'teacher': dict(train_samples=30000, epochs=2), 'student': dict(train_samples=12000, epochs=1, warmup_epochs=0)},
    'full': {'teacher': dict(train_samples=0, epochs=10), 'student': dict(train_samples=0, epochs=30)},
    'smoke': {'teacher': dict(train_samples=256, epochs=1, val_samples=500),  # the test's: checks the plumbing
              'student': dict(train_samples=256, epochs=1, val_samples=500)},
}
TEACHERS = {'resnet18': 'ResNet-18', 'resnet10t': 'ResNet-10-T'}
MID_BLOCK = 2  # of mixer_t4_28's six blocks: the intermediate attachment point (after the third)


def row_specs(strong: str, weak: str) -> Dict[str, Dict[str, Any]]:
    """name -> (label, config overrides on the STD student recipe). `strong` = the better teacher."""
    def teacher(model: str, position: int = -1) -> Dict[str, Any]:
        return {'model': model, 'token_position': position}

    one = [teacher(strong)]
    two = [teacher(strong), teacher(weak)]
    std = dict(method='std', tokens='both', mine=False, teacher_weighting='entropy', inference_head='avg')
    return {
        'none': ('no distillation', dict(method='none', teachers=[])),
        'kd': (f'soft KD ({TEACHERS[strong]})', dict(method='kd', teachers=one, tau=1.0)),
        'deit': (f'DeiT token ({TEACHERS[strong]})', dict(method='deit', teachers=one, distill='hard')),
        'std_spatial': ('STD spatial token only', dict(std, tokens='spatial', teachers=one)),
        'std_channel': ('STD channel token only', dict(std, tokens='channel', teachers=one)),
        'std_both': ('STD both tokens', dict(std, teachers=one)),
        'std_both_mine': ('STD both + MINE', dict(std, mine=True, teachers=one)),
        'two_entropy': ('STD 2 teachers, entropy weights', dict(std, mine=True, teachers=two)),
        'two_uniform': ('STD 2 teachers, uniform weights', dict(std, mine=True, teachers=two, teacher_weighting='uniform')),
        'two_mid': (f'STD 2 teachers, {TEACHERS[strong]} pair at block {MID_BLOCK + 1}/6',
                    dict(std, mine=True, teachers=[teacher(strong, MID_BLOCK), teacher(weak)])),
    }


def _finished(cfg) -> Optional[Dict[str, Any]]:
    """The summary of a finished run of exactly this config, else None."""
    summary, saved = os.path.join(cfg.output, 'summary.json'), os.path.join(cfg.output, 'config.yaml')
    if not (os.path.isfile(summary) and os.path.isfile(saved)):
        return None
    with open(saved) as f:
        saved = yaml.safe_load(f)
    if cfg.num_classes is None:  # the run folder records the class count read from the data
        cfg = dataclasses.replace(cfg, num_classes=saved.get('num_classes'))
    if saved != yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg))):
        return None
    with open(summary) as f:
        done = json.load(f)
    return done if done.get('epochs_done') == cfg.epochs else None


def run(values: Dict[str, Any]) -> Dict[str, Any]:
    """Train the config `values` unless an identical run has finished; return its summary."""
    from stdistill.train import train

    cfg = config_from_dict(values)
    done = _finished(cfg)
    if done is not None:
        return done
    _clear_run(cfg.output)  # an unfinished or different run starts again; a folder that is no run is refused
    start = time.perf_counter()
    summary = train(cfg)
    summary['minutes'] = round((time.perf_counter() - start) / 60, 2)
    with open(os.path.join(cfg.output, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    return summary


def make_store(values: Dict[str, Any], folder: str) -> str:
    """The teacher-output store of a row's teachers and seed (made, completed, or found whole):
    soft top-10 at tau 1 for one teacher (the KD row distils soft outputs; hard rows read the
    labels), hard for two. Returns the folder."""
    from stdistill.teacher_pass import teacher_pass

    one = len(values['teachers']) == 1
    store = dict(values, method='kd' if one else 'std', distill='soft' if one else 'hard', tau=1.0, store_topk=10,
                 teacher_outputs=None)
    cfg = config_from_dict(store)
    try:
        teacher_pass(cfg, folder)
    except ValueError:  # a store of this study made for other settings (e.g. retrained teachers): redo it
        if not os.path.isfile(os.path.join(folder, 'store.json')):
            raise
        shutil.rmtree(folder)
        teacher_pass(cfg, folder)
    return folder


def _bar_chart(path: str, table: List[Dict[str, Any]], teachers: Dict[str, float]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(table) + 1.5))
    labels = [r['label'] for r in table][::-1]
    means = [r['mean'] for r in table][::-1]
    stds = [r['std'] for r in table][::-1]
    ax.barh(labels, means, xerr=stds, color='#4c72b0', capsize=3)
    for i, (m, s) in enumerate(zip(means, stds)):
        ax.annotate(f'{m:.2f} ± {s:.2f}', (m + s + 0.1, i), va='center', fontsize=8)
    for (name, top1), style in zip(teachers.items(), ('--', ':')):
        ax.axvline(top1, color='#dd8452', linestyle=style, label=f'teacher {TEACHERS[name]}: {top1:.2f}')
    low = min(m - s for m, s in zip(means, stds))
    ax.set(xlim=(low - 1.5, max(max(means) + 2.5, max(teachers.values()) + 0.5)),
           xlabel='Fashion-MNIST test top-1 (%), mean ± std over 3 seeds')
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--output', default='runs/reproduce_fashion_mnist')
    parser.add_argument('--budget', default='cpu', choices=tuple(BUDGETS))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--rows', nargs='+', default=None, choices=tuple(row_specs(*TEACHERS)),
                        help='a subset of the rows (default: all)')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--data-dir', default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    parser.add_argument('--device', default='auto')
    parser.add_argument('--online', action='store_true', help='run the teachers in every step (no teacher-output store)')
    args = parser.parse_args(argv)
    # absolute, as each run's config.yaml keeps its paths: a finished run is then found again
    args.output = os.path.abspath(args.output)
    budget = BUDGETS[args.budget]
    common = dict(workers=args.workers, data_dir=args.data_dir, device=args.device, progress=False)
    start = time.perf_counter()

    teacher_top1, checkpoints = {}, {}
    for model in TEACHERS:
        values = dict(RECIPES['teacher'], **budget['teacher'], **common, model=model,
                      output=os.path.join(args.output, 'teachers', model))
        print(f'== teacher {model}: {budget["teacher"]}', flush=True)
        teacher_top1[model] = run(values)['final']['val_top1']
        checkpoints[model] = os.path.join(values['output'], 'last', 'model.safetensors')
    strong, weak = sorted(TEACHERS, key=lambda m: -teacher_top1[m])
    specs = row_specs(strong, weak)

    runs, stores, pass_minutes = [], {}, 0.0
    for name, (label, overrides) in specs.items():
        if args.rows and name not in args.rows:
            continue
        for seed in args.seeds:
            values = dict(RECIPES['std'], **budget['student'], **common, **overrides, seed=seed,
                          output=os.path.join(args.output, 'rows', name, f'seed{seed}'))
            values['teachers'] = [dict(t, checkpoint=checkpoints[t['model']]) for t in overrides['teachers']]
            if values['teachers'] and not args.online:
                models = '+'.join(t['model'] for t in values['teachers'])
                if (models, seed) not in stores:
                    print(f'== teacher pass {models} seed {seed}', flush=True)
                    began = time.perf_counter()
                    stores[(models, seed)] = make_store(values, os.path.join(args.output, 'stores', models,
                                                                             f'seed{seed}'))
                    pass_minutes += (time.perf_counter() - began) / 60
                values['teacher_outputs'] = stores[(models, seed)]
            print(f'== {name} seed {seed}', flush=True)
            summary = run(values)
            runs.append({'row': name, 'label': label, 'seed': seed, 'params_m': summary['params_m'],
                         **{k: v for k, v in summary['final'].items() if k.startswith('val_top1')}})

    table = []
    for name, (label, _) in specs.items():
        for key, suffix in [('val_top1', ''), ('val_top1_cls', ', inference: class head'),
                            ('val_top1_dist', ', inference: distillation heads')]:
            values = [r[key] for r in runs if r['row'] == name and key in r]
            if not values or (suffix and name != 'std_both_mine'):
                continue
            params = next(r['params_m'] for r in runs if r['row'] == name)
            table.append({'row': name + key[len('val_top1'):], 'label': label + suffix, 'n': len(values), 'params_m': params,
                          'mean': statistics.mean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
                          'runs': values})
    minutes = (time.perf_counter() - start) / 60
    base = next((r['mean'] for r in table if r['row'] == 'none'), None)
    lines = ['| row | student params | test top-1 (%) | vs no distillation | seeds |', '|---|---|---|---|---|']
    for r in table:
        delta = f'{r["mean"] - base:+.2f}' if base is not None and r['row'] != 'none' else ''
        lines.append(f'| {r["label"]} | {r["params_m"]:.3f}M | {r["mean"]:.2f} ± {r["std"]:.2f} | {delta} | '
                     f'{", ".join(f"{v:.2f}" for v in r["runs"])} |')
    lines.append('')
    lines += [f'Teachers: {TEACHERS[m]} {teacher_top1[m]:.2f}' for m in TEACHERS]
    text = '\n'.join(lines)
    print('\n' + text + f'\n\n{minutes:.1f} min (finished runs are reused; teacher passes {pass_minutes:.1f} min)')
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, 'table.md'), 'w') as f:
        f.write(text + '\n')
    with open(os.path.join(args.output, 'results.json'), 'w') as f:
        json.dump({'budget': args.budget, 'budgets': budget, 'teachers': teacher_top1, 'strong': strong,
                   'runs': runs, 'table': table}, f, indent=1)
    if table:
        _bar_chart(os.path.join(args.output, 'bars.png'), table, teacher_top1)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except ValueError as e:  # bad input (a config the recipes reject, a folder that is no run): one line
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
