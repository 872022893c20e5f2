"""Bad input, case by case: one line on stderr naming what to fix, exit status 2, no traceback,
and no checkpoint (whole, partial, or a temporary folder) left behind.

The matrix runs `stdistill.apps.cli.main` in this process (seconds per case); a few cases that
involve data-loader worker processes also run through the real command line.
"""
import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
from PIL import Image
from safetensors.torch import save_file

from stdistill.apps.cli import main
from stdistill.data.fashion_mnist import DEBIAN_FASHION_MNIST, FashionMNIST
from test_teachers import _Payload
from test_train import TINY


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'stdistill', *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))


def image_folder(root, corrupt=False):
    """A real ImageFolder: Fashion-MNIST images of 2 classes as PNG files, train/ and val/."""
    data = FashionMNIST(split='test')
    for split, start in (('train', 0), ('val', 100)):
        for label in (0, 1):
            folder = root / split / f'class_{label}'
            folder.mkdir(parents=True)
            indices = np.flatnonzero(data.targets == label)[start:start + 40]
            for i in indices:
                Image.fromarray(data.images[i]).save(folder / f'{i}.png')
    if corrupt:
        (root / 'train' / 'class_1' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'not really a png' * 8)
    return root


FOLDER = ['dataset=folder', 'in_chans=1', 'mean=[0.5]', 'std=[0.5]', 'val_split=val', 'val_samples=0', 'train_samples=0',
          'batch_size=16']


def leftovers(out):
    """What a failed run left in its folder besides its config and (empty) logs."""
    setup = ('config.yaml', 'class_map.txt', 'tb', 'log.jsonl')  # written whole at setup, before the first epoch
    return [] if not os.path.isdir(out) else [n for n in os.listdir(out) if n not in setup]


def assert_clean_failure(result, out, *words):
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('stdistill: error: '), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert leftovers(out) == []  # no checkpoint, whole or partial (nor a temp folder)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    """A finished 1-epoch tiny STD run (its checkpoints are what the eval and resume cases damage)."""
    out = tmp_path_factory.mktemp('finished') / 'run'
    assert main(['train', *TINY, 'epochs=1', 'model_ema=false', f'output={out}']) == 0
    return out


def copy_run(run, tmp_path):
    return shutil.copytree(run, tmp_path / 'copy')


def teacher_checkpoint(tmp_path, num_classes):
    path = tmp_path / f'teacher{num_classes}.safetensors'
    save_file(timm.create_model('resnet10t', num_classes=num_classes, in_chans=1).state_dict(), str(path))
    return path


def truncated_fashion_mnist(tmp_path):
    """What an interrupted download leaves: the training images cut off half way."""
    root = tmp_path / 'fm'
    root.mkdir()
    for name in os.listdir(DEBIAN_FASHION_MNIST):
        shutil.copy(os.path.join(DEBIAN_FASHION_MNIST, name), root / name)
    images = next(n for n in os.listdir(root) if n.startswith('train-images'))
    data = (root / images).read_bytes()
    (root / images).write_bytes(data[:len(data) // 2])
    return root, images


# Each case: (id, function of (tmp_path, finished_run) -> argv, words the error line must hold).
def _train(*extra):
    return lambda tmp, run: ['train', *TINY, *extra, f'output={tmp / "out"}']


def _case_yaml(text):
    def argv(tmp, run):
        (tmp / 'recipe.yaml').write_text(text)
        return ['train', '--config', str(tmp / 'recipe.yaml'), f'output={tmp / "out"}']
    return argv


def _case_empty_folder(tmp, run):
    (tmp / 'empty' / 'train').mkdir(parents=True)
    return _train(*FOLDER, f'data_dir={tmp / "empty"}')(tmp, run)


def _case_corrupt_image_stop(tmp, run):
    return _train(*FOLDER, f'data_dir={image_folder(tmp / "data", corrupt=True)}', 'bad_images=stop')(tmp, run)


def _case_teacher_classes(tmp, run):
    return _train(f'teachers=[{{model: resnet10t, checkpoint: {teacher_checkpoint(tmp, 5)}}}]')(tmp, run)


def _case_teacher_architecture(tmp, run):
    return _train(f'teachers=[{{model: resnet18, checkpoint: {teacher_checkpoint(tmp, 10)}}}]')(tmp, run)


def _case_interrupted_download(tmp, run):
    root, _ = truncated_fashion_mnist(tmp)
    return _train(f'data_dir={root}')(tmp, run)


def _case_eval_other_model(tmp, run):
    return ['eval', str(run), 'model_kwargs={embed_dim: 24, num_blocks: 2}']


def _case_eval_truncated(tmp, run):
    copy = copy_run(run, tmp)
    weights = copy / 'best' / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:-100])
    return ['eval', str(copy)]


