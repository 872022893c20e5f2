"""Commands as a user types them, for the tests that run what the command line prints.

`run(command, cwd)` runs a `stdistill ...` command line in this process: the words bash would
pass (shlex), `stdistill.apps.cli.main` on them, in `cwd`, with stdout and stderr captured and the
exit status the console script would return. A process of its own would pay the import of torch
and timm (seconds) for every command of a flow that runs dozens. Anything else (`python3 ...`,
`apt-get ...`, a command with pipes or redirections), and any command when `subprocess=True`,
runs in bash. tests/test_errors.py and tests/test_bad_input.py run the console script itself.
"""
from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from typing import Mapping, Optional

from stdistill.apps.cli import main

# the PATH a test's shell commands see: this interpreter's scripts (the installed `stdistill`) first
ENV = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
OPERATORS = set('|&;<>()')
EXPANDED = set('$`*?~')  # what bash would expand: left to bash


def _in_process(command: str) -> Optional[list]:
    """The arguments after `stdistill` when `command` is a plain stdistill command line, else None."""
    if set(command) & EXPANDED:
        return None
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    plain = all(not set(t) <= OPERATORS for t in tokens)  # no operator: |, &&, >, ...
    return words[1:] if words and words[0] == 'stdistill' and plain else None


def run(command: str, cwd, timeout: float = 900, env: Optional[Mapping[str, str]] = None,
        subprocess_: bool = False) -> subprocess.CompletedProcess:
    """`command` as bash would run it in `cwd`: returncode, stdout, stderr (text)."""
    argv = None if subprocess_ or env is not None else _in_process(command)
    if argv is None:
        return subprocess.run(['bash', '-c', command], cwd=cwd, env=dict(env or ENV), capture_output=True, text=True,
                              timeout=timeout)
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: --help, a usage error
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # what the console script would die of: its traceback, exit 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())
