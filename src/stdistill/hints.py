"""Commands and code lines printed for the user to run.

Every one goes through `command` (a shell command) or `code` (a line of Python), which put it in
backticks, quoted so that it runs as printed whatever the paths hold. tests/test_hints.py runs
every backticked hint the command line prints, exactly as printed, and checks what it promises.
"""
from __future__ import annotations

import shlex

__all__ = ['command', 'code']


def command(*words: object) -> str:
    """A shell command for the user, as printed: '`stdistill train --resume runs/x epochs=30`'."""
    return '`' + shlex.join(str(w) for w in words) + '`'


def code(line: str) -> str:
    """A line of Python for the user, as printed: '`import stdistill`'."""
    return f'`{line}`'