def _case_eval_pickle(tmp, run):
    import torch
    torch.save({'state_dict': {'head.weight': _Payload(str(tmp / 'code-ran'))}}, str(tmp / 'student.pth'))
    return ['eval', str(tmp / 'student.pth'), '--config', str(run / 'config.yaml')]


def _case_resume_edited_state(tmp, run):
    copy = copy_run(run, tmp)
    for name in ('last', 'previous'):
        if os.path.isdir(copy / name):
            state = copy / name / 'state.json'
            state.write_text(state.read_text().replace('"epoch": 0', '"epoch": 7'))
    return ['train', '--resume', str(copy)]


def _case_resume_nothing(tmp, run):
    (tmp / 'out').mkdir()
    (tmp / 'out' / 'config.yaml').write_text((run / 'config.yaml').read_text())
    return ['train', '--resume', str(tmp / 'out')]


def _folder_with(tmp, change):
    root = image_folder(tmp / 'data')
    change(root)
    return _train(*FOLDER, f'data_dir={root}')(tmp, None)


def _case_val_class_unknown(tmp, run):
    def change(root):
        shutil.copytree(root / 'val' / 'class_1', root / 'val' / 'class_9')
    return _folder_with(tmp, change)


def _case_loose_image(tmp, run):
    def change(root):
        shutil.copy(next((root / 'train' / 'class_0').iterdir()), root / 'train' / 'stray.png')
    return _folder_with(tmp, change)


def _case_class_map(text, name='map.txt'):
    def argv(tmp, run):
        root = image_folder(tmp / 'data')
        (tmp / name).write_text(text)
        return _train(*FOLDER, f'data_dir={root}', f'class_map={tmp / name}')(tmp, run)
    return argv


def _case_float_image(tmp, run):
    root = image_folder(tmp / 'data')
    Image.fromarray(np.zeros((28, 28), np.float32), mode='F').save(root / 'train' / 'class_0' / 'float.tif')
    return _train(*FOLDER, f'data_dir={root}', 'bad_images=stop')(tmp, run)


def _case_resume_change(*overrides):
    return lambda tmp, run: ['train', '--resume', str(copy_run(run, tmp)), *overrides]


_HOLDERS = []  # processes that hold a folder's claim for a case (killed at the end of the module)


@pytest.fixture(scope='module', autouse=True)
def _kill_holders():
    yield
    for p in _HOLDERS:
        p.kill()
        p.wait()


def _case_folder_in_use(tmp, run):
    """Another live process writes the output folder (as a second `stdistill train` would)."""
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from stdistill.utils.locks import lock_folder; '
                               'lock_folder(sys.argv[1], "the run"); print("held", flush=True); time.sleep(300)',
                               str(tmp / 'out')], stdout=subprocess.PIPE, text=True)
    _HOLDERS.append(holder)
    assert holder.stdout.readline().strip() == 'held'
    return _train()(tmp, run)


def _case_lock_file_is_a_folder(tmp, run):
    (tmp / '.out.lock').mkdir()
    return _train()(tmp, run)


def _case_output_link_to_nothing(tmp, run):
    os.symlink(tmp / 'gone' / 'deep', tmp / 'link')
    return ['train', *TINY, f'output={tmp / "link"}']


def _case_damaged_architecture(tmp, run):
    import json as _json

    from safetensors import safe_open
    copy = copy_run(run, tmp)
    path = copy / 'best' / 'model.safetensors'
    with safe_open(str(path), 'pt') as f:
        header, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header['stdistill.architecture'] = _json.dumps({'model': 'mixer_t4_28'})  # no kwargs, size or classes
    save_file(weights, str(path), metadata=header)
    return ['eval', str(path)]


def _case_student_teacher_of_other_kwargs(tmp, run):
    checkpoint = run / 'best' / 'model.safetensors'
    return _train(f'teachers=[{{model: mixer_t4_28, checkpoint: {checkpoint}, kwargs: {{num_blocks: 3}}}}]')(tmp, run)


def _case_bytes_recipe(tmp, run):
    (tmp / 'recipe.yaml').write_bytes(b'\xff\xfeepochs: 1\n')
    return ['train', '--config', str(tmp / 'recipe.yaml'), f'output={tmp / "out"}']


