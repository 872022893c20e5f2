"""Writing to disk: whole files only, and one line when the disk says no.

A full disk (or quota), a read-only mount or a folder without write permission is not a bug:
the user frees space or picks another folder and runs the command again. `writing` turns such
a failure, from Python's own files or from safetensors (which reports it as a SafetensorError
carrying the OS error code), into a WriteRefused (a UserError) naming the folder; every other error keeps its
traceback. `write_atomic` writes a file through a temporary one renamed over it, so that a
failure leaves the old file or none, never half of one.
"""
from __future__ import annotations

import errno
import json
import os
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TextIO

from .errors import UserError

__all__ = ['WriteRefused', 'write_failure', 'write_refusal', 'writing', 'write_atomic', 'write_json', 'save_figure']

# what the disk or its permissions refuse, as opposed to a bug, and what the user does about it
FIXES = {errno.ENOSPC: 'free space there', errno.EDQUOT: 'free space there', errno.EFBIG: 'free space there',
         errno.EROFS: 'make it writable', errno.EACCES: 'make it writable', errno.EPERM: 'make it writable'}
REFUSED_WRITES = tuple(FIXES)


class WriteRefused(UserError):
    """A write the disk refused (full, over quota, read-only, not permitted): one line, exit 2."""


def _errno(e: BaseException) -> Optional[int]:
    """OSError's errno, or the `os error N` (or `code: N`) in safetensors' errors."""
    if isinstance(e, OSError):
        return e.errno
    found = re.search(r'\b(?:code: |os error )(\d+)', str(e)) if type(e).__name__ == 'SafetensorError' else None
    return int(found.group(1)) if found else None


def write_failure(e: BaseException) -> Optional[str]:
    """The OS's reason ('No space left on device') when `e` is a refused write (REFUSED_WRITES),
    else None."""
    code = _errno(e)
    return os.strerror(code) if code in REFUSED_WRITES else None


def write_refusal(what: str, folder: str, e: BaseException, then: str = '', where: str = '') -> UserError:
    """The one line for a write of `what` into `folder` that failed with `e`, and what to do:
    'cannot write the run runs/x: No space left on device (runs): free space there, or choose
    another folder, and run the command again'. A WriteRefused for a refused write (write_failure);
    a plain UserError for another OSError (a name the file system refuses, say). `where`: the path
    that failed, when it is not `folder`."""
    code, refused = _errno(e), write_failure(e)
    reason = refused or getattr(e, 'strerror', None) or str(e).split('\n')[0]
    fix = f'{FIXES[code]}, or choose another folder' if refused else 'choose another folder'
    kind = WriteRefused if refused else UserError
    return kind(f'cannot write {what} {folder}: {reason}{f" ({where})" if where else ""}: {fix}'
                f'{f", and {then}" if then else ""}')


@contextmanager
def writing(folder: str, what: str, then: str = 'run the command again') -> Iterator[None]:
    """Run a block that writes `what` into `folder`; a refused write (write_failure) becomes a
    WriteRefused (write_refusal): 'cannot write WHAT FOLDER: No space left on device: free space
    there, or choose another folder, and THEN'. The block is expected to remove its own partial
    files (write_atomic and checkpoint.save_checkpoint do)."""
    try:
        yield
    except WriteRefused:
        raise
    except Exception as e:
        if write_failure(e) is None:
            raise
        raise write_refusal(what, folder, e, then) from None


def write_atomic(path: str, write: Callable[[TextIO], None]) -> None:
    """Create or replace the text file `path` with what `write(file)` writes, whole or not at all."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, doc: Any, sort_keys: bool = False) -> None:
    """write_atomic of `doc` as JSON (indent 1, a final newline)."""
    write_atomic(path, lambda f: f.write(json.dumps(doc, indent=1, sort_keys=sort_keys) + '\n'))


def save_figure(fig, path: str, **kwargs) -> None:
    """matplotlib's fig.savefig(path), whole or not at all."""
    root, ext = os.path.splitext(path)
    tmp = f'{root}.tmp{os.getpid()}{ext}'  # savefig reads the format from the extension
    try:
        fig.savefig(tmp, **kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
