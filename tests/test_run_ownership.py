"""Every run owns its folder, and the model scored is the model trained (issue 28).

Through the command line on real images: scikit-learn's digits as a PNG folder
(examples/make_digits_folder.py) with the recipes in recipes/folder/.

- one live process per folder: train, resume, teacher-pass, export and quickstart refuse a
  folder another process is writing, and a killed process's claim does not block the next;
- a trained student is rebuilt from what its checkpoint records (eval, export, predict, a
  student as a teacher, resume), and a config that would build another one is refused;
- a resumed run reads the teacher files and class map it started with, byte for byte;
- a full or read-only disk is one line naming the folder, and leaves no partial file or folder.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import shell
from stdistill.apps.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R = os.path.join(ROOT, 'recipes', 'folder')
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.path.join(ROOT, 'src'))


def F(digits):
    """The issue's settings: the digits folder, small and quick."""
    return [f'data_dir={digits}', 'hflip=0', 'batch_size=16', 'train_samples=320', 'val_samples=200', 'workers=0',
            'progress=false']


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'stdistill', *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV, cwd=cwd)


def refused(code, err, *words):
    """Exit status 2 and one line naming what to fix (after any warnings, e.g. of a teacher at chance)."""
    lines = err.strip().splitlines()
    assert code == 2 and 'Traceback' not in err and lines[-1].startswith('stdistill: error: '), err
    assert all(line.startswith('stdistill: warning: ') for line in lines[:-1]), err
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