def _case_damaged_labels(tmp, run):
    """A labels file whose header is right and whose labels are not classes."""
    root = tmp / 'fm'
    root.mkdir()
    for name in os.listdir(DEBIAN_FASHION_MNIST):
        shutil.copy(os.path.join(DEBIAN_FASHION_MNIST, name), root / name)
    labels = next(n for n in os.listdir(root) if n.startswith('train-labels'))
    data = bytearray(gzip.open(root / labels).read() if labels.endswith('.gz') else (root / labels).read_bytes())
    data[8:] = bytes([200]) * (len(data) - 8)
    (root / labels).write_bytes(gzip.compress(bytes(data)) if labels.endswith('.gz') else bytes(data))
    return _train(f'data_dir={root}')(tmp, run)


def _case_class_folder_not_utf8(tmp, run):
    root = image_folder(tmp / 'd')
    os.rename(root / 'train' / 'class_1', os.path.join(bytes(root / 'train'), b'class_\xff'))
    return _train(*FOLDER, f'data_dir={root}')(tmp, run)


MATRIX = [
    # kinds a library reports as a ValueError (or its subclasses), which no longer pass as bad input
    ('seed out of numpy\'s range', _train('seed=-1'), ['seed must be from 0 to 4294967295']),
    ('data_seed past 64 bits', _train('data_seed=99999999999999999999999'), ['data_seed must be from 0']),
    ('recipe that is not UTF-8', _case_bytes_recipe, ['not UTF-8 text', 'save it as UTF-8']),
    ('class folder name that is not UTF-8', _case_class_folder_not_utf8, ['has a name that is not UTF-8']),
    ('lr beyond fp32', _train('lr=1e300'), ['lr is 1e+300, beyond what fp32 holds']),
    # and their siblings, bad input that reached torch or timm as another error
    ('YAML key that is not a name', _case_yaml('1: 2\n'), ['unknown config key 1']),
    ('recipe nested too deeply', _case_yaml('a: ' + '[' * 5000 + '\n'), ['nests too deeply']),
    ('sched none', _train('sched=none'), ["config key sched 'none' gives no schedule"]),
    ('model_kwargs img_size against img_size', _train('model_kwargs={embed_dim: 16, num_blocks: 2, img_size: 32}'),
     ['model_kwargs.img_size is 32', 'set img_size=32']),
    ('model_kwargs in_chans against in_chans', _train('model_kwargs={embed_dim: 16, num_blocks: 2, in_chans: 3}'),
     ['model_kwargs.in_chans is 3']),
    ('token depth without bound', _train('token_depth=100000'), ['token_depth must be at most 64']),
    ('MINE width without bound', _train('mine_hidden=100000000000'), ['mine_hidden must be at most']),
    ('damaged labels file', _case_damaged_labels, ['is damaged: label 200 of image 0']),
    ('profile: a size the model is not built for', lambda tmp, run: ['profile', 'mixer_s16_224', '--img-size', '8'],
     ['cannot take a 3x8x8 input']),
    ('profile: token positions on a plain model',
     lambda tmp, run: ['profile', 'mixer_s16_224', '--token-positions', '1'], ['apply to STD students']),
    ('missing data folder', _train(*FOLDER, 'data_dir=/nowhere/at/all'), ['data folder not found', '/nowhere/at/all']),
    ('empty data folder', _case_empty_folder, ['empty']),
    ('corrupt image, bad_images=stop', _case_corrupt_image_stop, ['cannot read image', 'broken.png']),
    ('image mode with 2 channels', _train('in_chans=2'), ['in_chans must be 1', 'or 3']),
    ('zero image size', _train('img_size=0'), ['img_size must be >= 1, got 0']),
    ('negative batch size', _train('batch_size=-8'), ['batch_size must be >= 1, got -8']),
    ('negative learning rate', _train('lr=-0.1'), ['lr must be > 0']),
    ('probability above 1', _train('reprob=1.5'), ['reprob must be between 0 and 1']),
    ('value of the wrong type', _train('epochs=three'), ['epochs', 'three']),
    ('bad YAML', _case_yaml('epochs: [1, 2\nlr: 0.1\n'), ['not valid YAML']),
    ('YAML that is not a mapping', _case_yaml('- epochs\n- lr\n'), ['must be a YAML mapping']),
    ('missing config file', lambda tmp, run: ['train', '--config', str(tmp / 'none.yaml')], ['config file not found']),
    ('unknown config key in YAML', _case_yaml('dataset: fashion-mnist\nlearning_rate: 0.1\n'),
     ["unknown config key 'learning_rate'"]),
    ('unknown key in an override', _train('epoch=3'), ["unknown config key 'epoch'", 'epochs']),
    ('unknown teacher key', _train('teachers=[{model: resnet10t, position: 1}]'), ['unknown key teachers.0.position']),
    ('unknown student model', _train('model=mixer_tiny_nope'), ["unknown model 'mixer_tiny_nope'"]),
    ('unknown teacher model', _train('teachers=[resnet50x]'), ["unknown model 'resnet50x'"]),
    ('teacher/student class mismatch', _case_teacher_classes, ['teacher resnet10t predicts 5 classes',
                                                               'student has 10']),
    ('teacher checkpoint of another architecture', _case_teacher_architecture, ['does not fit teacher resnet18']),
    ('config/data class mismatch', _train('num_classes=7'), ['num_classes is 7', 'training data has 10 classes']),
    ('token position out of range', _train('teachers=[{model: resnet10t, pretrained: false, token_position: 5}]'),
     ['token position 5 is outside the backbone']),
    ('batch larger than the data', _train('train_samples=20', 'batch_size=32'), ['no full batch of 32', 'lower batch_size']),
    ('interrupted download', _case_interrupted_download, ['train-images', 'truncated', 'delete it and fetch it again']),
    ('eval: checkpoint of another model', _case_eval_other_model, ['trained with model_kwargs.embed_dim=16',
                                                                   'builds model_kwargs.embed_dim=24']),
    ('eval: truncated checkpoint', _case_eval_truncated, ['corrupt checkpoint', 'model.safetensors', 'truncated']),
    ('eval: pickle that runs code', _case_eval_pickle, ['cannot load checkpoint', 'student.pth']),
    ('resume: edited state.json', _case_resume_edited_state, ['nothing to resume', 'state.json does not match']),
    ('resume: no checkpoint', _case_resume_nothing, ['nothing to resume']),
    ('existing run without --resume', lambda tmp, run: ['train', *TINY, f'output={run}'], ['already holds a run']),
    ('--stop-after 0', _train('--stop-after', '0'), ['--stop-after must be a positive']),
    ('unknown option', _train('--stop-afterwards', '1'), ['unrecognized arguments: --stop-afterwards 1',
                                                         'stdistill train --help']),
    ('unknown command', lambda tmp, run: ['tran', *TINY], ["invalid choice: 'tran'"]),
    ('validation class the training split lacks', _case_val_class_unknown, ["'class_9'", 'class_map']),
    ('image outside a class folder', _case_loose_image, ['stray.png', 'outside a class folder']),
    ('no validation split folder', lambda tmp, run: _train(*FOLDER, f'data_dir={image_folder(tmp / "d")}',
                                                           'val_split=test')(tmp, run), ['no test/ folder', 'found: train, val']),
    ('class_map file missing', lambda tmp, run: _train(*FOLDER, f'data_dir={image_folder(tmp / "d")}',
                                                       'class_map=/nowhere/map.txt')(tmp, run),
     ['class_map file not found', '/nowhere/map.txt']),
    ('class_map without a training class', _case_class_map('class_0\n'), ["'class_1'", 'class_map']),
    ('class_map with a blank line', _case_class_map('class_0\n\nclass_1\n'), ['blank line']),
    ('class_map naming a class twice', _case_class_map('class_0\nclass_0\nclass_1\n'), ["'class_0' more than once"]),
    ('class_map as a pickle', _case_class_map('x', 'map.pkl'), ['.txt']),
    ('class_map for fashion-mnist', _train('class_map=map.txt'), ['class_map applies to image folders']),
    ('image of mode F, bad_images=stop', _case_float_image, ['float.tif', 'mode F']),
    ('odd batch with mixup', _train('batch_size=31'), ['batch_size 31 is odd', 'batch_size=32']),
    ('MINE with one image a batch', _train('batch_size=1', 'mixup=0', 'cutmix=0'), ['batch_size 1', 'MINE']),
    ('resume: change the optimizer', _case_resume_change('opt=sgd'), ['cannot change opt', 'new run']),
    ('resume: change the model', _case_resume_change('model_kwargs={embed_dim: 24, num_blocks: 2}'),
     ['cannot change model_kwargs']),
    ('resume: turn EMA on', _case_resume_change('model_ema=true'), ['cannot change model_ema']),
    ('eval --ema of a run without EMA', lambda tmp, run: ['eval', str(run), '--ema'], ['no EMA weights']),
    ('a model that fixes its patch size', _train('model=mixer_s16_224', 'model_kwargs={patch_size: 4}'),
     ['mixer_s16_224 fixes its patch_size', 'stdistill models']),
    ('3 channels for a 1-channel student', _train('in_chans=3'),
     ['mean and std need 3 values', 'mean=[0.286, 0.286, 0.286]']),
    ('teacher use_ema on a file without EMA',
     lambda tmp, run: _train(f'teachers=[{{model: resnet10t, checkpoint: {teacher_checkpoint(tmp, 10)}, '
                             f'use_ema: true}}]')(tmp, run), ['teachers.0', 'use_ema']),
    # keys the run would ignore (or a value that leaves it no signal), refused rather than recorded as used
    ('tau with hard distillation', _train('distill=hard', 'tau=4'), ['tau 4.0 applies to soft distillation',
                                                                      'distill=soft']),
    ('tau so small tau**2 underflows', _train('distill=soft', 'tau=1e-30'), ['tau must be from 0.01 to 100']),
    ('tau so large tau**2 overflows', _train('distill=soft', 'tau=1e19'), ['tau must be from 0.01 to 100']),
    ('token_position with method kd', _train('method=kd', 'teachers=[{model: resnet10t, pretrained: false, '
                                                          'token_position: 1}]'), ['teachers.0.token_position',
                                                                                   'method kd']),
    ('token_position with method deit', _train('method=deit', 'teachers=[{model: resnet10t, pretrained: false, '
                                                              'token_position: 9}]'), ['method deit']),
    ('label smoothing 1 without mixup', _train('smoothing=1.0', 'mixup=0', 'cutmix=0'), ['smoothing must be below 1']),
    ('label smoothing 1 with mixup', _train('smoothing=1.0'), ['smoothing must be below 1']),
    ('labels teacher misspelt', _train('teachers=[{model: label}]'), ["'label' is no model", 'did you mean labels']),
    ('labels teacher in capitals', _train('teachers=[{model: Labels}]'), ['did you mean labels']),
    # TINY: 4 updates an epoch, 2 epochs
    ('MINE warm-up rounding to every update', _train('mine_warmup_epochs=1.9'),
     ['mine_warmup_epochs 1.9', 'all 8 updates', 'never apply']),
    ('MINE warm-up rounding to no update', _train('mine_warmup_epochs=0.1'), ['no update', 'no warm-up']),
    # values a library would take and silently turn into another result (issue 28)
    ('img_size the patches do not tile', _train('img_size=30'), ['img_size 30 is not a multiple of',
                                                                 'patch size 4', 'img_size=32 or 28']),
    ('min_lr above lr', _train('lr=0.001', 'min_lr=0.01'), ['min_lr 0.01 is above lr', 'climb']),
    ('warmup_lr above lr', _train('lr=0.001', 'warmup_lr=0.01', 'warmup_epochs=1'), ['warmup_lr 0.01 is above lr']),
    # a folder another process writes, and a trained student rebuilt as another (issue 28)
    ('output folder another process writes', _case_folder_in_use, ['is in use by another stdistill process', 'pid ']),
    ('eval: tokens moved to another block', lambda tmp, run: ['eval', str(run), 'teachers.0.token_position=0'],
     ['trained with teachers.0.token_position=1 (block index)', 'builds teachers.0.token_position=0']),
    ('eval: another method', lambda tmp, run: ['eval', str(run), 'method=kd'],
     ['trained with method="std"', 'builds method="kd"']),
    ('eval: another token depth', lambda tmp, run: ['eval', str(run), 'token_depth=2'],
     ['trained with token_depth=1', 'builds token_depth=2']),
    ('teacher: a student checkpoint with other model_kwargs', _case_student_teacher_of_other_kwargs,
     ['trained with model_kwargs.num_blocks=2', 'kwargs.num_blocks=3']),
    ('teacher: a student checkpoint with a kwarg it was trained without',
     lambda tmp, run: _train(f'teachers=[{{model: mixer_t4_28, checkpoint: {run}/best/model.safetensors, '
                             f'kwargs: {{stem_norm: true}}}}]')(tmp, run),
     ['trained without model_kwargs.stem_norm', 'kwargs.stem_norm=True']),
    ('eval: a damaged architecture record', _case_damaged_architecture, ['architecture recorded in', 'is damaged']),
    ('lock file that is a folder', _case_lock_file_is_a_folder, ['.out.lock is a folder where the lock file', 'remove it']),
    ('output a link to nothing', _case_output_link_to_nothing, ['is a link to', 'which does not exist']),
    # every writer claims its folder through locks.check_folder: an empty name, a line break (the
    # one-line refusal would be cut at it), before any work
    ('output empty', lambda tmp, run: ['train', *TINY, "output=''"], ['the run: the folder is empty: give a folder']),
    ('fold output empty', lambda tmp, run: ['fold', str(run), "output=''"], ['the fold: the folder is empty']),
    ('output with a line break', lambda tmp, run: ['export', str(run), str(tmp / 'a\nb')], ['holds a line break']),
    ('teacher: a student checkpoint named as another model',
     lambda tmp, run: _train(f'teachers=[{{model: mixer_t4_32, checkpoint: {run}/best/model.safetensors}}]')(tmp, run),
     ['holds a mixer_t4_28, not a mixer_t4_32']),
]


