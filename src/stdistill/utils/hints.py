"""Commands and code lines printed for the user to run.

Every one goes through `command` (a shell command) or `code` (a line of Python), which put it in
backticks, quoted so that it runs as printed whatever the paths hold. tests/test_hints.py runs
every backticked hint the command line prints, exactly as printed, and checks what it promises.
"""
from __future__ import annotations

import os
import shlex

__all__ = ['command', 'code', 'option', 'positionals', 'train_longer']


def command(*words: object) -> str:
    """A shell command for the user, as printed: '`stdistill train --resume runs/x epochs=30`'."""
    return '`' + shlex.join(str(w) for w in words) + '`'


def code(line: str) -> str:
    """A line of Python for the user, as printed: '`import stdistill`'."""
    return f'`{line}`'


# updates a run at chance is told to reach: the README's 3-epoch runs on the digits make 66 and
# pass chance; 100 with a margin
ENOUGH_UPDATES = 100
# updates an epoch below which a run at chance is told to train again at a lower batch_size (the
# folder recipes' min_updates_per_epoch): a few large batches an epoch cost many epochs of
# evaluation and checkpoints for the updates a smaller batch makes in a few
FEW_UPDATES = 20


def option(name: str, value: str) -> list:
    """An option and its value, as argparse reads them whatever the value starts with ('-x': --name=-x)."""
    return [f'{name}={value}'] if value.startswith('-') else [name, value]


def positionals(*values: str) -> list:
    """Positional arguments, after '--' when one starts with '-' (argparse would take it for an option)."""
    return ['--', *values] if any(v.startswith('-') for v in values) else list(values)


def _beside(run: str) -> str:
    """A new run folder beside `run`: runs/x -> runs/x-again ('' or '.', the current folder: ../NAME-again)."""
    if run.rstrip(os.sep) in ('', '.'):
        return os.path.join('..', os.path.basename(os.getcwd()) + '-again')
    return run.rstrip(os.sep) + '-again'


def train_longer(run: str, summary: dict) -> str:
    """What to do about a run at chance, from its summary.json: finish it when it stopped early;
    train it again at a lower batch_size (min_updates_per_epoch) when it made fewer than FEW_UPDATES
    updates an epoch; else continue it to at least ENOUGH_UPDATES updates (twice its epochs at the
    least). Each as its update count and the command, as printed."""
    resume = ['stdistill', 'train', *option('--resume', run or '.')]
    if summary['epochs_done'] < summary['epochs']:
        return f'It has done {summary["epochs_done"]} of its {summary["epochs"]} epochs: finish it, {command(*resume)}'
    updates = summary['num_updates']
    steps = max(1, updates // max(1, summary['epochs_done']))
    # a teacher-output store covers the epochs and batches it was made for: the new ones run the teachers online
    online = ['teacher_outputs=null'] if summary.get('teacher_outputs') else []
    store = ' (its teacher store covers only the batches it was made for)' if online else ''
    made = f'It made {updates} update{"" if updates == 1 else "s"} ({steps} an epoch'
    if steps < FEW_UPDATES and summary.get('batch_size', 3) > 2:  # 2: BatchNorm, MINE
        # the loader lowers batch_size until an epoch gives FEW_UPDATES updates (loaders.fit_batch_size)
        epochs = max(summary['epochs'], -(-ENOUGH_UPDATES // FEW_UPDATES))
        again = ['stdistill', 'train', *option('--config', os.path.join(run or '.', 'config.yaml')),
                 f'min_updates_per_epoch={FEW_UPDATES}', f'epochs={epochs}', *online, f'output={_beside(run)}']
        return (f'{made} at batch_size {summary["batch_size"]}): train it again with more updates an epoch, '
                f'{command(*again)}{store}')
    epochs = max(2 * summary['epochs'], -(-ENOUGH_UPDATES // steps))
    return f'{made}): train it longer, {command(*resume, f"epochs={epochs}", *online)}{store}'
