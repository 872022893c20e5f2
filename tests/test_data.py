import gzip
import shutil

import numpy as np
import pytest

from stdistill.data.fashion_mnist import DEBIAN_FASHION_MNIST, FashionMNIST, read_idx


def test_real_fashion_mnist_from_debian_package():
    test = FashionMNIST(split='test')
    assert len(test) == 10000
    image, label = test[0]
    assert image.size == (28, 28) and image.mode == 'L' and label == 9  # the first test image is an ankle boot
    counts = np.bincount(test.targets, minlength=10)
    assert counts.tolist() == [1000] * 10


def test_data_dir_with_plain_and_gzipped_files(tmp_path):
    for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        with gzip.open(f'{DEBIAN_FASHION_MNIST}/{name}.gz', 'rb') as src, open(tmp_path / name, 'wb') as dst:
            shutil.copyfileobj(src, dst)
    plain = FashionMNIST(str(tmp_path), split='test')
    assert np.array_equal(plain.images, FashionMNIST(split='test').images)


def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match='not found in .*apt-get install dataset-fashion-mnist'):
        FashionMNIST(str(tmp_path / 'nowhere'))


def test_truncated_and_foreign_files(tmp_path):
    good = read_idx(f'{DEBIAN_FASHION_MNIST}/t10k-labels-idx1-ubyte.gz')
    assert good.shape == (10000,)
    with gzip.open(f'{DEBIAN_FASHION_MNIST}/t10k-labels-idx1-ubyte.gz', 'rb') as f:
        data = f.read()
    (tmp_path / 'short').write_bytes(data[:-10])
    with pytest.raises(ValueError, match='truncated or corrupt'):
        read_idx(str(tmp_path / 'short'))
    (tmp_path / 'png').write_bytes(b'\x89PNG\r\n\x1a\n....')
    with pytest.raises(ValueError, match='not an IDX file'):
        read_idx(str(tmp_path / 'png'))
    (tmp_path / 'broken.gz').write_bytes(b'\x1f\x8b\x08\x00garbage')
    with pytest.raises(ValueError, match='cannot read'):
        read_idx(str(tmp_path / 'broken.gz'))


def test_bad_split():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        FashionMNIST(split='val')
