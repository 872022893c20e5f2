"""The paper's comparisons at small scale: one MLP-Mixer student on Fashion-MNIST, a CNN and a ViT teacher.

    python benchmarks/reproduce_fashion_mnist.py                      # --budget short (about 1.5 h on 2 cores)
    python benchmarks/reproduce_fashion_mnist.py --budget long        # all 60k images, 10 epochs (hours on a CPU)
    python benchmarks/reproduce_fashion_mnist.py --rows none labels_std std_both --seeds 0

Two teachers of different families, timm `resnet10t` (a CNN) and a timm ViT (`vit_tiny_patch16_224`
with patch 4, width 96, 6 blocks), both with one input channel, are trained once on the teacher
recipe (`recipes/fashion_mnist/teacher.yaml`, all 60k images) and cached under OUTPUT/teachers;
both budgets use them. The one with the higher test top-1 is "the stronger teacher", whose
pair the one-teacher rows use. Each row below is then trained from scratch with seeds 0, 1, 2
(a seed sets the initialisation, the data order and, in the short budget, the training subset:
the same for every row) on the student recipe `recipes/fashion_mnist/std.yaml` (`mixer_t4_28`),
and evaluated on all 10,000 test images after its last epoch; nothing is selected on the test set.

Budgets (`--budget`):
- short: one epoch over 12,000 images, cosine from the recipe's lr without warm-up; every row.
- long: all 60,000 images, LONG_EPOCHS epochs (`--long-epochs`), for LONG_ROWS. The script
  checks that the plain student's top-1 changed by less than SETTLED points between its last two
  epochs, and says so (or which --long-epochs to try) with the table.

Controls. `teachers: [{model: labels}]` is the ground truth as a teacher (losses.LabelsTeacher):
the labels_* rows train the same heads and tokens on the true labels, so what a real teacher
adds beyond them is the teacher's knowledge, not the read-out. The `_cls` rows evaluate a token
student with its class head alone (the backbone's own classifier), `_dist` with its
distillation heads alone.

The teachers run once per budget, teacher set and seed (`stdistill teacher-pass`, store.py):
one store for the stronger teacher (top-10 soft at tau 1, exact for 10 classes: it serves the
soft KD row and every hard row), one for the two teachers (hard), under OUTPUT/BUDGET/stores;
each distilled row trains from its store (`teacher_outputs`), which replays the online run
(bitwise for hard distillation); the labels rows need none. `--online` runs the teachers in
every step instead.

Runs are kept: a finished run (OUTPUT/BUDGET/rows/ROW/seedS/summary.json, checked against its
config) is reused, an interrupted one resumes from its last epoch (`stdistill train --resume`),
and an interrupted teacher pass from its last whole shard. So the long budget can be stopped
and started again. Each call prints the total time of the budget's runs (their epochs, from
their logs) and passes, and writes OUTPUT/BUDGET/results.json and OUTPUT/BUDGET/table.md, and
OUTPUT/bars.png with every budget that has results (axis from 0).
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
from typing import Any, Dict, List, Optional, Tuple

import yaml

from stdistill.config import config_from_dict
from stdistill.quickstart import RECIPES, _clear_run

LONG_EPOCHS = 10  # 5 did not settle the plain student (+0.73 points over its last two epochs on seed 1)
SETTLED = 0.3  # points: the long budget's plain student must change by less between its last two epochs
BUDGETS = {  # training images per epoch (0: all 60k), epochs; test images (0: all 10k)
    'short': dict(train_samples=12000, epochs=1, warmup_epochs=0),
    'long': dict(train_samples=0, epochs=LONG_EPOCHS, warmup_epochs=0),
    'smoke': dict(train_samples=256, epochs=1, val_samples=500),  # the test's: checks the plumbing
}
LONG_ROWS = ('none', 'std_both', 'labels_std', 'kd', 'deit', 'std_both_mine', 'two_weak_mid')
# name -> (label, timm model, model_kwargs, epochs on all 60k images)
TEACHERS = {
    'resnet10t': ('ResNet-10-T', 'resnet10t', {}, 5),
    'vit_t4': ('ViT-T/4', 'vit_tiny_patch16_224', dict(patch_size=4, embed_dim=96, depth=6, num_heads=3), 3),
}
SMOKE_TEACHER = dict(train_samples=256, epochs=1, val_samples=500)
MID_BLOCK = 2  # of mixer_t4_28's six blocks: the intermediate attachment point (after the third)
LABELS = {'model': 'labels'}
# rows that are also evaluated with the class head alone and the distillation heads alone
HEAD_ROWS = ('std_both', 'labels_std')


def teacher_values(name: str, output: str, common: Dict[str, Any], smoke: bool = False) -> Dict[str, Any]:
    """The training config of teacher `name` (the teacher recipe, all 60k images)."""
    _, model, kwargs, epochs = TEACHERS[name]
    budget = SMOKE_TEACHER if smoke else dict(train_samples=0, epochs=epochs)
    # the smoke test's teachers apart: they must never replace the study's
    return dict(RECIPES['teacher'], **budget, **common, model=model, model_kwargs=dict(kwargs),
                output=os.path.join(output, *(['smoke'] if smoke else []), 'teachers', name))


def row_specs(strong: str, weak: str, epochs: int) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    """name -> (label, config overrides on the STD student recipe). `strong`, `weak`: teacher
    names (TEACHERS), the better and the other; teacher entries name them until `resolve`."""
    def teacher(name: str, position: int = -1) -> Dict[str, Any]:
        return {'model': name, 'token_position': position}

    s, w = TEACHERS[strong][0], TEACHERS[weak][0]
    one, two = [teacher(strong)], [teacher(strong), teacher(weak)]
    std = dict(method='std', tokens='both', mine=False, teacher_weighting='entropy', inference_head='avg')
    return {
        'none': ('no distillation', dict(method='none', teachers=[])),
        'kd': (f'soft KD ({s})', dict(method='kd', teachers=one, distill='soft', tau=1.0)),
        'deit': (f'DeiT token ({s})', dict(method='deit', teachers=one, distill='hard')),
        'std_spatial': ('STD spatial token only', dict(std, tokens='spatial', teachers=one)),
        'std_channel': ('STD channel token only', dict(std, tokens='channel', teachers=one)),
        'std_both': ('STD both tokens', dict(std, teachers=one)),
        'std_both_mine': ('STD both + MINE', dict(std, mine=True, teachers=one)),
        'std_both_mine_warmup': ('STD both + MINE after a warm-up (first quarter)',
                                 dict(std, mine=True, mine_warmup_epochs=epochs / 4, teachers=one)),
        'labels_kd': ('soft KD from the labels', dict(method='kd', teachers=[LABELS], distill='soft', tau=1.0)),
        'labels_deit': ('DeiT token from the labels', dict(method='deit', teachers=[LABELS], distill='hard')),
        'labels_std': ('STD both tokens from the labels', dict(std, teachers=[LABELS])),
        'two_entropy': (f'STD 2 teachers ({s} + {w}), entropy weights', dict(std, mine=True, teachers=two)),
        'two_uniform': (f'STD 2 teachers ({s} + {w}), uniform weights',
                        dict(std, mine=True, teachers=two, teacher_weighting='uniform')),
        'two_weak_mid': (f'STD 2 teachers, {w} pair at block {MID_BLOCK + 1}/6, {s} last',
                         dict(std, mine=True, teachers=[teacher(strong), teacher(weak, MID_BLOCK)])),
        'two_strong_mid': (f'STD 2 teachers, {s} pair at block {MID_BLOCK + 1}/6, {w} last',
                           dict(std, mine=True, teachers=[teacher(strong, MID_BLOCK), teacher(weak)])),
    }


ROWS = tuple(row_specs(*TEACHERS, 1))


def resolve(entry: Dict[str, Any], checkpoints: Dict[str, str]) -> Dict[str, Any]:
    """A row's teacher entry as the config takes it: the timm model, its sizes and weights."""
    if entry['model'] == LABELS['model']:
        return dict(entry)
    _, model, kwargs, _ = TEACHERS[entry['model']]
    return dict(entry, model=model, kwargs=dict(kwargs), checkpoint=checkpoints[entry['model']])


