"""The path ImageNet users take, on real images: RGB JPEG folders at 224, every recipe's own
augmentation (RandAugment, random erasing, mixup/cutmix, repeated augmentation), bf16 autocast
(`amp: true`, the GPU's code path, here on the CPU; on a CPU without bf16 hardware one recipe,
the rest in fp32), through the `stdistill train` command line."""
import glob
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from stdistill.training.checkpoint import load_checkpoint
from stdistill.apps.cli import main
from stdistill.config import load_config
from stdistill.data.fashion_mnist import FashionMNIST
from stdistill.data.loaders import build_transforms
from stdistill.utils.distributed import cpu_bf16_native
from stdistill.training.builders import build_student, resolve_norm

pytestmark = pytest.mark.slow  # 224-px recipes with teachers, minutes on 2 cores
XDIST_SPREAD = True  # every test trains its own run: pytest -n shares them between the workers (conftest.py)

IMAGENET = sorted(glob.glob('recipes/imagenet/*.yaml'))
CLASSES = 4


# On a CPU without bf16 hardware only this recipe keeps the recipes' amp (bf16); the others run
# in fp32 (the precision policy itself is tested for every method in test_precision.py)
BF16_RECIPE = 'mixer_s16_std'
FP32_UNLESS_NATIVE = [] if cpu_bf16_native() is not False else ['amp=false']


def rgb_jpeg_folder(root, size=224, train_per_class=2, val_per_class=1, classes=CLASSES):
    """An ImageFolder of real RGB JPEGs: Fashion-MNIST images, tinted per channel and resized."""
    data = FashionMNIST(split='test')
    for split, count, start in (('train', train_per_class, 0), ('val', val_per_class, 500)):
        for label in range(classes):
            folder = root / split / f'n{label:08d}'
            folder.mkdir(parents=True)
            for i in np.flatnonzero(data.targets == label)[start:start + count]:
                gray = data.images[i].astype(np.float32)
                rgb = np.stack([gray, 0.6 * gray + 40, 255 - 0.8 * gray], axis=-1).clip(0, 255).astype(np.uint8)
                Image.fromarray(rgb).resize((size, size), Image.BICUBIC).save(folder / f'{i}.jpg', quality=90)
    return root


@pytest.fixture(scope='module')
def imagenet_like(tmp_path_factory):
    return rgb_jpeg_folder(tmp_path_factory.mktemp('imagenet'))


def recipe_overrides(path, folder, out, *extra):
    """2 steps (8 images, batch 4) + evaluation; the recipe's own augmentation; random teachers."""
    teachers = load_config(path).teachers
    precision = FP32_UNLESS_NATIVE if os.path.basename(path) != f'{BF16_RECIPE}.yaml' else []
    return [*precision, f'data_dir={folder}', f'num_classes={CLASSES}', 'batch_size=4', 'epochs=1', 'workers=0',
            'progress=false', f'output={out}', *[f'teachers.{i}.pretrained=false' for i in range(len(teachers))],
            *extra]


@pytest.mark.parametrize('path', IMAGENET, ids=lambda p: os.path.basename(p)[:-5])
def test_every_imagenet_recipe_trains_on_real_jpegs(imagenet_like, tmp_path, path):
    cfg = load_config(path)
    assert cfg.amp and cfg.aa and cfg.reprob > 0 and cfg.mixup > 0 and cfg.cutmix > 0 and cfg.repeated_aug
    out = tmp_path / 'run'
    assert main(['train', '--config', path, *recipe_overrides(path, imagenet_like, out)]) == 0
    with open(out / 'log.jsonl') as f:
        (row,) = [json.loads(line) for line in f]
    assert row['val_images'] == CLASSES and np.isfinite(row['loss'])
    if cfg.method in ('std', 'deit'):  # one ranking: the logged top-1 is the inference head's
        assert row['val_top1'] == row[f'val_top1_{cfg.inference_head}']
    saved = load_config(str(out / 'config.yaml'))
    state = load_checkpoint(str(out / 'last'), build_student(saved, CLASSES, pretrained=False))
    assert state['num_updates'] == 2
    shutil.rmtree(out)  # an ImageNet-size run's checkpoints take up to 2 GB: 20 recipes would fill a small disk


def test_a_recipe_trains_compiled(imagenet_like, tmp_path):
    path = 'recipes/imagenet/mixer_s16_std.yaml'
    out = tmp_path / 'run'
    assert main(['train', '--config', path, *recipe_overrides(path, imagenet_like, out, 'compile=true',
                                                             *FP32_UNLESS_NATIVE)]) == 0
    with open(out / 'log.jsonl') as f:
        (row,) = [json.loads(line) for line in f]
    assert np.isfinite(row['loss']) and row['val_top1'] == row['val_top1_avg']


def _distinct_train_transforms():
    seen = {}
    for path in IMAGENET:
        cfg = load_config(path)
        train_tf, _ = build_transforms(cfg, *resolve_norm(cfg))
        seen.setdefault(repr(train_tf), (os.path.basename(path), train_tf))
    return list(seen.values())


def test_every_recipe_transform_takes_2000_random_images(monkeypatch):
    """timm's RandAugment asks for 0-bit posterize on about one image in 400, which Pillow 13
    refuses: 2000 images meet it a few times (counted). Image sizes and contents are random."""
    from stdistill.data import augment
    random.seed(0)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    zero_bits, posterize = [], augment.posterize

    def counted(img, bits_to_keep, **kwargs):
        zero_bits.append(bits_to_keep <= 0)
        return posterize(img, bits_to_keep, **kwargs)

    monkeypatch.setattr(augment, 'posterize', counted)  # guard_posterize installs the module's posterize
    transforms = _distinct_train_transforms()
    for name, transform in transforms:
        for _ in range(2000):
            h, w = rng.integers(64, 160, size=2)
            img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
            x = transform(img)
            assert x.shape == (3, 224, 224) and torch.isfinite(x).all(), name
    assert sum(zero_bits) >= 2, sum(zero_bits)


def test_posterize_with_zero_bits_is_black_whatever_pillow_says():
    from stdistill.data.augment import posterize
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    assert np.asarray(posterize(img, 0)).max() == 0
    assert np.array_equal(np.asarray(posterize(img, 8)), np.asarray(img))
    assert np.array_equal(np.asarray(posterize(img, 3)), np.asarray(img) & 0b11100000)
    gray = img.convert('L')
    assert np.asarray(posterize(gray, 0)).max() == 0 and posterize(gray, 0).mode == 'L'


def test_default_config_trains_an_rgb_folder_for_three_epochs(tmp_path):
    """A new user's RGB folder with the default config (DeiT's augmentation, amp, Mixer-S16 at
    224); only what the folder and the 2-core machine need is set (and fp32 on a CPU without
    bf16 hardware)."""
    folder = rgb_jpeg_folder(tmp_path / 'data', train_per_class=8, val_per_class=2)
    out = tmp_path / 'run'
    assert main(['train', f'data_dir={folder}', 'val_split=val', 'method=none', 'epochs=3', 'batch_size=16',
                 'workers=2', 'progress=false', f'output={out}', *FP32_UNLESS_NATIVE]) == 0
    with open(out / 'log.jsonl') as f:
        rows = [json.loads(line) for line in f]
    assert [r['epoch'] for r in rows] == [0, 1, 2] and all(np.isfinite(r['loss']) for r in rows)
    assert rows[-1]['val_images'] == 2 * CLASSES and rows[-1]['skipped_images'] == 0
