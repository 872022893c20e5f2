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

import dataclasses
import logging
import os
from collections import Counter
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from PIL import Image
from timm.data import Mixup, create_dataset, create_transform
from timm.data.dataset import ImageDataset
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, default_collate

from .augment import guard_posterize
from ..config import TrainConfig
from .fashion_mnist import FashionMNIST
from ..utils.distributed import DistInfo
from ..utils.errors import UserError, first_line
from .folders import FolderReader, describe_counts, describe_left_out, find_split, read_class_map
from .images import to_model_mode
from ..utils.log import ALL_RANKS
from ..methods import min_batch_size
from .schedule import ScheduledDataset, ScheduleSampler

__all__ = ['DataBundle', 'build_data', 'build_eval_loader', 'build_transforms', 'build_mixup', 'StrictImageDataset',
           'dataset_num_classes', 'dataset_classes', 'check_batch_size', 'data_seed_of', 'collate_readable', 'fit_batch_size',
           'FASHION_MNIST_NORM', 'fit_workers']

_logger = logging.getLogger(__name__)

FASHION_MNIST_NORM = ((0.2860,), (0.3530,))
_ITERABLE_PREFIXES = ('tfds/', 'wds/', 'hfids/')


class StrictImageDataset(Dataset):
    """Images of a timm Reader, but an unreadable image is never replaced in silence (as timm's
    ImageDataset does): with on_bad_image='stop' it is an error naming the file; with 'skip' the
    sample is None (left out of its batch and counted by `collate_readable`) and a warning names
    the file once. Every PIL mode becomes `input_img_mode` with its range scaled (images.py)."""

    def __init__(self, reader: Any, transform: Optional[Callable], input_img_mode: str = 'RGB',
                 on_bad_image: str = 'stop') -> None:
        if on_bad_image not in ('skip', 'stop'):
            raise UserError(f"bad_images must be 'skip' or 'stop', got {on_bad_image!r}")
        self.reader, self.transform, self.input_img_mode = reader, transform, input_img_mode
        self.on_bad_image, self.warned = on_bad_image, set()

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Optional[Tuple[Any, int]]:
        img, target, *_ = self.reader[index]
        name = self.reader.filename(index, absolute=True)
        try:
            img = img if isinstance(img, Image.Image) else Image.open(img)
            img.load()  # decode now: a truncated file fails here, not later inside a transform
            img = to_model_mode(img, self.input_img_mode, name)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            reason = str(e).splitlines()[0][:200] if str(e).strip() else type(e).__name__
            if self.on_bad_image == 'stop':
                raise UserError(f'cannot read image {name} ({reason}): remove or replace it, '
                                f'or set bad_images: skip') from None
            if name not in self.warned:  # once per file and process: each epoch would repeat it
                self.warned.add(name)
                _logger.warning(f'skipping unreadable image {name} ({reason})', extra=ALL_RANKS)  # its shard's process alone sees it
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, -1 if target is None else target


def collate_readable(samples: List[Optional[Tuple[Any, ...]]]) -> Tuple[Any, ...]:
    """default_collate over the samples that could be read, and the count of those that could not
    (None): (images, targets, skipped), and the dataset indices (B,) after them for samples of
    schedule.ScheduledDataset. A batch with no readable image is (None, None, skipped[, None])."""
    readable = [s for s in samples if s is not None]
    if not readable:
        return None, None, len(samples), None
    images, targets, *rest = default_collate(readable)
    return (images, targets, len(samples) - len(readable), *rest)