# Keys of how a run is executed, not of what it trains: a finished teacher or row is reused, and an
# interrupted one resumed, whatever they were (a call with --workers 1 once retrained both teachers)
EXECUTION_KEYS = ('workers', 'progress', 'log_interval')


def _same_config(cfg) -> bool:
    """Whether cfg's run folder holds a run of this config, EXECUTION_KEYS apart. The folder's
    config.yaml is read through the current config, so keys added to stdistill since (at their
    defaults) do not make a finished run look different."""
    path = os.path.join(cfg.output, 'config.yaml')
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        saved = yaml.safe_load(f)
    try:
        saved = config_from_dict(saved)
    except (ValueError, TypeError):  # a run of an older stdistill, with a key it no longer has: not this run
        return False
    if cfg.num_classes is None:  # the run folder records the class count read from the data
        cfg = dataclasses.replace(cfg, num_classes=saved.num_classes)
    cfg = dataclasses.replace(cfg, **{k: getattr(saved, k) for k in EXECUTION_KEYS})
    return dataclasses.asdict(cfg) == dataclasses.asdict(saved)


def finished(values: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The summary of a finished run of the config `values`, else None."""
    cfg = config_from_dict(values)
    summary_path = os.path.join(cfg.output, 'summary.json')
    if _same_config(cfg) and os.path.isfile(summary_path):
        with open(summary_path) as f:
            done = json.load(f)
        if done.get('epochs_done') == cfg.epochs:
            return done
    return None


def run(values: Dict[str, Any]) -> Dict[str, Any]:
    """Train the config `values`: reuse an identical finished run, resume an identical
    interrupted one from its last epoch, start any other afresh; return its summary."""
    from stdistill.train import train

    done = finished(values)
    if done is not None:
        return done
    cfg = config_from_dict(values)
    same = _same_config(cfg)
    resume = same and any(os.path.isdir(os.path.join(cfg.output, d)) for d in ('last', 'previous'))
    if not resume:
        _clear_run(cfg.output)  # an unfinished or different run starts again; a folder that is no run is refused
    if resume:
        print(f'   resuming {cfg.output}', flush=True)
    return train(cfg, resume=resume)


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
        began = time.perf_counter()
        teacher_pass(cfg, folder)
    except ValueError:  # a store of this study made for other settings (e.g. retrained teachers): redo it
        if not os.path.isfile(os.path.join(folder, 'store.json')):
            raise
        shutil.rmtree(folder)
        began = time.perf_counter()
        teacher_pass(cfg, folder)
    _add_minutes(os.path.join(folder, 'pass_minutes.json'), (time.perf_counter() - began) / 60)
    return folder


def _minutes(path: str) -> float:
    """The total of minutes kept in `path` (0 without the file)."""
    if not os.path.isfile(path):
        return 0.0
    with open(path) as f:
        return json.load(f)['minutes']


def _add_minutes(path: str, minutes: float) -> float:
    """Add `minutes` to the total kept in `path`; return the new total."""
    total = _minutes(path)
    with open(path, 'w') as f:
        json.dump({'minutes': total + minutes}, f)
    return total + minutes


def _epochs_of(folder: str) -> List[Dict[str, Any]]:
    with open(os.path.join(folder, 'log.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def _settled(runs: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """How much the plain rows' test top-1 changed between their last two epochs."""
    changes = [r['curve'][-1] - r['curve'][-2] for r in runs if r['row'] == 'none' and len(r['curve']) > 1]
    if not changes:
        return None
    return {'changes': changes, 'settled': all(abs(c) < SETTLED for c in changes)}


def build_table(specs, runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    table = []
    for name, (label, _) in specs.items():
        for key, suffix in [('val_top1', ''), ('val_top1_cls', ', inference: class head alone'),
                            ('val_top1_dist', ', inference: distillation heads alone')]:
            values = [r[key] for r in runs if r['row'] == name and key in r]
            if not values or (suffix and name not in HEAD_ROWS):
                continue
            params = next(r['params_m'] for r in runs if r['row'] == name)
            table.append({'row': name + key[len('val_top1'):], 'label': label + suffix, 'n': len(values),
                          'params_m': params, 'mean': statistics.mean(values),
                          'std': statistics.stdev(values) if len(values) > 1 else 0.0, 'runs': values})
    return table


def labels_share(table: List[Dict[str, Any]]) -> Optional[Dict[str, float]]:
    """The share of STD's gain over no distillation that the pair trained on the labels keeps."""
    means = {r['row']: r['mean'] for r in table}
    if not {'none', 'std_both', 'labels_std'} <= set(means) or means['std_both'] == means['none']:
        return None
    gain, kept = means['std_both'] - means['none'], means['labels_std'] - means['none']
    return {'std_gain': gain, 'labels_gain': kept, 'share': kept / gain}


def markdown(table: List[Dict[str, Any]], teacher_top1: Dict[str, float], strong: str, budget: str,
             settled: Optional[Dict[str, Any]], test_images: int) -> str:
    base = next((r['mean'] for r in table if r['row'] == 'none'), None)
    ref = teacher_top1[strong]
    lines = [f'| row | student params | test top-1 (%) | vs no distillation | teacher {TEACHERS[strong][0]} '
             f'({ref:.2f}) minus student | seeds |', '|---|---|---|---|---|---|']
    for r in table:
        delta = f'{r["mean"] - base:+.2f}' if base is not None and r['row'] != 'none' else ''
        spread = f'{r["std"]:.2f}' if r['n'] > 1 else 'n/a (one seed)'
        lines.append(f'| {r["label"]} | {r["params_m"]:.3f}M | {r["mean"]:.2f} ± {spread} | {delta} | '
                     f'{ref - r["mean"]:+.2f} | {", ".join(f"{v:.2f}" for v in r["runs"])} |')
    lines.append('')
    lines.append(f'Test top-1 on {test_images:,} test images after the last epoch, students and teachers alike. '
                 'Teachers: ' + ', '.join(f'{TEACHERS[m][0]} {v:.2f}' for m, v in teacher_top1.items()))
    share = labels_share(table)
    if share:
        lines.append(f'\nSTD both tokens gain {share["std_gain"]:+.2f} over no distillation; trained on the labels, '
                     f'the same pair gains {share["labels_gain"]:+.2f}: {100 * share["share"]:.0f}% of the gain '
                     f'remains without the teacher.')
    if settled:
        verdict = (f'less than {SETTLED}: settled' if settled['settled'] else
                   f'not under {SETTLED} in every seed: try --long-epochs {LONG_EPOCHS * 2}')
        lines.append(f'\nPlain student, change of test top-1 between its last two epochs ({budget}): '
                     + ', '.join(f'{c:+.2f}' for c in settled['changes']) + f' ({verdict}).')
    return '\n'.join(lines)


def bar_chart(path: str, results: Dict[str, Dict[str, Any]]) -> None:
    """Every row of every budget with results: mean ± std over seeds, the x axis from 0."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    labels: List[str] = []
    for res in results.values():
        labels += [r['label'] for r in res['table'] if r['label'] not in labels]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(labels) * max(len(results), 1) / 1.4 + 1.8))
    height = 0.8 / len(results)
    colours = {'short': '#4c72b0', 'long': '#55a868', 'smoke': '#8172b2'}
    for k, (budget, res) in enumerate(results.items()):
        rows = {r['label']: r for r in res['table']}
        ys = [len(labels) - 1 - i + (len(results) - 1) / 2 * height - k * height for i, lab in enumerate(labels)
              if lab in rows]
        present = [rows[lab] for lab in labels if lab in rows]
        ax.barh(ys, [r['mean'] for r in present], height=height, xerr=[r['std'] for r in present], capsize=2,
                color=colours.get(budget, '#937860'), label=f'{budget} budget')
        for y, r in zip(ys, present):
            ax.annotate(f'{r["mean"]:.2f}', (1, y), va='center', fontsize=7, color='white')
    for (name, top1), style in zip(next(iter(results.values()))['teachers'].items(), ('--', ':')):
        ax.axvline(top1, color='#dd8452', linestyle=style, label=f'teacher {TEACHERS[name][0]}: {top1:.2f}')
    ax.set_yticks(range(len(labels)), labels[::-1], fontsize=8)
    ax.set(xlim=(0, 100), xlabel='Fashion-MNIST test top-1 (%), mean ± std over seeds; axis from 0')
    ax.legend(loc='lower right', fontsize=8, framealpha=1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--output', default='runs/reproduce_fashion_mnist')
    parser.add_argument('--budget', default='short', choices=tuple(BUDGETS))
    parser.add_argument('--long-epochs', type=int, default=None,
                        help=f'epochs of the long budget (default {LONG_EPOCHS}; a run made with other epochs starts '
                             f'again)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--rows', nargs='+', default=None, choices=ROWS,
                        help='a subset of the rows (default: all; the long budget: LONG_ROWS)')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--data-dir', default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    parser.add_argument('--device', default='auto')
    parser.add_argument('--online', action='store_true', help='run the teachers in every step (no teacher-output store)')
    parser.add_argument('--report', action='store_true',
                        help='train nothing: the table of the runs finished so far (rows with fewer seeds say so)')
    args = parser.parse_args(argv)
    if args.long_epochs is not None and (args.budget != 'long' or args.long_epochs < 1):
        parser.error('--long-epochs takes a number of epochs from 1, with --budget long')
    if len(set(args.seeds)) != len(args.seeds):
        parser.error('--seeds: give each seed once')
    # absolute, as each run's config.yaml keeps its paths: a finished run is then found again
    args.output = os.path.abspath(args.output)
    budget = dict(BUDGETS[args.budget], **({'epochs': args.long_epochs} if args.long_epochs else {}))
    rows = args.rows or (LONG_ROWS if args.budget == 'long' else ROWS)
    common = dict(workers=args.workers, data_dir=args.data_dir, device=args.device, progress=False)
    folder = os.path.join(args.output, args.budget)
    start = time.perf_counter()

    teacher_top1, checkpoints = {}, {}
    for name in TEACHERS:
        values = teacher_values(name, args.output, common, smoke=args.budget == 'smoke')
        print(f'== teacher {name}: {values["model"]} {values["model_kwargs"]}, {values["epochs"]} epoch(s)', flush=True)
        summary = finished(values) if args.report else run(values)
        if summary is None:
            raise ValueError(f'teacher {name} is not trained yet: run without --report')
        final = summary['final']
        teacher_top1[name], test_images = final['val_top1'], _epochs_of(values['output'])[-1]['val_images']
        checkpoints[name] = os.path.join(values['output'], 'last', 'model.safetensors')
    strong, weak = sorted(TEACHERS, key=lambda m: -teacher_top1[m])
    specs = row_specs(strong, weak, budget['epochs'])

    runs = []
    for name in [r for r in specs if r in rows]:
        label, overrides = specs[name]
        for seed in args.seeds:
            values = dict(RECIPES['std'], **budget, **common, **overrides, seed=seed,
                          output=os.path.join(folder, 'rows', name, f'seed{seed}'))
            values['teachers'] = [resolve(t, checkpoints) for t in overrides['teachers']]
            models = [t['model'] for t in overrides['teachers'] if t['model'] != LABELS['model']]
            if models and not args.online:
                store = os.path.join(folder, 'stores', '+'.join(models), f'seed{seed}')
                if not args.report:
                    print(f'== teacher pass {"+".join(models)} seed {seed}', flush=True)
                    make_store(values, store)
                values['teacher_outputs'] = store
            if args.report:
                summary = finished(values)
                if summary is None:
                    continue
            else:
                print(f'== {args.budget} {name} seed {seed}', flush=True)
                summary = run(values)
            epochs = _epochs_of(values['output'])
            runs.append({'row': name, 'label': label, 'seed': seed, 'params_m': summary['params_m'],
                         'curve': [e['val_top1'] for e in epochs], 'minutes': sum(e['epoch_s'] for e in epochs) / 60,
                         **{k: v for k, v in summary['final'].items() if k.startswith('val_top1')}})

    table = build_table(specs, runs)
    settled = _settled(runs) if args.budget != 'short' else None
    text = markdown(table, teacher_top1, strong, args.budget, settled, test_images)
    passes = sum(_minutes(os.path.join(root, 'pass_minutes.json'))
                 for root, _, files in os.walk(os.path.join(folder, 'stores')) if 'pass_minutes.json' in files)
    run_minutes = sum(r['minutes'] for r in runs)
    print('\n' + text + f'\n\nthis call {(time.perf_counter() - start) / 60:.1f} min; the {args.budget} budget in all: '
          f'{run_minutes:.1f} min of training and evaluation epochs ({len(runs)} runs, from their logs) + '
          f'{passes:.1f} min of teacher passes')
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'table.md'), 'w') as f:
        f.write(text + '\n')
    with open(os.path.join(folder, 'results.json'), 'w') as f:
        json.dump({'budget': args.budget, 'settings': budget, 'teachers': teacher_top1, 'strong': strong,
                   'runs': runs, 'table': table, 'labels_share': labels_share(table), 'settled': settled,
                   'run_minutes': run_minutes, 'pass_minutes': passes}, f, indent=1)
    results = {}
    for name in BUDGETS:
        path = os.path.join(args.output, name, 'results.json')
        if os.path.isfile(path) and (name != 'smoke' or args.budget == 'smoke'):
            with open(path) as f:
                results[name] = json.load(f)
    if any(r['table'] for r in results.values()):
        bar_chart(os.path.join(args.output, 'bars.png'), results)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # bad input (a config the recipes reject, a folder that is no run): one line
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
