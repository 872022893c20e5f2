"""Progress and warnings go through logging (log.py): the command line's output as before,
rank 0 alone under torchrun, and a program's own handler respected."""
import logging

import pytest

from stdistill.log import ALL_RANKS, setup_logging


@pytest.fixture
def fresh_logger():
    """The 'stdistill' logger without handlers (as in a new process), restored afterwards."""
    logger = logging.getLogger('stdistill')
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = []
    yield logger
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_console_output_as_printed(fresh_logger, capsys, monkeypatch):
    monkeypatch.delenv('RANK', raising=False)
    setup_logging()
    setup_logging()  # once: a second call adds no second handler (no line written twice)
    logging.getLogger('stdistill.train').info('epoch 1/2: loss 0.5')
    logging.getLogger('stdistill.loaders').warning('skipping unreadable image a.png (truncated)')
    out, err = capsys.readouterr()
    assert out == 'epoch 1/2: loss 0.5\n'
    assert err == 'stdistill: warning: skipping unreadable image a.png (truncated)\n'


def test_rank_zero_alone(fresh_logger, capsys, monkeypatch):
    monkeypatch.setenv('RANK', '1')
    setup_logging()
    logger = logging.getLogger('stdistill.train')
    logger.info('epoch 1/2: loss 0.5')
    logger.warning('said by rank 0 alone')
    logger.warning('an image of this rank\'s shard', extra=ALL_RANKS)
    out, err = capsys.readouterr()
    assert out == ''
    assert err == 'stdistill: warning: an image of this rank\'s shard\n'


def test_own_handler_left_alone(fresh_logger, capsys):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    fresh_logger.addHandler(Keep())
    fresh_logger.setLevel(logging.INFO)
    setup_logging()
    logging.getLogger('stdistill.train').info('epoch 1/2: loss 0.5')
    assert records == ['epoch 1/2: loss 0.5']
    assert capsys.readouterr().out == ''
