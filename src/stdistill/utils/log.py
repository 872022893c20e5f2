"""Progress, results and warnings through `logging`, as timm's train.py reports them.

Modules log to `logging.getLogger(__name__)`, children of the 'stdistill' logger.

- The command line installs a console handler that keeps its output as it was: info lines on
  stdout, warnings on stderr as 'stdistill: warning: ...', each written through tqdm so that a
  progress bar is not torn. Under torchrun only rank 0 writes (environment RANK), except
  records logged with `extra=ALL_RANKS` (what one process alone sees, such as an unreadable
  image of its own shard).
- From Python, `train()`, `teacher_pass()` and `run_quickstart()` install the same handler only
  when logging is not configured at all (no handler on the 'stdistill' logger or the root
  logger). A program that configured logging first (`logging.basicConfig(level=logging.INFO)`,
  timm's `setup_default_logging()`, or a handler of its own on `logging.getLogger('stdistill')`,
  with `setLevel(logging.INFO)` for the progress lines) gets every record through its own
  configuration, from every rank.
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


def setup_logging(level: int = logging.INFO, force: bool = False) -> logging.Logger:
    """Install the console handler on the 'stdistill' logger, once. force=True (the command
    line): whatever else is configured, and the records then stay off the root logger (no line
    twice). Otherwise only when logging is not configured at all: a program's own configuration
    (a root handler, or a handler on the 'stdistill' logger) is left as it is. Returns the logger."""
    logger = logging.getLogger('stdistill')
    if any(isinstance(h, _Console) for h in logger.handlers):
        return logger
    if force or not (logger.handlers or logging.getLogger().handlers):
        handler = _Console()
        handler.setFormatter(logging.Formatter('%(message)s'))
        handler.addFilter(_RankZero())
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return logger
