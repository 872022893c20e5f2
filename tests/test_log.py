"""Progress and warnings go through logging (log.py): the command line's output as before,
rank 0 alone under torchrun, and a program's own logging configuration respected."""
import logging

import pytest

from stdistill.config import load_config
from stdistill.utils.log import ALL_RANKS, setup_logging
from stdistill.training.train import train
from test_train import TINY


@pytest.fixture
def unconfigured(monkeypatch):
    """Logging as a new Python process has it: no handler on 'stdistill' (the tests' console
    handler set aside); restored afterwards. The tests set the root's handlers aside themselves
    (no_root_handlers): pytest adds its own to the root logger after the fixtures."""
    logger = logging.getLogger('stdistill')
    monkeypatch.setattr(logger, 'handlers', [])
    monkeypatch.setattr(logger, 'level', logging.NOTSET)
    monkeypatch.setattr(logger, 'propagate', True)
    return logger


def no_root_handlers(monkeypatch, *handlers):
    monkeypatch.setattr(logging.getLogger(), 'handlers', list(handlers))


def test_console_output_as_printed(unconfigured, capsys, monkeypatch):
    no_root_handlers(monkeypatch)
    monkeypatch.delenv('RANK', raising=False)
    setup_logging()
    setup_logging()  # once: a second call adds no second handler (no line written twice)
    assert len(unconfigured.handlers) == 1
    logging.getLogger('stdistill.training.train').info('epoch 1/2: loss 0.5')
    logging.getLogger('stdistill.data.loaders').warning('skipping unreadable image a.png (truncated)')
    out, err = capsys.readouterr()
    assert out == 'epoch 1/2: loss 0.5\n'
    assert err == 'stdistill: warning: skipping unreadable image a.png (truncated)\n'


def test_rank_zero_alone(unconfigured, capsys, monkeypatch):
    no_root_handlers(monkeypatch)
    monkeypatch.setenv('RANK', '1')
    setup_logging()
    logger = logging.getLogger('stdistill.training.train')
    logger.info('epoch 1/2: loss 0.5')
    logger.warning('said by rank 0 alone')
    logger.warning('an image of this rank\'s shard', extra=ALL_RANKS)
    out, err = capsys.readouterr()
    assert out == ''
    assert err == 'stdistill: warning: an image of this rank\'s shard\n'


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_programs_root_logging_gets_the_records(unconfigured, capsys, tmp_path, monkeypatch):
    """As timm's train.py configures logging (setup_default_logging: a root handler at INFO):
    a run's lines reach it, once, and stdistill prints nothing of its own."""
    root = Keep()
    no_root_handlers(monkeypatch, root)
    logging.getLogger().setLevel(logging.INFO)
    try:
        train(load_config(None, [*TINY, 'epochs=1', f'output={tmp_path / "run"}']))
    finally:
        logging.getLogger().setLevel(logging.WARNING)
    epochs = [m for m in root.messages if m.startswith('epoch 1/1: ')]
    assert len(epochs) == 1
    assert unconfigured.handlers == []  # no console handler added beside the program's
    assert 'epoch 1/1' not in capsys.readouterr().out


def test_own_handler_on_the_stdistill_logger(unconfigured, capsys, monkeypatch):
    no_root_handlers(monkeypatch)
    mine = Keep()
    unconfigured.addHandler(mine)
    unconfigured.setLevel(logging.INFO)
    setup_logging()
    logging.getLogger('stdistill.training.train').info('epoch 1/2: loss 0.5')
    assert mine.messages == ['epoch 1/2: loss 0.5']
    assert capsys.readouterr().out == ''


def test_the_command_line_installs_its_console_anyway(unconfigured, capsys, monkeypatch):
    no_root_handlers(monkeypatch, Keep())  # e.g. a root handler the environment set up
    setup_logging(force=True)
    logging.getLogger('stdistill.apps.cli').info('done: 1/1 epochs')
    assert capsys.readouterr().out == 'done: 1/1 epochs\n'
    assert logging.getLogger().handlers[0].messages == []  # not printed twice