def run_main(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp('data') / 'digits'
    subprocess.run([sys.executable, os.path.join(ROOT, 'examples', 'make_digits_folder.py'), str(root)], check=True,
                   capture_output=True)
    return root


def trained(run, digits, recipe, *extra):
    """A finished 1-epoch run of recipes/folder/RECIPE.yaml on the digits, in the folder `run`."""
    assert main(['train', '--config', f'{R}/{recipe}.yaml', *F(digits), 'epochs=1', f'output={run}', *extra]) == 0
    return run


@pytest.fixture(scope='module')
def std_run(digits, tmp_path_factory):
    """The issue's STD run: the labels teacher's token pair reads block -3 (block 3 of 6)."""
    return trained(tmp_path_factory.mktemp('runs') / 'q', digits, 'std',
                   'teachers=[{model: labels, token_position: -3}]')


@pytest.fixture(scope='module')
def teacher_run(digits, tmp_path_factory):
    return trained(tmp_path_factory.mktemp('runs') / 'teacher', digits, 'teacher')


def writer_argv(command, folder, digits, std_run, teacher_run):
    """The command line of each command that writes a folder, writing `folder`."""
    return {
        'train': ['train', '--config', f'{R}/plain.yaml', *F(digits), 'epochs=1', f'output={folder}'],
        'teacher-pass': ['teacher-pass', '--config', f'{R}/std.yaml', *F(digits), 'epochs=1', '--output', folder,
                         f'teachers.0.checkpoint={teacher_run}/best/model.safetensors'],
        'export': ['export', std_run, folder],
        'quickstart': ['quickstart', '--small', '--output', folder],
    }[command]


# ---- one live process per folder ----------------------------------------------------------

def test_two_trains_into_one_folder_one_is_refused_and_the_other_reports_its_own_model(digits, tmp_path, capsys):
    run = tmp_path / 'sh'
    argv = [sys.executable, '-m', 'stdistill', 'train', '--config', f'{R}/plain.yaml', *F(digits), 'epochs=2',
            f'output={run}']
    first = subprocess.Popen([*argv, 'seed=0'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(0.3)
    second = subprocess.Popen([*argv, 'seed=7', 'lr=5e-4'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV)
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    winner = next(r for r in results if r[0] == 0)
    loser = next(r for r in results if r[0] == 2)
    refused(loser[0], loser[2], f'{run} is in use by another stdistill process', 'pid ', 'stdistill train')
    reported = next(line for line in winner[1].splitlines() if line.startswith('done: '))  # the head table follows
    assert reported.startswith('done: 2/2 epochs, best top-1 ')
    assert len((run / 'log.jsonl').read_text().splitlines()) == 2  # one run's epochs, not two runs'
    code, out = run_main(capsys, 'eval', run)
    assert code == 0
    top1 = reported.split('best top-1 ')[1].split()[0]
    assert f'top-1 {top1} ' in out.out, (reported, out.out)  # the survivor's number is its folder's model


HOLDER = ('import sys, time; from stdistill.utils.locks import lock_folder; lock_folder(sys.argv[1], "the test"); '
          'print("held", flush=True); time.sleep(120)')


@pytest.fixture
def held(tmp_path):
    """A live process that holds a folder's claim, as a running stdistill command does."""
    processes = []

    def hold(folder):
        p = subprocess.Popen([sys.executable, '-c', HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
        assert p.stdout.readline().strip() == 'held'
        processes.append(p)
        return p
    yield hold
    for p in processes:
        p.kill()
        p.wait()


@pytest.mark.parametrize('command', ['train', 'resume', 'teacher-pass', 'export', 'quickstart'])
def test_a_folder_another_process_writes_is_refused(command, digits, std_run, teacher_run, tmp_path, held, capsys):
    folder = {'resume': tmp_path / 'copy'}.get(command, tmp_path / 'out')
    if command == 'resume':
        shutil.copytree(std_run, folder)
    argv = ['train', '--resume', folder, 'epochs=2'] if command == 'resume' else \
        writer_argv(command, folder, digits, std_run, teacher_run)
    before = sorted(os.listdir(folder)) if folder.exists() else None
    holder = held(folder)
    code, out = run_main(capsys, *argv)
    refused(code, out.err, f'{folder} is in use by another stdistill process', f'pid {holder.pid}')
    assert (sorted(os.listdir(folder)) if folder.exists() else None) == before  # nothing written there


def test_a_killed_process_claim_does_not_block_the_next_run(digits, tmp_path):
    run = tmp_path / 'killed'
    argv = [sys.executable, '-m', 'stdistill', 'train', '--config', f'{R}/plain.yaml', *F(digits), 'epochs=3',
            f'output={run}']
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 240
    while not (run / 'last').is_dir() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (tmp_path / '.killed.lock').exists()  # the dead process's lock file is left behind ...
    done = cli('train', '--resume', run)  # ... and does not block
    assert done.returncode == 0, done.stderr
    assert any(line.startswith('done: 3/3 epochs') for line in done.stdout.splitlines())
    assert not (tmp_path / '.killed.lock').exists()


@pytest.mark.parametrize('command', ['train', 'teacher-pass', 'export', 'quickstart'])
def test_an_output_that_links_to_nothing_is_one_line_before_any_work(command, digits, std_run, teacher_run, tmp_path,
                                                                      capsys):
    link = tmp_path / 'link'
    link.symlink_to(tmp_path / 'gone' / 'deep')
    code, out = run_main(capsys, *writer_argv(command, link, digits, std_run, teacher_run))
    refused(code, out.err, f'{link} is a link to {tmp_path / "gone" / "deep"}, which does not exist')
    assert out.out == ''  # refused before it loaded any data
    assert sorted(os.listdir(tmp_path)) == ['link']


# ---- the model scored is the model trained -------------------------------------------------

def test_eval_with_the_recipe_refuses_to_move_the_tokens(digits, std_run, capsys):
    code, out = run_main(capsys, 'eval', std_run, '--config', f'{R}/std.yaml', f'data_dir={digits}', 'val_samples=200')
    refused(code, out.err, 'trained with teachers.0.token_position=3 (block index)',
            'builds teachers.0.token_position=5', '--config')
    code, out = run_main(capsys, 'eval', std_run)  # the run's own config.yaml rebuilds it as trained
    assert code == 0, out.err
    best = json.loads((std_run / 'summary.json').read_text())['best']
    assert f'top-1 {best["top1"]:.2f} ' in out.out


def _edited_run(std_run, tmp_path, **change):
    """A copy of the run whose config.yaml was edited by hand."""
    import yaml
    copy = shutil.copytree(std_run, tmp_path / 'edited')
    cfg = yaml.safe_load((copy / 'config.yaml').read_text())
    for key, value in change.items():
        if key == 'token_position':
            cfg['teachers'][0]['token_position'] = value
        else:
            cfg[key] = value
    (copy / 'config.yaml').write_text(yaml.safe_dump(cfg))
    return copy


@pytest.mark.parametrize('how', ['eval override', 'export of an edited run', 'predict of an edited run',
                                 'eval of an edited token_depth', 'resume with the recipe'])
def test_whatever_rebuilds_a_trained_student_refuses_another_architecture(how, digits, std_run, tmp_path, capsys):
    image = next((digits / 'validation' / '3').iterdir())
    make, words = {
        'eval override': (lambda: ['eval', std_run, 'teachers.0.token_position=-1'], ['teachers.0.token_position=3']),
        'export of an edited run': (lambda: ['export', _edited_run(std_run, tmp_path, token_position=1),
                                             tmp_path / 'exp'],
                                    ['teachers.0.token_position=3', 'builds teachers.0.token_position=1']),
        'predict of an edited run': (lambda: ['predict', _edited_run(std_run, tmp_path, token_position=-1), image],
                                     ['teachers.0.token_position=3']),
        'eval of an edited token_depth': (lambda: ['eval', _edited_run(std_run, tmp_path, token_depth=2)],
                                          ['trained with token_depth=1', 'builds token_depth=2']),
        'resume with the recipe': (lambda: ['train', '--resume', shutil.copytree(std_run, tmp_path / 'r'), '--config',
                                            f'{R}/std.yaml', *F(digits), 'epochs=2'], ['cannot change teachers']),
    }[how]
    argv = make()
    code, out = run_main(capsys, *argv)
    refused(code, out.err, *words)
    assert not (tmp_path / 'exp').exists()


@pytest.fixture(scope='module')
def small_run(digits, tmp_path_factory):
    """A plain student trained with model_kwargs: 2 blocks of width 32 instead of mixer_t4_32's 6 of 128."""
    return trained(tmp_path_factory.mktemp('runs') / 'small', digits, 'plain',
                   'model_kwargs={num_blocks: 2, embed_dim: 32}')


@pytest.mark.parametrize('entry, words', [
    ('{model: resmlp_t4_32, checkpoint: CKPT}', ['holds a mixer_t4_32, not a resmlp_t4_32', 'set the teacher']),
    ('{model: mixer_t4_32, checkpoint: CKPT, kwargs: {num_blocks: 3}}', ['trained with model_kwargs.num_blocks=2',
                                                                        'kwargs.num_blocks=3']),
])
def test_a_student_used_as_a_teacher_is_refused_as_another_model(entry, words, digits, small_run, tmp_path, capsys):
    checkpoint = small_run / 'best' / 'model.safetensors'
    code, out = run_main(capsys, 'train', '--config', f'{R}/std.yaml', *F(digits), 'epochs=1',
                         f'output={tmp_path / "out"}', f'teachers=[{entry.replace("CKPT", str(checkpoint))}]')
    refused(code, out.err, *words)


def test_a_student_used_as_a_teacher_is_built_with_its_recorded_model_kwargs(digits, small_run):
    """The teacher entry names the model alone: the checkpoint's model_kwargs build it, and it
    predicts what the student predicted (before, its 2-block weights did not fit 6 blocks)."""
    from stdistill.config import load_config
    from stdistill.method.teachers import create_teacher
    from stdistill.training.builders import load_student_checkpoint
    checkpoint = str(small_run / 'best' / 'model.safetensors')
    teacher = create_teacher('mixer_t4_32', 10, checkpoint=checkpoint)
    cfg = load_config(str(small_run / 'config.yaml'))
    student, _ = load_student_checkpoint(cfg, checkpoint)
    images = torch.randn(4, cfg.in_chans, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(teacher.model(images), student.eval()(images), atol=1e-6)
    assert len(teacher.model.blocks) == 2


# ---- a resumed run reads the files it started with ------------------------------------------

def _stopped_std_run(digits, tmp_path, *extra):
    run = tmp_path / 'stopped'
    assert main(['train', '--config', f'{R}/std.yaml', *F(digits), 'epochs=2', f'output={run}', '--stop-after', '1',
                 *extra]) == 0
    return run


def test_resume_refuses_a_teacher_checkpoint_replaced_in_place(digits, teacher_run, tmp_path, capsys):
    teacher = tmp_path / 'teacher.safetensors'
    shutil.copy(teacher_run / 'best' / 'model.safetensors', teacher)
    run = _stopped_std_run(digits, tmp_path, f'teachers.0.checkpoint={teacher}')
    weights = load_file(teacher)
    weights['fc.bias'] = weights['fc.bias'] + 1.0  # another teacher, same architecture, same file name
    save_file(weights, teacher)
    code, out = run_main(capsys, 'train', '--resume', run)
    refused(code, out.err, f'teachers.0.checkpoint {teacher} has changed since the run started', 'put the original back')
    assert json.loads((run / 'summary.json').read_text())['epochs_done'] == 1  # the run is kept as it was


def test_resume_says_why_when_the_teacher_is_a_run_that_trained_since(digits, tmp_path, capsys):
    """The teacher's own run, resumed to train it longer, replaces the best/ checkpoint a student reads."""
    teacher = trained(tmp_path / 'teacher', digits, 'teacher')
    run = _stopped_std_run(digits, tmp_path, f'teachers.0.checkpoint={teacher}/best/model.safetensors')
    shutil.copy(run / 'last' / 'model.safetensors', teacher / 'best' / 'model.safetensors')  # as a resume would
    code, out = run_main(capsys, 'train', '--resume', run)
    refused(code, out.err, 'has changed since the run started', f'its run {teacher} has trained since',
            'copy one elsewhere')


def test_the_printed_command_that_trains_a_store_backed_run_longer_runs_as_printed(digits, teacher_run, tmp_path):
    """A store covers the epochs it was made for: the printed command adds teacher_outputs=null."""
    import re

    from stdistill.utils.hints import train_longer
    store, run = tmp_path / 'store', tmp_path / 'from_store'
    teacher = f'teachers.0.checkpoint={teacher_run}/best/model.safetensors'
    assert main(['teacher-pass', '--config', f'{R}/std.yaml', *F(digits), 'epochs=1', '--output', str(store),
                 teacher]) == 0
    assert main(['train', '--config', f'{R}/std.yaml', *F(digits), 'epochs=1', f'output={run}', teacher,
                 f'teacher_outputs={store}']) == 0
    hint = train_longer(str(run), json.loads((run / 'summary.json').read_text()))
    printed = re.search(r'`([^`]*)`', hint).group(1)
    assert printed.endswith('teacher_outputs=null')
    done = shell.run(printed, ROOT)  # as bash passes its words, in this process
    assert done.returncode == 0, done.stderr


def test_resume_refuses_a_teacher_pretrained_file_replaced_in_place(digits, tmp_path, capsys):
    import timm
    weights = tmp_path / 'resnet10t.safetensors'
    save_file(timm.create_model('resnet10t', num_classes=10).state_dict(), weights)
    entry = f'teachers=[{{model: resnet10t, pretrained: true, kwargs: {{pretrained_cfg_overlay: {{file: {weights}}}}}}}]'
    run = _stopped_std_run(digits, tmp_path, entry)
    torch.manual_seed(1)
    save_file(timm.create_model('resnet10t', num_classes=10).state_dict(), weights)
    code, out = run_main(capsys, 'train', '--resume', run)
    refused(code, out.err, 'teachers.0.kwargs.pretrained_cfg_overlay.file', 'has changed since the run started')


def test_resume_refuses_a_class_map_edited_in_place(digits, tmp_path, capsys):
    class_map = tmp_path / 'classes.txt'
    class_map.write_text(''.join(f'{d}\n' for d in range(10)))
    run = tmp_path / 'mapped'
    assert main(['train', '--config', f'{R}/plain.yaml', *F(digits), 'epochs=2', f'output={run}',
                 f'class_map={class_map}', '--stop-after', '1']) == 0
    class_map.write_text(''.join(f'{d}\n' for d in reversed(range(10))))  # labels 0..9 now mean 9..0
    code, out = run_main(capsys, 'train', '--resume', run)
    refused(code, out.err, f'class_map {class_map} has changed since the run started')
    moved = tmp_path / 'moved.txt'  # a class_map may move: then the classes it names are compared
    moved.write_text(class_map.read_text())
    code, out = run_main(capsys, 'train', '--resume', run, f'class_map={moved}')
    refused(code, out.err, 'names the run\'s classes in another order', "label 0 is now '9'")
    class_map.write_text(''.join(f'{d}\n' for d in range(10)))  # put back: the run continues
    code, out = run_main(capsys, 'train', '--resume', run)
    assert code == 0, out.err


# ---- a full or read-only disk ---------------------------------------------------------------

class SmallDisk:
    """A tmpfs of its own (CI runs as root): filled up, or remounted read-only, at will."""

    def __init__(self, path):
        self.path = path

    def fill(self, leave=64 * 1024):
        """Fill the disk until `leave` bytes are free."""
        st = os.statvfs(self.path)
        with open(self.path / 'filler', 'wb') as f:
            f.write(b'\0' * (st.f_bavail * st.f_frsize - leave))

    def free(self):
        os.remove(self.path / 'filler')

    def read_only(self):
        subprocess.run(['mount', '-o', 'remount,ro', str(self.path)], check=True)

    def entries(self):
        return sorted(n for n in os.listdir(self.path) if n != 'filler')


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / 'disk'
    path.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=96m', 'tmpfs', str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:  # no fallback: these cases are the must-show
        pytest.fail(f'the full-disk tests mount a tmpfs and need root: {mounted.stderr.strip()}')
    yield SmallDisk(path)
    subprocess.run(['umount', '-l', str(path)], check=False)


def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_leaves_no_run(digits, disk, capsys):
    run = disk.path / 'run'
    argv = ['train', '--config', f'{R}/plain.yaml', *F(digits), 'epochs=1', f'output={run}']
    disk.fill()
    code, out = run_main(capsys, *argv)
    refused(code, out.err, f'cannot write the run {run}: No space left on device', 'run the command again')
    assert disk.entries() == []  # no run folder, checkpoint, temporary folder or lock file
    disk.free()
    code, out = run_main(capsys, *argv)  # after freeing space, the same command trains
    assert code == 0, out.err


def test_a_full_disk_at_a_later_checkpoint_keeps_the_last_one_and_says_resume(digits, disk, capsys):
    from stdistill.training.checkpoint import verify_checkpoint
    run = disk.path / 'run'
    assert main(['train', '--config', f'{R}/plain.yaml', *F(digits), 'epochs=2', f'output={run}',
                 '--stop-after', '1']) == 0
    before = sorted(os.listdir(run))
    disk.fill()
    code, out = run_main(capsys, 'train', '--resume', run)
    refused(code, out.err, f'cannot write the run {run}: No space left on device',
            f'continue with `stdistill train --resume {run}`')
    assert verify_checkpoint(str(run / 'last'))['epoch'] == 0  # epoch 1's checkpoint, whole
    assert sorted(os.listdir(run)) == before  # no temporary checkpoint folder left
    disk.free()
    code, out = run_main(capsys, 'train', '--resume', run)
    assert code == 0 and 'done: 2/2 epochs' in out.out, out.err


def test_a_full_disk_between_best_and_last_leaves_no_run_that_cannot_resume(digits, disk, tmp_path, capsys):
    """best/ is written before last/, which commits the epoch: a disk that holds the first but not the
    second has committed nothing, so nothing is kept and the advice is to run again, not --resume."""
    def size(folder):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
    argv = ['train', '--config', f'{R}/plain.yaml', *F(digits), 'epochs=1']
    sized = tmp_path / 'sized'
    assert main([*argv, f'output={sized}']) == 0
    disk.fill(leave=size(sized / 'best') + (size(sized / 'last') - size(sized / 'best')) // 2)
    run = disk.path / 'run'
    code, out = run_main(capsys, *argv, f'output={run}')
    refused(code, out.err, f'cannot write the run {run}: No space left on device', 'run the command again')
    assert disk.entries() == []
    disk.free()
    code, out = run_main(capsys, *argv, f'output={run}')
    assert code == 0, out.err


def test_a_full_disk_in_a_teacher_pass_is_one_line_and_leaves_no_store(digits, teacher_run, disk, capsys):
    store = disk.path / 'store'
    disk.fill(leave=8 * 1024)  # the lock file and store.json fit, the first shard does not
    code, out = run_main(capsys, 'teacher-pass', '--config', f'{R}/std.yaml', *F(digits), 'epochs=1', '--output', store,
                         f'teachers.0.checkpoint={teacher_run}/best/model.safetensors')
    refused(code, out.err, f'cannot write the teacher store {store}: No space left on device')
    assert disk.entries() == []


def test_a_full_disk_in_an_export_is_one_line_and_leaves_no_folder(std_run, disk, capsys):
    disk.fill()
    code, out = run_main(capsys, 'export', std_run, disk.path / 'exported')
    refused(code, out.err, f'cannot write the export {disk.path / "exported"}: No space left on device')
    assert disk.entries() == []


WHAT = {'train': 'the run', 'teacher-pass': 'the teacher store', 'export': 'the export', 'quickstart': 'the quickstart'}


@pytest.mark.parametrize('command', ['train', 'teacher-pass', 'export', 'quickstart'])
def test_a_read_only_folder_is_one_line(command, digits, std_run, teacher_run, disk, capsys):
    out_folder = disk.path / 'out'
    disk.read_only()
    code, out = run_main(capsys, *writer_argv(command, out_folder, digits, std_run, teacher_run))
    refused(code, out.err, f'cannot write {WHAT[command]} {out_folder}: Read-only file system', 'make it writable')
