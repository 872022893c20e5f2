"""One live process per output folder: a run, a teacher store, an export, a quickstart.

Two `stdistill train` processes given the same `output` would both pass the "already holds a
run" check and overwrite each other's checkpoints, each reporting its own numbers for the
other's model. So every command that writes a folder first claims it:

    with lock_folder('runs/std', 'train'):
        ...   # nobody else writes runs/std meanwhile

The claim is a POSIX record lock (`fcntl.lockf`) on a small file beside the folder
(`runs/.std.lock`, holding who claimed it, for the refusal message). The kernel drops the
lock when its process ends, however it ends: a killed run's claim never blocks the next run
(its file, left behind, is taken over). Beside rather than inside, so that a folder written by
a final rename (an export) can be claimed before it exists. POSIX locks are per process and
not inherited by forked children, so a data-loader worker that outlives a killed parent does
not keep the claim. They work across the hosts of an NFS mount that runs a lock manager.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, List, Optional, Set

from .disk import write_refusal
from .errors import UserError


if TYPE_CHECKING:
    from .distributed import DistInfo

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; folders are not claimed there
    fcntl = None

__all__ = ['FolderLock', 'check_folder', 'lock_folder', 'lock_folder_on_main', 'lock_path']

_HELD: Set[str] = set()  # folders this process holds: POSIX locks do not exclude their own process


def lock_path(folder: str) -> str:
    """The lock file of `folder`: `.NAME.lock` in its parent (both resolved through symlinks, so
    two spellings of one folder share one lock)."""
    folder = os.path.realpath(folder)
    return os.path.join(os.path.dirname(folder), f'.{os.path.basename(folder)}.lock')


class FolderLock:
    """A held claim on a folder; `release()` (or leaving the `with` block) gives it back."""

    def __init__(self, folder: str, path: str, fd: Optional[int], made: List[str]) -> None:
        self.folder, self.path, self._fd, self._made = folder, path, fd, made

    def release(self) -> None:
        """Remove the lock file, then drop the lock; also the parent folders the claim made, when
        nothing was written there (a refused or failed command leaves no empty folders)."""
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self._fd)  # closing the file drops the process's lock on it
            self._fd = None
            _HELD.discard(self.path)
        for made in reversed(self._made):
            try:
                os.rmdir(made)
            except OSError:  # not empty (the command wrote there), or gone
                break
        self._made = []

    def __enter__(self) -> 'FolderLock':
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> Optional[dict]:
    """What the lock file says of the process that holds it; None when it says nothing readable."""
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode())
        return doc if isinstance(doc, dict) and {'pid', 'host', 'since', 'command'} <= set(doc) else None
    except (OSError, ValueError):
        return None


def _describe(doc: Optional[dict]) -> str:
    """'pid 123 on HOST, since 2026-12-07 00:41: stdistill train ...'"""
    if doc is None:
        return 'its lock file names no process'
    try:
        since = time.strftime('%Y-%m-%d %H:%M', time.localtime(float(doc['since'])))
    except (TypeError, ValueError, OverflowError):
        since = '?'
    return f'pid {doc["pid"]} on {doc["host"]}, since {since}: {doc["command"]}'


def _ended(doc: Optional[dict]) -> bool:
    """Whether the lock file names a process of this host that no longer exists: its lock is
    being released with it."""
    if doc is None or doc.get('host') != socket.gethostname() or not isinstance(doc.get('pid'), int):
        return False
    try:
        os.kill(doc['pid'], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _refused(what: str, folder: str, e: OSError) -> UserError:
    """disk.write_refusal, naming where the lock's write failed when that is not `folder`."""
    failed = e.filename if e.filename and not str(e.filename).endswith('.lock') else os.path.dirname(lock_path(folder))
    return write_refusal(what, folder, e, where=failed if os.path.abspath(failed) != os.path.abspath(folder) else '')


def check_folder(folder: str, what: str) -> None:
    """Refuse, in one line, a folder that cannot be made: no name, a name with a line break (no one
    line could name it), one of its parts a file, or a link to nothing (os.makedirs would fail on
    either, after the command had done its work)."""
    if not str(folder).strip():
        raise UserError(f'{what}: the folder is empty: give a folder')
    if '\n' in str(folder) or '\r' in str(folder):
        raise UserError(f'cannot write {what} {str(folder)!r}: its name holds a line break: choose another folder')
    path = os.path.abspath(folder)
    while True:
        if os.path.islink(path) and not os.path.exists(path):
            raise UserError(f'cannot write {what} {folder}: {path} is a link to {os.readlink(path)}, which does not '
                            f'exist: create it, or choose another folder')
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise UserError(f'cannot write {what} {folder}: {path} is a file, not a folder: choose another folder')
            return
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _shorter(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _make_parents(folder: str) -> List[str]:
    """Create the missing parents of `folder` (not the folder itself); return those created,
    outermost first."""
    missing, parent = [], os.path.dirname(os.path.abspath(folder))
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ''
    made = []
    for path in reversed(missing):
        os.mkdir(path)
        made.append(path)
    return made


def lock_folder(folder: str, what: str, wait: float = 10.0) -> FolderLock:
    """Claim `folder` (it need not exist yet) for this process, to write `what` ('the run',
    'the export') there.

    Raises UserError, one line, when another live process holds it (naming that process),
    and when its parent folder cannot be written (a read-only or full disk). A lock left by a
    process that has just ended is waited for up to `wait` seconds (the kernel releases it
    with the process's last thread)."""
    check_folder(folder, what)
    path = lock_path(folder)
    if path in _HELD:
        raise UserError(f'{folder} is already being written by this process: choose another folder')
    if os.path.isdir(path):
        raise UserError(f'{path} is a folder where the lock file of {folder} goes: remove it')
    try:
        made = _make_parents(path)
    except OSError as e:
        raise _refused(what, folder, e) from None
    if fcntl is None:
        return FolderLock(folder, path, None, made)
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            FolderLock(folder, path, None, made).release()
            raise _refused(what, folder, e) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another process
            holder = _holder(fd)
            os.close(fd)
            if time.monotonic() < deadline and _ended(holder):
                time.sleep(0.2)
                continue
            raise UserError(f'{folder} is in use by another stdistill process ({_describe(holder)}): wait for it '
                            f'to end, or choose another folder') from None
        try:  # the lock file may have been removed (released) between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    doc = {'pid': os.getpid(), 'host': socket.gethostname(), 'since': time.time(), 'what': what,
           'command': _shorter(' '.join(['stdistill', *sys.argv[1:]]))}
    _HELD.add(path)
    claim = FolderLock(folder, path, fd, made)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(doc).encode(), 0)
    except OSError as e:  # a full disk: the command could not write its folder either
        claim.release()
        raise _refused(what, folder, e) from None
    return claim


def lock_folder_on_main(folder: str, what: str, info: 'DistInfo') -> FolderLock:
    """lock_folder by rank 0 of a torchrun job (the process that writes the folder); every
    process raises its refusal, so that none waits on the others in a collective."""
    from .distributed import gather_objects
    claim, refusal = FolderLock(folder, lock_path(folder), None, []), None
    if info.is_main:
        try:
            claim = lock_folder(folder, what)
        except UserError as e:
            refusal = str(e)
    refusal = gather_objects(refusal, info)[0]
    if refusal:
        raise UserError(refusal)
    return claim
