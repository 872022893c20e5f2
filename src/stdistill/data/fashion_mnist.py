"""Fashion-MNIST from the standard IDX files, for quickstarts and small real-data runs.

Where the files come from, in order: `data_dir` if given; Debian's package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist); torchvision's download when
online (`download=True`). Otherwise a one-line error says how to get them.

The files may be gzipped (as Debian and the original site ship them) or not (as torchvision
leaves them after its download).
"""
from __future__ import annotations

import gzip
import os
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ..utils.errors import UserError
from ..utils.hints import command

__all__ = ['FashionMNIST', 'read_idx', 'find_fashion_mnist', 'DEBIAN_FASHION_MNIST', 'FASHION_MNIST_CLASSES']

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
           0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


# what to do about a damaged file; an interrupted download leaves one behind
_REFETCH = 'delete it and fetch it again (download: true, or apt-get install --reinstall dataset-fashion-mnist)'


def read_idx(path: str) -> np.ndarray:
    """An IDX array (the MNIST file format), gzipped or not."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f'cannot read {path}, truncated or corrupt ({e}): {_REFETCH}') from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UserError(f'{path} is not an IDX file (bad magic number)')
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise UserError(f'{path} is truncated or corrupt ({len(data) - header} bytes of data, '
                        f'header says {expected}): {_REFETCH}')
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _locate(folder: str, name: str) -> Optional[str]:
    for candidate in (name, name + '.gz'):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def find_fashion_mnist(data_dir: Optional[str] = None, split: str = 'train') -> Tuple[str, str]:
    """Paths of the images and labels files of a split, or a UserError saying how to get them."""
    if split not in _FILES:
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    # a given folder, flat or in torchvision's layout; else Debian's package
    folders = [data_dir, os.path.join(data_dir, 'FashionMNIST', 'raw')] if data_dir else [DEBIAN_FASHION_MNIST]
    for folder in folders:
        paths = [_locate(folder, name) for name in _FILES[split]]
        if all(paths):
            return paths[0], paths[1]
    files = f'{_FILES[split][0]}[.gz] and {_FILES[split][1]}[.gz]'
    install = command('apt-get', 'install', 'dataset-fashion-mnist')
    if data_dir:  # installing Debian's package would not put them there
        raise UserError(f'Fashion-MNIST {split} files not found in {data_dir}: set data_dir to the folder holding '
                        f'{files}, or remove data_dir to read Debian\'s package ({install})')
    raise UserError(f'Fashion-MNIST {split} files not found in {DEBIAN_FASHION_MNIST}: install them with {install}, '
                    f'or set data_dir to a folder holding {files}')


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST as PIL images (mode 'L', 28x28) and integer labels, like torchvision's."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, data_dir: Optional[str] = None, split: str = 'train',
                 transform: Optional[Callable] = None, download: bool = False) -> None:
        try:
            images_path, labels_path = find_fashion_mnist(data_dir, split)
        except UserError:
            if not (download and data_dir):
                raise
            _download(data_dir)
            images_path, labels_path = find_fashion_mnist(data_dir, split)
        self.images = read_idx(images_path)
        self.targets = read_idx(labels_path).astype(np.int64)
        if self.images.ndim != 3 or len(self.images) != len(self.targets):
            raise UserError(f'{images_path} and {labels_path} do not match: '
                            f'{self.images.shape} images, {self.targets.shape} labels')
        bad = np.flatnonzero((self.targets < 0) | (self.targets >= len(self.classes)))
        if len(bad):
            raise UserError(f'{labels_path} is damaged: label {int(self.targets[bad[0]])} of image {int(bad[0])} is not '
                            f'one of the {len(self.classes)} classes; delete it and fetch it again')
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])  # uint8 HxW -> mode 'L'
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def _download(data_dir: str) -> None:
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST
    try:
        TorchvisionFashionMNIST(data_dir, download=True)
    except Exception as e:  # offline: urllib/http errors of many kinds
        raise UserError(f'cannot download Fashion-MNIST into {data_dir} ({type(e).__name__}): remove data_dir and '
                        f'download to read Debian\'s package, {command("apt-get", "install", "dataset-fashion-mnist")}'
                        ) from None
