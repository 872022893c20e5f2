"""Progress, results and warnings through `logging`, as timm's train.py reports them.

Modules log to `logging.getLogger(__name__)` (children of the 'stdistill' logger). The
console handler that `setup_logging` installs keeps the command line's output as it was:
info lines on stdout as they are, warnings on stderr as 'stdistill: warning: ...', each
written through tqdm so that a progress bar is not torn. Under torchrun only rank 0 writes
(environment RANK), except records logged with `extra=ALL_RANKS` (what one process alone sees,
such as an unreadable image of its own shard).

A program that wants its own handling adds a handler to `logging.getLogger('stdistill')`
before calling stdistill: `setup_logging` then leaves the logger alone.
"""
from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

__all__ = ['ALL_RANKS', 'setup_logging', 'is_rank_zero']

ALL_RANKS = {'all_ranks': True}  # logger.warning(..., extra=ALL_RANKS): written by every process
_PREFIX = {logging.WARNING: 'stdistill: warning: ', logging.ERROR: 'stdistill: error: ',
           logging.CRITICAL: 'stdistill: error: '}


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of a torchrun job, or not under torchrun at all."""
    return int(os.environ.get('RANK', '0') or 0) == 0


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_rank_zero() or getattr(record, 'all_ranks', False)


class _Console(logging.Handler):
    """Info to stdout, warnings and errors to stderr with their prefix; the streams are looked up
    when a record is written, so that a redirected (or captured) sys.stdout is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            prefix = _PREFIX.get(record.levelno, '')
            tqdm.write(prefix + self.format(record), file=stream)
            stream.flush()
        except Exception:  # logging's own convention: a failing handler reports, never raises
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Install the console handler on the 'stdistill' logger, once; a logger that already has a
    handler (the program's own, or this one) is left as it is. Returns the logger."""
    logger = logging.getLogger('stdistill')
    if not logger.handlers:
        handler = _Console()
        handler.setFormatter(logging.Formatter('%(message)s'))
        handler.addFilter(_RankZero())
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # a root handler (logging.basicConfig) would print every line twice
    return logger