def dataset_classes(dataset: Dataset) -> Optional[List[str]]:
    """The class names of a dataset in index order, when it knows them."""
    if isinstance(dataset, Subset):
        return dataset_classes(dataset.dataset)
    if getattr(dataset, 'classes', None) is not None:
        return [str(c) for c in dataset.classes]
    mapping = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    if isinstance(mapping, dict) and mapping:
        return [str(c) for c, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    return None


def dataset_num_classes(dataset: Dataset) -> Optional[int]:
    """The class count of a dataset that names no classes but counts them (timm readers)."""
    classes = dataset_classes(dataset)
    if classes is not None:
        return len(classes)
    value = getattr(getattr(dataset, 'reader', None), 'num_classes', None)
    return int(value) if value else None


def _labels(dataset: Dataset) -> Optional[Sequence[int]]:
    """Each image's label index, when the dataset lists them without decoding images (a Subset:
    those of the images it holds)."""
    if isinstance(dataset, Subset):
        labels = _labels(dataset.dataset)
        return None if labels is None else [labels[i] for i in dataset.indices]
    reader = getattr(dataset, 'reader', None)
    if isinstance(reader, FolderReader):
        return [label for _, label in reader.samples]
    return getattr(dataset, 'targets', None)


def dataset_counts(dataset: Dataset, classes: Sequence[str]) -> Optional[Counter]:
    """Images per class name of the images the dataset holds (a Subset: its own), when it lists
    its labels without decoding images."""
    labels = _labels(dataset)
    if labels is None:
        return None
    return Counter(classes[int(t)] for t in labels if 0 <= int(t) < len(classes))


def _is_folder(cfg: TrainConfig) -> bool:
    return cfg.dataset in ('', 'folder', 'imagefolder')


def open_dataset(cfg: TrainConfig, split: str, transform: Callable, classes: Optional[Sequence[str]] = None) -> Dataset:
    """One split of cfg's dataset. classes: the run's class map (an image folder is labelled with
    it; another dataset must have these classes); None: the split's own (the training split)."""
    name = cfg.dataset
    if cfg.class_map and not _is_folder(cfg):
        raise UserError(f'class_map applies to image folders; dataset {name} fixes its own classes: remove class_map')
    if name in ('fashion-mnist', 'fashion_mnist'):
        fm_split = {'train': 'train', 'test': 'test', 'validation': 'test', 'val': 'test'}.get(split)
        if fm_split is None:
            raise UserError(f"fashion-mnist splits are train and test (or validation), got {split!r}")
        ds = FashionMNIST(cfg.data_dir, fm_split, transform, download=cfg.download)
    elif name.startswith(_ITERABLE_PREFIXES):
        raise UserError(f'dataset {name}: streaming datasets are not supported; use a map-style one '
                        f'(an image folder, hfds/..., torch/...)')
    elif _is_folder(cfg):
        if not cfg.data_dir:
            raise UserError('dataset is an image folder but data_dir is not set')
        if not os.path.isdir(cfg.data_dir):
            raise UserError(f'data folder not found: {cfg.data_dir}')
        if classes is None and cfg.class_map:
            classes = read_class_map(cfg.class_map)
        reader = FolderReader(find_split(cfg.data_dir, split), classes, split)
        return StrictImageDataset(reader, transform, 'L' if cfg.in_chans == 1 else 'RGB', cfg.bad_images)
    else:
        ds = _open_timm_dataset(cfg, split, transform)
    found = dataset_classes(ds)
    if classes is not None and found is not None and list(found) != list(classes):
        raise UserError(f'dataset {name} split {split!r} has classes {_short(found)}, the training split '
                        f'{_short(classes)}: use splits of one dataset')
    return ds


def _short(names: Sequence[str], count: int = 5) -> str:
    return '[' + ', '.join(map(str, names[:count])) + (', ...' if len(names) > count else '') + ']'


def _open_timm_dataset(cfg: TrainConfig, split: str, transform: Callable) -> Dataset:
    """A dataset timm's create_dataset knows by name (torch/..., hfds/...)."""
    if cfg.data_dir and not cfg.download and not os.path.isdir(cfg.data_dir):
        raise UserError(f'data folder not found: {cfg.data_dir}')
    mode = 'L' if cfg.in_chans == 1 else 'RGB'
    try:
        ds = create_dataset(cfg.dataset, root=cfg.data_dir, split=split, is_training=split == cfg.train_split,
                            download=cfg.download, input_img_mode=mode, transform=transform)
    except (RuntimeError, AssertionError, OSError, ValueError, KeyError) as e:
        raise UserError(f'cannot open dataset {cfg.dataset} split {split!r} in {cfg.data_dir}: '
                        f'{first_line(e)}') from None
    if len(ds) == 0:
        raise UserError(f'dataset {cfg.dataset} split {split!r} holds no images')
    if isinstance(ds, ImageDataset):
        return StrictImageDataset(ds.reader, transform, mode, cfg.bad_images)
    return ds


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
        raise UserError(f'cannot build the training augmentation (aa={cfg.aa!r}): {first_line(e)}; see timm\'s '
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


def split_holdout(ds: Dataset, train_samples: int, holdout: int, seed: int) -> Tuple[Dataset, Optional[Dataset]]:
    """(training images, holdout images) of a training split: one random order of the split (from
    `seed`); training takes its first `train_samples` (0: all but the holdout), the holdout its
    last `holdout`. So with train_samples + holdout <= the split, the training images are those
    of a run without a holdout. Raises UserError when the split cannot give both."""
    if holdout <= 0:
        return _fixed_subset(ds, train_samples, seed), None
    size = len(ds)
    train = train_samples if 0 < train_samples < size else size - holdout
    if holdout >= size or train < 1 or train + holdout > size:
        raise UserError(f'holdout {holdout} and train_samples {train_samples or "0 (all)"}: the training split has '
                        f'{size} images, too few for both: lower holdout or train_samples')
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(ds, sorted(order[:train])), Subset(ds, sorted(order[size - holdout:]))


class DataBundle(NamedTuple):
    train_loader: DataLoader
    val_loader: DataLoader
    num_classes: int
    loader_generator: torch.Generator  # reseeded each epoch so worker seeds depend on (seed, epoch) only
    classes: Optional[List[str]]  # the run's class map (names in index order), when the data names them
    report: List[str]  # what setup found: images per class of each split, files left out
    batch_size: int  # per process: cfg.batch_size, or lower on a small training set (min_updates_per_epoch)
    holdout_loader: Optional[DataLoader] = None  # training images held out (cfg.holdout), evaluation transform


def _describe(ds: Dataset, split: str, classes: Optional[Sequence[str]]) -> List[str]:
    """What the run uses of a split (a Subset: the images it holds, 'of' how many there are)."""
    whole = ds.dataset if isinstance(ds, Subset) else ds
    of = f' (a subset of its {len(whole)})' if whole is not ds else ''
    if classes is None:
        return [f'{split}: {len(ds)} images{of}']
    counts = dataset_counts(ds, classes)
    lines = [(describe_counts(split, classes, counts) if counts is not None
              else f'{split}: {len(ds)} images in {len(classes)} classes') + of]
    reader = getattr(whole, 'reader', None)
    if isinstance(reader, FolderReader) and reader.left_out:
        lines.append(f'{split}: {describe_left_out(reader.left_out)}')
    if isinstance(reader, FolderReader) and os.path.basename(reader.root) != split:  # a synonym: say which
        lines[0] = lines[0].replace(f'{split}:', f'{split} ({reader.root}):', 1)
    return lines


def _val_subset(cfg: TrainConfig, val_set: Dataset) -> Dataset:
    """The validation images a run scores: val_samples of them (0: all), the same for every seed of a data_seed."""
    return _fixed_subset(val_set, cfg.val_samples, data_seed_of(cfg) + 1)


def _val_loader(cfg: TrainConfig, info: DistInfo, val_set: Dataset, pin_memory: bool) -> DataLoader:
    shard = Subset(val_set, range(info.rank, len(val_set), info.world_size))
    return DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                      generator=torch.Generator().manual_seed(0), pin_memory=pin_memory,
                      collate_fn=collate_readable)


def build_eval_loader(cfg: TrainConfig, info: DistInfo, mean: Tuple[float, ...], std: Tuple[float, ...],
                      classes: Optional[Sequence[str]] = None, pin_memory: bool = False) -> DataLoader:
    """The validation loader of cfg, labelled with `classes` (a trained model's class map) when given."""
    val_set = _val_subset(cfg, open_dataset(cfg, cfg.val_split, build_transforms(cfg, mean, std)[1], classes))
    return _val_loader(cfg, info, val_set, pin_memory)


def data_seed_of(cfg: TrainConfig) -> int:
    """The seed of the data schedule: cfg.data_seed, or cfg.seed when it is null."""
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


def check_batch_size(cfg: TrainConfig, info: DistInfo, mixup_active: bool, batch_norm: bool = False) -> None:
    """Refuse, in one line saying what to change, a per-process batch size that mixup (pairs),
    MINE (a derangement) or a BatchNorm student (batch statistics) cannot use."""
    per = f'batch_size {cfg.batch_size}' + (f' (per process, {info.world_size} processes)' if info.distributed else '')
    if mixup_active and cfg.batch_size % 2:
        raise UserError(f'{per} is odd, and mixup/cutmix mix the images of a batch in pairs: set batch_size='
                        f'{cfg.batch_size + 1}, or turn them off (mixup=0 cutmix=0)')
    if cfg.batch_size < min_batch_size(cfg.method, cfg.mine, cfg.tokens):
        raise UserError(f'{per}: MINE pairs the tokens of one image with those of another, so it needs at least 2 '
                        f'images a batch: raise batch_size, or set mine=false')
    if batch_norm and cfg.batch_size < 2:
        raise UserError(f'{per}: the student\'s BatchNorm layers need at least 2 images a batch to train: raise '
                        f'batch_size')


def build_data(cfg: TrainConfig, info: DistInfo, mean: Tuple[float, ...], std: Tuple[float, ...],
               pin_memory: bool = False) -> DataBundle:
    """Training and validation loaders of cfg for this process, with one class map: the training
    split's (or cfg.class_map's), which the validation split is opened with. pin_memory: for a
    CUDA device only (page-locked host memory speeds up the copy to a GPU and is wasted on a CPU run)."""
    train_tf, val_tf = build_transforms(cfg, mean, std)
    train_set = open_dataset(cfg, cfg.train_split, train_tf)
    classes = dataset_classes(train_set)
    val_set = open_dataset(cfg, cfg.val_split, val_tf, classes)
    found = len(classes) if classes is not None else dataset_num_classes(train_set)
    num_classes = cfg.num_classes or found
    if num_classes is None:
        raise UserError(f'cannot tell the class count of dataset {cfg.dataset}; set num_classes')
    if found is not None and cfg.num_classes is not None and found != cfg.num_classes:
        raise UserError(f'num_classes is {cfg.num_classes} but the training data has {found} classes; '
                        f'fix num_classes (or leave it null to read it from the data)')
    data_seed = data_seed_of(cfg)
    train_set, held = split_holdout(train_set, cfg.train_samples, cfg.holdout, data_seed)
    val_set = _val_subset(cfg, val_set)
    # what the run trains on and scores, not what the folders hold
    # Fashion-MNIST has no validation split: its test set is evaluated, and said to be
    scored = f'{cfg.val_split} (Fashion-MNIST\'s test set)' if cfg.dataset == 'fashion-mnist' else cfg.val_split
    report = _describe(train_set, cfg.train_split, classes) + _describe(val_set, scored, classes)
    holdout_loader = None
    if held is not None:  # the same images, seen as evaluation sees them
        held = Subset(open_dataset(cfg, cfg.train_split, val_tf, classes), held.indices)
        holdout_loader = _val_loader(cfg, info, held, pin_memory)
        report.append(f'holdout: {len(held)} images of {cfg.train_split}, not trained on, on which inference_head '
                      f'auto chooses the head')
    if cfg.repeated_aug:
        sampler = RepeatAugSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True)
    else:
        sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=data_seed)
    # every sample augmented from (data_seed, epoch, rank, position): schedule.py
    sampler, train_set = ScheduleSampler(sampler, info.rank), ScheduledDataset(train_set, data_seed)
    batch_size = fit_batch_size(cfg, len(sampler), build_mixup(cfg, num_classes) is not None)
    if batch_size != cfg.batch_size:
        report.append(f'batch_size {cfg.batch_size} -> {batch_size}: {len(sampler)} training images a process give '
                      f'{len(sampler) // cfg.batch_size} update(s) an epoch at {cfg.batch_size}, and '
                      f'min_updates_per_epoch asks for {cfg.min_updates_per_epoch} (min_updates_per_epoch=0 keeps '
                      f'batch_size)')
        cfg = dataclasses.replace(cfg, batch_size=batch_size)
    generator = torch.Generator()
    # drop_last, as timm and DeiT: every step a full batch; the images left over are counted per epoch
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                              drop_last=True, pin_memory=pin_memory, generator=generator,
                              collate_fn=collate_readable)
    if len(train_loader) == 0:
        raise UserError(f'the training set ({len(train_set)} images{", repeated augmentation" if cfg.repeated_aug else ""} '
                        f'over {info.world_size} process(es)) gives no full batch of {cfg.batch_size}; '
                        f'lower batch_size{" or set repeated_aug=false" if cfg.repeated_aug else ""}')
    return DataBundle(train_loader, _val_loader(cfg, info, val_set, pin_memory), num_classes, generator,
                      list(classes) if classes is not None else None, report, cfg.batch_size, holdout_loader)


def fit_batch_size(cfg: TrainConfig, images: int, mixup_active: bool) -> int:
    """The batch size a process trains with: cfg.batch_size, or, when `images` (this process's
    share of an epoch) give fewer than cfg.min_updates_per_epoch full batches, the largest that
    gives that many (at least 2, for BatchNorm and MINE; even under mixup, which pairs images)."""
    wanted = cfg.min_updates_per_epoch
    if not wanted or images // cfg.batch_size >= wanted:
        return cfg.batch_size
    size = max(2, images // wanted)
    if mixup_active and size % 2:
        size -= 1
    return min(size, cfg.batch_size)


def fit_workers(cfg: TrainConfig, info: DistInfo) -> TrainConfig:
    """cfg with at most as many data-loader workers as this process has CPUs (more only contend;
    torch warns of them), said once."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    if cfg.workers <= cpus:
        return cfg
    if info.is_main:
        _logger.info(f'stdistill: workers {cfg.workers} -> {cpus}: this machine gives a process {cpus} CPU(s)')
    return dataclasses.replace(cfg, workers=cpus)
