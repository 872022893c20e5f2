"""What a run shows while it trains and leaves behind: progress bar, JSON lines, TensorBoard, plots.

    run/log.jsonl      one JSON object per epoch (train loss terms, lr, eval top-1/top-5, MI, ...)
    run/tb/            TensorBoard scalars: every loss term, MI estimate, teacher weights, accuracy,
                       all against one step axis, the optimizer update (the epoch is a scalar too)
    run/curves.png     accuracy and loss per epoch;  run/mi.png  the MINE estimate per epoch

Only rank 0 creates a `RunMonitor`; other ranks get `None` and log nothing.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional

from tqdm import tqdm

from ..utils.accuracy import format_top1
from ..utils.disk import save_figure

__all__ = ['RunMonitor', 'write_plots']

_logger = logging.getLogger(__name__)


def _group(name: str) -> str:
    if name.startswith('loss'):
        return 'loss'
    if name.startswith('teacher_weight'):
        return 'teacher_weight'
    return 'train'


class RunMonitor:
    def __init__(self, folder: str, history: List[Dict], log_interval: int, progress: bool,
                 num_updates: int = 0) -> None:
        """history: the epochs done (a resumed run's); num_updates: the update count they end at."""
        from torch.utils.tensorboard import SummaryWriter
        self.folder, self.log_interval, self.progress = folder, max(1, log_interval), progress
        # a resumed run redoes the epoch a kill interrupted: TensorBoard hides the events written
        # after the checkpoint (purge_step), so that no step is shown twice
        self.writer = SummaryWriter(os.path.join(folder, 'tb'), purge_step=num_updates + 1 if history else None)
        self.bar: Optional[tqdm] = None
        # rewrite the log from the checkpoint's history, so a resumed run has no duplicate epochs
        with open(os.path.join(folder, 'log.jsonl'), 'w') as f:
            for row in history:
                f.write(json.dumps(row) + '\n')

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
        if self.progress:
            self.bar = tqdm(total=steps, desc=f'epoch {epoch + 1}/{epochs}', unit='step', dynamic_ncols=True, leave=False)

    def step(self, num_updates: int, values: Dict[str, float], batch: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f'{values["loss"]:.4f}', lr=f'{values["lr"]:.2e}',
                                 img_s=f'{values["img_per_s"]:.0f}', refresh=False)
        if num_updates % self.log_interval == 0:
            for name, value in values.items():
                self.writer.add_scalar(f'{_group(name)}/{name}', value, num_updates)

    def end_epoch(self, row: Dict, num_updates: int) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        with open(os.path.join(self.folder, 'log.jsonl'), 'a') as f:
            f.write(json.dumps(row) + '\n')
        for name, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                prefix = 'eval' if name.startswith(('val_', 'ema_')) else 'epoch'
                self.writer.add_scalar(f'{prefix}/{name}', value, num_updates)
        self.writer.flush()
        top1s = ('val_top1', 'ema_top1')  # with their interval on a small split
        summary = ' '.join(f'{k} {format_top1(row[k], row["val_images"]) if k in top1s else f"{row[k]:.4g}"}'
                           for k in ('loss', 'val_top1', 'val_top5', 'ema_top1', 'mi_estimate') if k in row)
        if 'inference_head' in row:  # inference_head auto: the head chosen on the holdout, and its score there
            summary += (f' head {row["inference_head"]} (holdout top-1 '
                        f'{row["holdout_top1_" + row["inference_head"]]:.2f} on {row["holdout_images"]} images)')
        _logger.info(f'epoch {row["epoch"] + 1}/{self.epochs}: {summary}')  # counted from 1, as the bar

    def close(self) -> None:
        if self.bar is not None:  # a run stopped mid-epoch: clear the bar before its error is printed
            self.bar.close()
            self.bar = None
        self.writer.close()


def write_plots(folder: str, history: List[Dict]) -> List[str]:
    """curves.png (top-1 and train loss per epoch) and, with MINE, mi.png. Returns the paths."""
    if not history:
        return []
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row['epoch'] + 1 for row in history]  # counted from 1, as every printed line
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (('val_top1', 'top-1'), ('ema_top1', 'EMA top-1'), ('val_top1_cls', 'class head'),
                       ('val_top1_dist', 'distillation heads')):
        if key in history[0]:
            acc_ax.plot(epochs, [row[key] for row in history], marker='o', label=label)
    acc_ax.set(xlabel='epoch', ylabel='top-1 (%)', title='evaluation accuracy', ylim=(0, 100))
    acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend()
    for key in [k for k in history[0] if k == 'loss' or k.startswith('loss_')]:
        loss_ax.plot(epochs, [row[key] for row in history], label=key)
    loss_ax.set(xlabel='epoch', ylabel='mean per step', title='training losses')
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.legend(fontsize='small')
    fig.tight_layout()
    paths = [os.path.join(folder, 'curves.png')]
    save_figure(fig, paths[0], dpi=100)
    plt.close(fig)
    if 'mi_estimate' in history[0]:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(epochs, [row['mi_estimate'] for row in history], marker='o')
        ax.set(xlabel='epoch', ylabel='nats', title='MINE estimate of I(spatial token; channel token)')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        paths.append(os.path.join(folder, 'mi.png'))
        save_figure(fig, paths[1], dpi=100)
        plt.close(fig)
    return paths
