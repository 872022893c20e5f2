"""Commands as a user types them, for the tests that run what the command line prints.

`run(command, cwd)` runs a `stdistill ...` command line in this process: the words bash would
pass (shlex), `stdistill.apps.cli.main` on them, in `cwd`, with stdout and stderr captured and the
exit status the console script would return. A process of its own would pay the import of torch
and timm (seconds) for every command of a flow that runs dozens. Anything else (`python3 ...`,
`apt-get ...`, a command with pipes, redirections or what bash expands) runs in bash. tests/test_errors.py and tests/test_bad_input.py run the console script itself.
"""
from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from typing import Optional

from stdistill.apps.cli import main

# the PATH a test's shell commands see: this interpreter's scripts (the installed `stdistill`) first
ENV = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
OPERATORS = set('|&;<>()')
EXPANDED = set('$`*?~')  # what bash would expand: left to bash


def _in_process(command: str) -> Optional[list]:
    """The arguments after `stdistill` when `command` is a plain stdistill command line, else None."""
    if set(command) & EXPANDED:
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)  # bash's words; operators apart
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an unclosed quote: bash's to report
        return None
    plain = all(not set(w) <= OPERATORS for w in words)  # no operator: |, &&, >, ...
    return words[1:] if words and words[0] == 'stdistill' and plain else None


def run(command: str, cwd, timeout: float = 900) -> subprocess.CompletedProcess:
    """`command` as bash would run it in `cwd`: returncode, stdout, stderr (text)."""
    argv = _in_process(command)
    if argv is None:
        return subprocess.run(['bash', '-c', command], cwd=cwd, env=ENV, capture_output=True, text=True,
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
