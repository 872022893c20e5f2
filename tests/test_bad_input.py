"""Bad input through the real command line: one line naming the problem, non-zero exit, no
traceback, and no checkpoint left behind."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from stdistill.data import FashionMNIST
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


def assert_clean_failure(result, out, *words):
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('stdistill: error: '), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    leftovers = [] if not os.path.isdir(out) else [n for n in os.listdir(out) if n not in ('config.yaml', 'tb', 'log.jsonl')]
    assert leftovers == [], leftovers  # no checkpoint, whole or partial (nor a temp folder)


def test_missing_data_folder(tmp_path):
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, *FOLDER, f'data_dir={tmp_path / "nowhere"}', f'output={out}')
    assert_clean_failure(r, out, 'data folder not found', 'nowhere')


def test_empty_data_folder(tmp_path):
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, *FOLDER, f'data_dir={tmp_path / "empty"}', f'output={out}')
    assert_clean_failure(r, out, 'empty')


def test_class_count_mismatch_between_data_and_teacher(tmp_path):
    import timm
    teacher = timm.create_model('resnet10t', num_classes=5, in_chans=1)
    save_file(teacher.state_dict(), str(tmp_path / 'teacher5.safetensors'))
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, f'teachers=[{{model: resnet10t, checkpoint: {tmp_path / "teacher5.safetensors"}}}]',
                f'output={out}')
    assert_clean_failure(r, out, 'teacher resnet10t predicts 5 classes', 'student has 10')


def test_class_count_mismatch_between_data_and_config(tmp_path):
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, 'num_classes=7', f'output={out}')
    assert_clean_failure(r, out, 'num_classes is 7', 'training data has 10 classes')


def test_unknown_config_key(tmp_path):
    out = tmp_path / 'run'
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('dataset: fashion-mnist\nlearning_rate: 0.1\n')
    r = run_cli('train', '--config', str(recipe), f'output={out}')
    assert_clean_failure(r, out, "unknown config key 'learning_rate'")


def test_unknown_teacher(tmp_path):
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, 'teachers=[resnet50x]', f'output={out}')
    assert_clean_failure(r, out, "unknown model 'resnet50x'")


@pytest.mark.parametrize('workers', [0, 1])
def test_corrupt_image_in_image_folder(tmp_path, workers):
    root = image_folder(tmp_path / 'data', corrupt=True)
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, *FOLDER, f'data_dir={root}', f'workers={workers}', 'train_samples=0',
                f'output={out}')
    assert_clean_failure(r, out, 'cannot read image', 'broken.png')


def test_the_same_folder_trains_without_the_corrupt_image(tmp_path):
    """The corrupt-image failure above is about that image: the same data without it trains."""
    root = image_folder(tmp_path / 'data')
    out = tmp_path / 'run'
    r = run_cli('train', *TINY, *FOLDER, f'data_dir={root}', 'epochs=1', f'output={out}')
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.isfile(out / 'last' / 'model.safetensors')
