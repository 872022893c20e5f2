"""Commands and code lines printed for the user to run.

Every one goes through `command` (a shell command) or `code` (a line of Python), which put it in
backticks, quoted so that it runs as printed whatever the paths hold. tests/test_hints.py runs
every backticked hint the command line prints, exactly as printed, and checks what it promises.
"""
from __future__ import annotations

import shlex

__all__ = ['command', 'code', 'option', 'positionals', 'train_longer']


def command(*words: object) -> str:
    """A shell command for the user, as printed: '`stdistill train --resume runs/x epochs=30`'."""
    return '`' + shlex.join(str(w) for w in words) + '`'


def code(line: str) -> str:
    """A line of Python for the user, as printed: '`import stdistill`'."""
    return f'`{line}`'


# updates a run at chance is told to reach: a few hundred train any of the recipes' models past chance
ENOUGH_UPDATES = 300


def option(name: str, value: str) -> list:
    """An option and its value, as argparse reads them whatever the value starts with ('-x': --name=-x)."""
    return [f'{name}={value}'] if value.startswith('-') else [name, value]


def positionals(*values: str) -> list:
    """Positional arguments, after '--' when one starts with '-' (argparse would take it for an option)."""
    return ['--', *values] if any(v.startswith('-') for v in values) else list(values)


def train_longer(run: str, summary: dict) -> str:
    """What to do about a run at chance, from its summary.json: finish it when it stopped early, else
    its update count and the command that continues it to at least ENOUGH_UPDATES updates (twice its
    epochs at the least)."""
    resume = ['stdistill', 'train', *option('--resume', run or '.')]
    if summary['epochs_done'] < summary['epochs']:
        return f'It has done {summary["epochs_done"]} of its {summary["epochs"]} epochs: finish it, {command(*resume)}'
    steps = max(1, summary['num_updates'] // max(1, summary['epochs_done']))
    epochs = max(2 * summary['epochs'], -(-ENOUGH_UPDATES // steps))
    lower = ', or again with a lower batch_size' if summary.get('batch_size', 3) > 2 else ''  # 2: BatchNorm, MINE
    # a teacher-output store covers the epochs it was made for: the added ones run the teachers online
    online = ['teacher_outputs=null'] if summary.get('teacher_outputs') else []
    return (f'It made {summary["num_updates"]} updates ({steps} an epoch): train it longer, '
            f'{command(*resume, f"epochs={epochs}", *online)}'
            + (' (its teacher store covers only the epochs it was made for)' if online else '') + lower)