@pytest.mark.parametrize('case', MATRIX, ids=[c[0] for c in MATRIX])
def test_bad_input_matrix(case, tmp_path, finished_run, capsys):
    _, make_argv, words = case
    argv = make_argv(tmp_path, finished_run)
    capsys.readouterr()  # only what this command prints
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('stdistill: error: '), err
    for word in words:
        assert word in lines[0], lines[0]
    assert leftovers(tmp_path / 'out') == []
    assert not os.path.exists(tmp_path / 'code-ran')


def test_matrix_covers_at_least_15_cases():
    assert len(MATRIX) >= 15 and len({c[0] for c in MATRIX}) == len(MATRIX)


def test_missing_data_folder_through_the_command_line(tmp_path):
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, *FOLDER, f'data_dir={tmp_path / "nowhere"}', f'output={out}')
    assert_clean_failure(r, out, 'data folder not found', 'nowhere')


def test_corrupt_image_stops_a_worker_cleanly(tmp_path):
    """bad_images=stop with a worker process: the worker's error reaches the user as one line."""
    root = image_folder(tmp_path / 'data', corrupt=True)
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, *FOLDER, f'data_dir={root}', 'workers=1', 'bad_images=stop', f'output={out}')
    assert_clean_failure(r, out, 'cannot read image', 'broken.png')


