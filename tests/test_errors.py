"""Bad input is one line and exit 2; a bug keeps its traceback and another exit status.

`cli.main` turns only `stdistill.utils.errors.UserError` into one line. A `ValueError` raised by a
bug, ours or a library's, in the training step, in a library call the step makes, or in a
data-loader worker, must reach the user whole so that it can be reported.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from stdistill.apps.cli import main
from stdistill.utils.errors import UserError
from test_train import TINY

# (id, the code that plants the bug, what the traceback must pass through)
INJECTIONS = [
    ('our-step', 'import stdistill.method.task as m\n'
                 'def broken(self, *a, **k): raise ValueError("injected bug")\n'
                 'm.STDTask.forward = broken', 'train_step'),
    ('library-call', 'import stdistill.training.engine as m\n'
                     'def broken(*a, **k): raise ValueError("injected bug")\n'
                     'm.dispatch_clip_grad = broken', 'train_step'),
    ('loader-worker', 'import stdistill.data.fashion_mnist as m\n'
                      'def broken(self, i): raise ValueError("injected bug")\n'
                      'm.FashionMNIST.__getitem__ = broken', 'train_one_epoch'),
]


@pytest.mark.parametrize('plant,through', [c[1:] for c in INJECTIONS], ids=[c[0] for c in INJECTIONS])
def test_bug_keeps_its_traceback(tmp_path, plant, through):
    workers = 'workers=1' if 'FashionMNIST' in plant else 'workers=0'
    argv = ['train', *TINY, workers, 'epochs=1', 'clip_grad=1.0', f'output={tmp_path / "run"}']
    script = textwrap.dedent(f'''
        import sys
        {plant.replace(chr(10), chr(10) + "        ")}
        from stdistill.apps.cli import main
        sys.exit(main({argv!r}))
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode not in (0, 2), result.stderr
    assert 'Traceback (most recent call last)' in result.stderr
    assert 'ValueError: injected bug' in result.stderr
    assert through in result.stderr  # the frames of the step are there to report
    assert 'stdistill: error:' not in result.stderr


def test_bug_in_process_is_raised_not_printed(tmp_path, capsys):
    """In Python, cli.main lets the bug's ValueError out (not a UserError), and prints nothing."""
    import stdistill.method.task as task_module

    def broken(self, *args, **kwargs):
        raise ValueError('injected bug')

    original = task_module.STDTask.forward
    task_module.STDTask.forward = broken
    try:
        with pytest.raises(ValueError, match='injected bug') as info:
            main(['train', *TINY, 'epochs=1', f'output={tmp_path / "run"}'])
    finally:
        task_module.STDTask.forward = original
    assert not isinstance(info.value, UserError)
    assert 'stdistill: error:' not in capsys.readouterr().err


def test_bad_input_in_a_step_is_one_line(tmp_path, capsys):
    """The sibling: a UserError raised inside the step (a loss that is not finite) is still one line, exit 2."""
    assert main(['train', *TINY, 'epochs=1', 'lr=1e30', 'warmup_epochs=0', 'model_ema=false',
                 f'output={tmp_path / "run"}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert 'Traceback' not in '\n'.join(err)
    assert len(err) == 1 and err[0].startswith('stdistill: error: ') and 'non-finite loss' in err[0], err


def test_user_error_is_a_value_error():
    """Python callers who catch ValueError around stdistill keep catching bad input."""
    assert issubclass(UserError, ValueError)


def test_an_interrupted_run_prints_the_command_that_continues_it(tmp_path, capsys, monkeypatch):
    """Ctrl-C during a run: one line with the resume command, which, run as printed, finishes
    the run from its last finished epoch."""
    import re
    import shlex

    import stdistill.training.train as train_module

    calls = []
    original = train_module.train_one_epoch

    def interrupted_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, 'train_one_epoch', interrupted_in_the_second_epoch)
    run = tmp_path / 'run'
    assert main(['train', *TINY, f'output={run}']) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('stdistill: interrupted; continue from its last finished epoch with `')
    printed = re.search(r'`([^`]+)`', err[0]).group(1)
    monkeypatch.setattr(train_module, 'train_one_epoch', original)
    assert shlex.split(printed)[:3] == ['stdistill', 'train', '--resume']
    done = subprocess.run(printed, shell=True, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))  # as printed, in a shell
    assert done.returncode == 0, done.stderr
    assert len((run / 'log.jsonl').read_text().splitlines()) == 2
