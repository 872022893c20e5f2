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
import os
import re
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TextIO

from .errors import UserError

__all__ = ['WriteRefused', 'write_failure', 'writing', 'write_atomic', 'save_figure']

# what the disk or its permissions refuse, as opposed to a bug
REFUSED_WRITES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


class WriteRefused(UserError):
    """A write the disk refused (full, over quota, read-only, not permitted): one line, exit 2."""


def write_failure(e: BaseException) -> Optional[str]:
    """The OS's reason ('No space left on device') when `e` is a refused write (REFUSED_WRITES),
    else None. Reads OSError's errno, and the `os error N` (or `code: N`) in safetensors' errors."""
    if isinstance(e, OSError):
        code = e.errno
    else:
        found = re.search(r'\b(?:code: |os error )(\d+)', str(e)) if type(e).__name__ == 'SafetensorError' else None
        code = int(found.group(1)) if found else None
    return os.strerror(code) if code in REFUSED_WRITES else None


@contextmanager
def writing(folder: str, what: str, then: str = 'run the command again') -> Iterator[None]:
    """Run a block that writes `what` into `folder`; a refused write (write_failure) becomes a
    WriteRefused: 'cannot write WHAT to FOLDER: No space left on device: free space there (or
    make it writable), or choose another folder, and THEN'. The block is expected to remove its
    own partial files (write_atomic and checkpoint.save_checkpoint do)."""
    try:
        yield
    except WriteRefused:
        raise
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        raise WriteRefused(f'cannot write {what} to {folder}: {reason}: free space there (or make it writable), or '
                           f'choose another folder, and {then}') from None


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
