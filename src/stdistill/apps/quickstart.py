"""`stdistill quickstart`: STD on real data in minutes, on a laptop CPU.

On Fashion-MNIST (28x28 grayscale, 10 classes) it trains, with the same engine as any run:
  1. a CNN teacher (timm `resnet18`, one input channel);
  2. a plain MLP student (`mixer_t4_28`, a small MLP-Mixer), labels only;
  3. the same student with STD: one token pair reading the last block, distilled from the
     teacher's hard labels, with the MINE regulariser;
with the same data, epochs and seed for both students, then prints a table, writes
`comparison.png` and `results.json` ({"rows": [{"name", "model", "params_m", "top1", ...}]}).

The recipes are `recipes/fashion_mnist/{teacher,plain,std}.yaml`; the quickstart sets the
data size, epochs and folders on top of them (PRESETS; the default: about 5 minutes on 2 idle cores;
`--small`: about 3, on fewer images and 2,000 test images; `--long`: all 60k images, more epochs).

A quickstart run again with the same preset keeps the stages it finished and resumes the one a
kill interrupted (from its last checkpoint); a stage whose config changed starts again
(`--restart`: every stage starts again).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, Dict, List, Optional

from ..utils.accuracy import INTERVAL_BELOW, chance_note, wilson_interval
from ..config import RUNTIME_KEYS, TrainConfig, config_changes, config_from_dict, load_config, with_absolute_paths
from ..utils.disk import save_figure, write_json, writing
from ..utils.errors import UserError
from ..utils.locks import lock_folder
from ..utils.log import setup_logging

__all__ = ['run_quickstart', 'quickstart_configs', 'clear_run', 'RECIPES']

_logger = logging.getLogger(__name__)

# The three recipes (kept identical to recipes/fashion_mnist/*.yaml, which a test checks).
_COMMON: Dict[str, Any] = dict(
    dataset='fashion-mnist', img_size=28, in_chans=1, batch_size=128, workers=2,
    aa=None, scale=[0.85, 1.0], ratio=[0.9, 1.1], hflip=0.5, color_jitter=0.0, reprob=0.0,
    mixup=0.0, cutmix=0.0, smoothing=0.1, repeated_aug=False, crop_pct=1.0, interpolation='bilinear',
    drop_path=0.0, opt='adamw', lr=2e-3, weight_decay=0.05, warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5,
    amp=False, epochs=10,
)
RECIPES: Dict[str, Dict[str, Any]] = {
    'teacher': dict(_COMMON, model='resnet18', method='none', output='runs/fashion_mnist/teacher'),
    'plain': dict(_COMMON, model='mixer_t4_28', method='none', output='runs/fashion_mnist/plain'),
    'std': dict(_COMMON, model='mixer_t4_28', method='std', output='runs/fashion_mnist/std',
                tokens='both', mine=True, mine_weight=0.1,
                distill='hard', alpha=0.5, teacher_weighting='entropy', inference_head='avg',
                teachers=[dict(model='resnet18', checkpoint='runs/fashion_mnist/teacher/best/model.safetensors',
                               token_position=-1)]),
}
# What the quickstart changes on top of the recipes: data subsets and epochs that fit in minutes.
# The teacher sees more images than the students, as a pretrained teacher would have; the two
# students get exactly the same data, epochs and seed.
PRESETS = {
    'small': {'teacher': dict(train_samples=10000, epochs=2, val_samples=2000),
              'student': dict(train_samples=6000, epochs=3, val_samples=2000)},
    # about 5 minutes on 2 idle cores (benchmarks/quickstart_time.py); the students' 8,000 images x 3
    # epochs leave the plain one short of its plateau, where a teacher has the most to add
    'default': {'teacher': dict(train_samples=15000, epochs=2), 'student': dict(train_samples=8000, epochs=3)},
    'long': {'teacher': dict(train_samples=0, epochs=6), 'student': dict(train_samples=0, epochs=8)},
}


def quickstart_configs(output: str, long: bool = False, data_dir: Optional[str] = None,
                       workers: int = 2, small: bool = False, **extra: Any) -> Dict[str, TrainConfig]:
    if long and small:
        raise UserError('choose --small or --long, not both')
    presets = PRESETS['long' if long else 'small' if small else 'default']
    configs = {}
    for name, recipe in RECIPES.items():
        preset = presets['teacher' if name == 'teacher' else 'student']
        values = dict(recipe, **dict(preset, workers=workers, data_dir=data_dir, **extra), output=os.path.join(output, name))
        if name == 'std':
            values['teachers'] = [dict(t, checkpoint=os.path.join(output, 'teacher', 'best', 'model.safetensors'))
                                  for t in recipe['teachers']]
        configs[name] = config_from_dict(values)
    return configs


def _stage(cfg: TrainConfig) -> str:
    """'done' (a finished run of exactly cfg is there), 'resume' (cfg's run, interrupted) or 'new'."""
    from ..training.checkpoint import RESUMABLE

    saved = os.path.join(cfg.output, 'config.yaml')
    if not os.path.isfile(saved):
        return 'new'
    try:
        before = load_config(saved)
    except ValueError:
        return 'new'
    changed = config_changes(with_absolute_paths(before), with_absolute_paths(cfg))
    if any(k not in RUNTIME_KEYS for k in changed):  # workers etc. change no result
        return 'new'
    summary = os.path.join(cfg.output, 'summary.json')
    if os.path.isfile(summary):
        with open(summary) as f:
            if json.load(f).get('epochs_done') == cfg.epochs:
                return 'done'
    return 'resume' if any(os.path.isdir(os.path.join(cfg.output, n)) for n in RESUMABLE) else 'new'


MARKER = '.stdistill-quickstart'  # in --output: the stage folders below are the quickstart's to replace


def _check_output(output: str) -> None:
    """Refuse an --output the quickstart did not write that holds its stage folders: they would
    be someone's runs (the README's own walkthrough names its runs teacher, plain and std)."""
    if not output or os.path.isfile(output):
        raise UserError(f'--output must be a folder, got {output!r}')
    mine = os.path.isfile(os.path.join(output, MARKER)) or os.path.isfile(os.path.join(output, 'results.json'))
    taken = [n for n in RECIPES if os.path.exists(os.path.join(output, n))]
    if taken and not mine:
        raise UserError(f'{output} holds {", ".join(taken)}/ not written by stdistill quickstart: choose another '
                        f'--output')
    os.makedirs(output, exist_ok=True)
    open(os.path.join(output, MARKER), 'a').close()


# What a run folder holds (train.py, monitor.py, checkpoint.py; dot-names are checkpoint writes)
_RUN_ENTRIES = {'config.yaml', 'log.jsonl', 'summary.json', 'class_map.txt', 'tb', 'last', 'best', 'previous',
                'curves.png', 'mi.png'}


def clear_run(folder: str) -> None:
    """Remove an earlier run in `folder`: only a folder that holds a stdistill run and nothing
    else; anything else is a UserError naming what is in the way."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise UserError(f'{folder} is a file, not a folder: choose another --output')
    if os.path.isdir(folder):
        if not os.path.isfile(os.path.join(folder, 'config.yaml')):
            raise UserError(f'{folder} exists and is not a stdistill run: choose another --output')
        other = sorted(n for n in os.listdir(folder) if n not in _RUN_ENTRIES and not n.startswith('.'))
        if other:
            raise UserError(f'{folder} holds {other[0]}, which is not part of a stdistill run: move it, or choose '
                            f'another --output')
        shutil.rmtree(folder)


def plot_title(rows: List[Dict[str, Any]]) -> str:
    """The comparison plot's title: the test images every stage was scored on, of Fashion-MNIST's 10,000."""
    images = rows[0]['test_images']
    return 'Fashion-MNIST, ' + ('all 10,000 test images' if images == 10000 else f'{images:,} of its 10,000 test images')


def _comparison_plot(path: str, rows: List[Dict[str, Any]], histories: Dict[str, List[Dict]]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (bar_ax, curve_ax) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r['name'] for r in rows]
    bars = bar_ax.bar(names, [r['top1'] for r in rows], color=['#777777', '#4c72b0', '#dd8452'])
    for bar, row in zip(bars, rows):
        bar_ax.annotate(f'{row["top1"]:.2f}\n{row["params_m"]:.2f}M', (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha='center', va='bottom', fontsize=9)
    bar_ax.set(ylim=(0, 100), ylabel='test top-1 (%)', title=plot_title(rows))  # from 0: no magnified gap
    for name, history in histories.items():
        curve_ax.plot([h['epoch'] + 1 for h in history], [h['val_top1'] for h in history], marker='o', label=name)
    curve_ax.set(xlabel='epoch', ylabel='test top-1 (%)', title='per epoch')
    curve_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve_ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def run_quickstart(output: str = 'runs/quickstart', long: bool = False, data_dir: Optional[str] = None,
                   workers: int = 2, small: bool = False, restart: bool = False, **extra: Any) -> Dict[str, Any]:
    """Train the teacher, the plain student and the STD student of `quickstart_configs` into
    `output` (finished stages kept, an interrupted one resumed, unless restart), then write the
    table, results.json and comparison.png; return the results. Raises UserError for an output
    that is a file or holds something else."""
    from ..training.train import train

    setup_logging()  # progress and warnings as the command line shows them (log.py)

    configs = quickstart_configs(output, long, data_dir, workers, small, **extra)
    if not output or os.path.isfile(output):
        raise UserError(f'--output must be a folder, got {output!r}')
    with lock_folder(output, 'the quickstart'), writing(output, 'the quickstart', 'run it again (finished stages are kept)'):
        return _run_stages(configs, output, restart, train)  # (each stage's run claims its own folder too)


def _run_stages(configs: Dict[str, TrainConfig], output: str, restart: bool, train) -> Dict[str, Any]:
    _check_output(output)
    stages, stale = {}, restart
    for name, cfg in configs.items():  # teacher first: a new teacher makes the students' runs stale too
        stages[name] = 'new' if stale else _stage(cfg)
        if stages[name] == 'new':
            if os.path.isdir(cfg.output) and not restart:
                _logger.info(f'{cfg.output}: another preset or an earlier stage changed, so this stage starts again')
            clear_run(cfg.output)
            stale = True
    rows, histories, start = [], {}, time.perf_counter()
    for name, cfg in configs.items():
        what = {'new': '', 'resume': ', resumed', 'done': ', finished earlier: kept'}[stages[name]]
        _logger.info(f'== {name}: {cfg.model} ({cfg.method}), {cfg.epochs} epochs on '
                     f'{cfg.train_samples or "all"} training images{what} ==')
        if stages[name] == 'done':
            with open(os.path.join(cfg.output, 'summary.json')) as f:
                summary = json.load(f)
        else:
            summary = train(cfg, resume=stages[name] == 'resume')
        with open(os.path.join(cfg.output, 'log.jsonl')) as f:
            histories[name] = [json.loads(line) for line in f]
        final = summary['final']
        # the table shows best/, the checkpoint a user takes away (eval, export and the STD stage's teacher use it)
        best = next(h for h in histories[name] if h['epoch'] == summary['best']['epoch'])
        rows.append({'name': name, 'model': cfg.model, 'method': cfg.method, 'params_m': round(summary['params_m'], 4),
                     'top1': round(best['val_top1'], 2), 'top5': round(best['val_top5'], 2),
                     'best_epoch': best['epoch'] + 1, 'final_top1': round(final['val_top1'], 2), 'epochs': cfg.epochs,
                     'train_images': cfg.train_samples or None, 'test_images': best['val_images'],
                     'run': cfg.output, 'at_chance': chance_note(best),
                     **({'top1_cls_head': round(best['val_top1_cls'], 2)} if 'val_top1_cls' in best else {})})
    minutes = round((time.perf_counter() - start) / 60, 2)
    results = {'dataset': 'fashion-mnist', 'seed': configs['plain'].seed, 'minutes': minutes,
               'rows': rows}
    write_json(os.path.join(output, 'results.json'), results)
    _comparison_plot(os.path.join(output, 'comparison.png'), rows, histories)
    for line in results_table(rows):
        _logger.info(line)
    std, plain = rows[2]['top1'], rows[1]['top1']
    _logger.info(f'\nSTD vs plain student: {std - plain:+.2f} top-1 (same data, epochs and seed; '
                 f'{rows[1]["test_images"]} test images). {results["minutes"]:.1f} min. '
                 f'Results: {os.path.join(output, "results.json")}, plot: {os.path.join(output, "comparison.png")}')
    for row in rows:
        if row['at_chance']:
            _logger.warning(f'{row["name"]}: {row["at_chance"]}')
    return results


def results_table(rows: List[Dict[str, Any]]) -> List[str]:
    """The quickstart's table: each stage's top-1 as the run reports it (its inference head) and,
    for a student with tokens, its class head alone (what a timm-format export ships), both of
    its best/ checkpoint."""
    lines = [f'\n{"model":<8} {"network":<14} {"params":>8} {"top-1":>7} {"class head alone":>17}']
    for row in rows:
        cls = f'{row["top1_cls_head"]:>17.2f}' if 'top1_cls_head' in row else f'{"(the same)":>17}'
        flag = '  AT CHANCE' if row['at_chance'] else ''
        lines.append(f'{row["name"]:<8} {row["model"]:<14} {row["params_m"]:>7.2f}M {row["top1"]:>7.2f} {cls}{flag}')
    images = rows[0]['test_images']
    if images < INTERVAL_BELOW:
        low, high = wilson_interval(rows[0]['top1'], images)
        lines.append(f'(on {images} test images a top-1 is uncertain by several points: {rows[0]["top1"]:.2f} is '
                     f'95% CI {low:.1f}-{high:.1f})')
    return lines