@pytest.mark.parametrize('workers', [0, 1])
def test_corrupt_image_is_skipped_and_counted(tmp_path, workers):
    """The default, bad_images=skip: the run trains on the other images, warns once per process
    with the file's name, and counts the skipped image in every epoch's log row."""
    import json
    root = image_folder(tmp_path / 'data', corrupt=True)
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, *FOLDER, f'data_dir={root}', f'workers={workers}', 'epochs=2', 'mixup=0', 'cutmix=0',
                f'output={out}')
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [line for line in r.stderr.splitlines() if 'skipping unreadable image' in line]
    assert warnings and all('broken.png' in line for line in warnings)
    rows = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    # 81 training images, batches of 16 with drop_last: the broken one is in a batch in some epochs
    assert sum(row['skipped_images'] for row in rows) >= 1
    assert all(row['val_skipped_images'] == 0 for row in rows)
    assert json.loads((out / 'summary.json').read_text())['skipped_images'] == sum(r['skipped_images'] for r in rows)


def test_the_same_folder_trains_without_the_corrupt_image(tmp_path):
    """The corrupt-image failure above is about that image: the same data without it trains."""
    root = image_folder(tmp_path / 'data')
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, *FOLDER, f'data_dir={root}', 'epochs=1', f'output={out}')
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.isfile(out / 'last' / 'model.safetensors')


def test_truncated_gzip_names_the_file(tmp_path):
    """A gzipped IDX file cut short (a download interrupted mid-stream) is named, with the fix."""
    src = os.path.join(DEBIAN_FASHION_MNIST, 't10k-labels-idx1-ubyte.gz')
    with gzip.open(src, 'rb') as f:
        data = f.read()
    path = tmp_path / 't10k-labels-idx1-ubyte.gz'
    with gzip.open(path, 'wb') as f:
        f.write(data)
    path.write_bytes(path.read_bytes()[:200])
    from stdistill.data.fashion_mnist import read_idx
    with pytest.raises(ValueError, match='cannot read .*t10k-labels.*delete it and fetch it again'):
        read_idx(str(path))
