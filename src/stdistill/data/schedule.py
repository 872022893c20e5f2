"""The deterministic data schedule: what every training step sees follows from a few integers.

Each training sample is augmented under random states seeded from (data_seed, epoch, rank,
position): its position in the process's sample order of that epoch (so the three copies of
an image that DeiT's repeated augmentation puts in one epoch get three augmentations).
Mixup/cutmix of a batch draw from (data_seed, epoch, step, rank). Python's `random`, NumPy's
global state and torch's CPU generator (what timm's and torchvision's transforms and timm's
Mixup draw from) are seeded for that one sample or batch and restored after it, so

- the images and mixed targets of a step do not depend on the worker count, on which worker
  loaded a sample, or on any other use of those generators (dropout, drop-path, MINE);
- a resumed run sees exactly the batches it would have seen, and
- runs that share a `data_seed` (default: `seed`) see the same batches: what the teacher-output
  store (store.py) relies on to replay a teacher pass.

The order of the samples is the sampler's: DistributedSampler seeded with data_seed, or timm's
RepeatAugSampler (seeded by the epoch alone, as timm does).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ['schedule_seed', 'seeded_random_states', 'ScheduleSampler', 'ScheduledDataset', 'scheduled_mixup']

_MASK64 = (1 << 64) - 1


def schedule_seed(*keys: int) -> int:
    """A 64-bit seed from integers (data_seed, epoch, ...), well mixed (NumPy's SeedSequence):
    neighbouring keys give unrelated streams. Negative keys are taken modulo 2**64."""
    words = np.random.SeedSequence([int(k) & _MASK64 for k in keys]).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


@contextlib.contextmanager
def seeded_random_states(seed: int) -> Iterator[None]:
    """Within the block, Python's `random`, NumPy's global state and torch's CPU generator start
    from `seed`; after it, all three are as they were (CUDA generators are not touched)."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)  # NumPy's legacy seeding takes 32 bits
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class ScheduleSampler(Sampler):
    """Wraps a training sampler: yields (epoch, rank, position, index) keys for ScheduledDataset.

    `skip` (a multiple of the batch size) starts the epoch at that position, with the positions
    keeping their numbers: a resumed teacher pass loads only the steps it has not stored."""

    def __init__(self, sampler: Sampler, rank: int = 0) -> None:
        self.sampler, self.rank, self.epoch, self.skip = sampler, rank, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Tuple[int, int, int, int]]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield self.epoch, self.rank, position, int(index)


class ScheduledDataset(Dataset):
    """A map-style dataset read with ScheduleSampler's keys: sample `index`, augmented under
    states seeded from (data_seed, epoch, rank, position). Returns (image, target, index), or
    None where the dataset gives None (an unreadable image, see loaders.StrictImageDataset)."""

    def __init__(self, dataset: Dataset, data_seed: int) -> None:
        self.dataset, self.data_seed = dataset, data_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int, int, int]) -> Optional[Tuple[Any, Any, int]]:
        epoch, rank, position, index = key
        with seeded_random_states(schedule_seed(self.data_seed, epoch, rank, position)):
            sample = self.dataset[index]
        return None if sample is None else (*sample[:2], index)


def scheduled_mixup(mixup: Optional[Callable], images: torch.Tensor, targets: torch.Tensor, data_seed: int,
                    epoch: int, step: int, rank: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup (or None: unchanged) of one batch, with its random draws (mixup or cutmix,
    lambda, the box) seeded from (data_seed, epoch, step, rank). images (B, C, H, W), targets (B,)
    -> mixed images and (B, classes) soft targets."""
    if mixup is None:
        return images, targets
    # a constant tag keeps batch streams apart from the per-sample streams of the same integers
    with seeded_random_states(schedule_seed(data_seed, epoch, step, rank, 0x4D49)):
        return mixup(images, targets)
