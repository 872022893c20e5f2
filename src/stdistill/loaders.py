"""The data pipeline: timm datasets and transforms, DeiT's samplers, mixup.

Datasets: `fashion-mnist` (our IDX reader), an ImageFolder/ImageNet layout (`dataset: ''`),
and anything `timm.data.create_dataset` knows by a prefixed name (`hfds/...`, `torch/...`).
Training uses DeiT's repeated-augmentation sampler (timm's `RepeatAugSampler`) or a seeded
shuffling sampler; evaluation shards the set across processes without padding, so every
image is counted exactly once.

An unreadable image (corrupt, truncated, not an image) is never trained on in silence. With
`bad_images: skip` it is left out of its batch, a warning names the file, and the epoch's log
row counts it (`skipped_images`, `val_skipped_images`); with `bad_images: stop` the run ends
with one line naming the file. (timm's own dataset would log a warning and substitute the next
image, uncounted.) Either way the failure is handled inside the worker, so it never kills a
DataLoader worker process.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

import torch
from PIL import Image
from timm.data import Mixup, create_dataset, create_transform
from timm.data.dataset import ImageDataset
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, default_collate

from .augment import guard_posterize
from .config import TrainConfig
from .data import FashionMNIST
from .distributed import DistInfo
from .teachers import _first_line

__all__ = ['DataBundle', 'build_data', 'build_eval_loader', 'build_transforms', 'build_mixup', 'StrictImageDataset',
           'dataset_num_classes', 'collate_readable', 'FASHION_MNIST_NORM']

FASHION_MNIST_NORM = ((0.2860,), (0.3530,))
_ITERABLE_PREFIXES = ('tfds/', 'wds/', 'hfids/')


class StrictImageDataset(Dataset):
    """timm's ImageDataset, but an unreadable image is never replaced in silence: with
    on_bad_image='stop' it is an error naming the file; with 'skip' the sample is None (left out
    of its batch and counted by `collate_readable`) and a warning names the file once."""

    def __init__(self, dataset: ImageDataset, on_bad_image: str = 'stop') -> None:
        if on_bad_image not in ('skip', 'stop'):
            raise ValueError(f"bad_images must be 'skip' or 'stop', got {on_bad_image!r}")
        self.reader, self.transform = dataset.reader, dataset.transform
        self.input_img_mode = dataset.input_img_mode or 'RGB'
        self.on_bad_image, self.warned = on_bad_image, set()

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Optional[Tuple[Any, int]]:
        img, target, *_ = self.reader[index]
        try:
            img = Image.open(img)
            img.load()  # decode now: a truncated file fails here, not later inside a transform
            img = img.convert(self.input_img_mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            name = self.reader.filename(index, absolute=True)
            reason = str(e).splitlines()[0][:120] if str(e).strip() else type(e).__name__
            if self.on_bad_image == 'stop':
                raise ValueError(f'cannot read image {name} ({reason}): remove or replace it, '
                                 f'or set bad_images: skip') from None
            if name not in self.warned:  # once per file and process: each epoch would repeat it
                self.warned.add(name)
                print(f'stdistill: warning: skipping unreadable image {name} ({reason})', file=sys.stderr)
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, -1 if target is None else target


def collate_readable(samples: List[Optional[Tuple[Any, int]]]) -> Tuple[Any, Any, int]:
    """default_collate over the samples that could be read, and the count of those that could not
    (None): (images, targets, skipped). A batch with no readable image is (None, None, skipped)."""
    readable = [s for s in samples if s is not None]
    if not readable:
        return None, None, len(samples)
    images, targets = default_collate(readable)
    return images, targets, len(samples) - len(readable)


def dataset_num_classes(dataset: Dataset) -> Optional[int]:
    if hasattr(dataset, 'classes'):
        return len(dataset.classes)
    reader = getattr(dataset, 'reader', None)
    for attr in ('class_to_idx', 'num_classes'):
        value = getattr(reader, attr, None)
        if value:
            return len(value) if isinstance(value, dict) else int(value)
    return None


def open_dataset(cfg: TrainConfig, split: str, transform: Callable) -> Dataset:
    name = cfg.dataset
    if name in ('fashion-mnist', 'fashion_mnist'):
        fm_split = {'train': 'train', 'test': 'test', 'validation': 'test', 'val': 'test'}.get(split)
        if fm_split is None:
            raise ValueError(f"fashion-mnist splits are train and test (or validation), got {split!r}")
        return FashionMNIST(cfg.data_dir, fm_split, transform, download=cfg.download)
    if name.startswith(_ITERABLE_PREFIXES):
        raise ValueError(f'dataset {name}: streaming datasets are not supported; use a map-style one '
                         f'(an image folder, hfds/..., torch/...)')
    folder = name in ('', 'folder', 'imagefolder')
    if folder and not cfg.data_dir:
        raise ValueError('dataset is an image folder but data_dir is not set')
    if cfg.data_dir and not cfg.download and not os.path.isdir(cfg.data_dir):
        raise ValueError(f'data folder not found: {cfg.data_dir}')
    mode = 'L' if cfg.in_chans == 1 else 'RGB'
    try:
        ds = create_dataset('' if folder else name, root=cfg.data_dir, split=split, is_training=split == cfg.train_split,
                            download=cfg.download, input_img_mode=mode, transform=transform)
    except (RuntimeError, AssertionError, OSError, ValueError, KeyError) as e:
        raise ValueError(f'cannot open dataset {name or "folder"} split {split!r} in {cfg.data_dir}: '
                         f'{_first_line(e)}') from None
    if len(ds) == 0:
        raise ValueError(f'dataset {name or cfg.data_dir} split {split!r} holds no images')
    return StrictImageDataset(ds, cfg.bad_images) if isinstance(ds, ImageDataset) else ds


def _to_rgb(img: Image.Image) -> Image.Image:
    return img.convert('RGB')


def build_transforms(cfg: TrainConfig, mean: Tuple[float, ...], std: Tuple[float, ...]) -> Tuple[Callable, Callable]:
    size = (cfg.in_chans, cfg.img_size, cfg.img_size)
    try:
        train = create_transform(size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                                 hflip=cfg.hflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa,
                                 interpolation=cfg.interpolation, mean=mean, std=std, re_prob=cfg.reprob,
                                 re_mode=cfg.remode, re_count=cfg.recount)
    except (AssertionError, ValueError, KeyError, IndexError) as e:  # timm asserts on an unknown aa spec
        raise ValueError(f'cannot build the training augmentation (aa={cfg.aa!r}): {_first_line(e)}; see timm\'s '
                         f'auto_augment specs, e.g. rand-m9-mstd0.5-inc1, or aa=null') from None
    val = create_transform(size, is_training=False, interpolation=cfg.interpolation, mean=mean, std=std,
                           crop_pct=cfg.crop_pct)
    guard_posterize(train)  # Pillow 13 refuses RandAugment's 0-bit posterize (augment.py)
    if cfg.dataset in ('fashion-mnist', 'fashion_mnist') and cfg.in_chans == 3:
        from torchvision import transforms
        train, val = transforms.Compose([_to_rgb, train]), transforms.Compose([_to_rgb, val])
    return train, val


def build_mixup(cfg: TrainConfig, num_classes: int) -> Optional[Mixup]:
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                 mode=cfg.mixup_mode, label_smoothing=cfg.smoothing, num_classes=num_classes)


def _fixed_subset(ds: Dataset, count: int, seed: int) -> Dataset:
    if count <= 0 or count >= len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return Subset(ds, sorted(order[:count].tolist()))


class DataBundle(NamedTuple):
    train_loader: DataLoader
    val_loader: DataLoader
    num_classes: int
    loader_generator: torch.Generator  # reseeded each epoch so worker seeds depend on (seed, epoch) only


def _val_loader(cfg: TrainConfig, info: DistInfo, transform: Callable, pin_memory: bool) -> DataLoader:
    val_set = _fixed_subset(open_dataset(cfg, cfg.val_split, transform), cfg.val_samples, cfg.seed + 1)
    shard = Subset(val_set, range(info.rank, len(val_set), info.world_size))
    return DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                      generator=torch.Generator().manual_seed(0), pin_memory=pin_memory,
                      collate_fn=collate_readable)


def build_eval_loader(cfg: TrainConfig, info: DistInfo, mean: Tuple[float, ...], std: Tuple[float, ...],
                      pin_memory: bool = False) -> DataLoader:
    return _val_loader(cfg, info, build_transforms(cfg, mean, std)[1], pin_memory)


def build_data(cfg: TrainConfig, info: DistInfo, mean: Tuple[float, ...], std: Tuple[float, ...],
               pin_memory: bool = False) -> DataBundle:
    """Training and validation loaders of cfg for this process. pin_memory: for a CUDA device only
    (page-locked host memory speeds up the copy to a GPU and is wasted on a CPU run)."""
    train_tf, val_tf = build_transforms(cfg, mean, std)
    train_set = open_dataset(cfg, cfg.train_split, train_tf)
    found = dataset_num_classes(train_set)
    num_classes = cfg.num_classes or found
    if num_classes is None:
        raise ValueError(f'cannot tell the class count of dataset {cfg.dataset}; set num_classes')
    if found is not None and cfg.num_classes is not None and found != cfg.num_classes:
        raise ValueError(f'num_classes is {cfg.num_classes} but the training data has {found} classes; '
                         f'fix num_classes (or leave it null to read it from the data)')
    train_set = _fixed_subset(train_set, cfg.train_samples, cfg.seed)
    if cfg.repeated_aug:
        sampler = RepeatAugSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True)
    else:
        sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed)
    generator = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              drop_last=True, pin_memory=pin_memory, generator=generator,
                              collate_fn=collate_readable)
    if len(train_loader) == 0:
        raise ValueError(f'the training set ({len(train_set)} images{", repeated augmentation" if cfg.repeated_aug else ""} '
                         f'over {info.world_size} process(es)) gives no full batch of {cfg.batch_size}; '
                         f'lower batch_size{" or set repeated_aug=false" if cfg.repeated_aug else ""}')
    return DataBundle(train_loader, _val_loader(cfg, info, val_tf, pin_memory), num_classes, generator)
