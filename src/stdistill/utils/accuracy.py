"""What a top-1 on a validation split means: its uncertainty, and whether it beats chance.

A top-1 is a count of correct images out of n, so on a small split it is noisy: 1 image is 1.67
points at n = 60. Every top-1 stdistill prints on fewer than `INTERVAL_BELOW` images carries
its 95% Wilson score interval (Wilson, 1927; it stays inside [0, 100] and behaves at 0 and n
correct, where the normal approximation does not).

A model is **at chance** when its top-1 is not clearly above what it gets without looking at
the image: the larger of 1/K (K classes) and the most frequent class's share of the split.
"Clearly" is the interval's lower bound (on n >= INTERVAL_BELOW images, where the interval is
not printed, the same bound is used). A run at chance has learned nothing usable; every place
that reports or consumes a trained model says so.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Tuple

__all__ = ['INTERVAL_BELOW', 'wilson_interval', 'chance_top1', 'at_chance', 'format_top1', 'chance_note',
           'is_at_chance']

INTERVAL_BELOW = 1000  # images: a split this small gets its interval printed beside every top-1
_Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(top1: float, images: int, z: float = _Z95) -> Tuple[float, float]:
    """The 95% Wilson score interval (percent) of a top-1 (percent) measured on `images` images."""
    if images <= 0:
        return 0.0, 100.0
    p = top1 / 100.0
    denom = 1 + z * z / images
    centre = (p + z * z / (2 * images)) / denom
    half = z * math.sqrt(p * (1 - p) / images + z * z / (4 * images * images)) / denom
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def chance_top1(num_classes: int, majority_share: Optional[float] = None) -> float:
    """Top-1 (percent) without looking at the image: 100/K, or the most frequent class's share
    (percent) of the split when that is larger."""
    return max(100.0 / max(num_classes, 1), majority_share or 0.0)


def at_chance(top1: float, images: int, chance: float) -> bool:
    """Whether a top-1 (percent) on `images` images is not clearly above `chance` (percent): the
    lower bound of its 95% interval does not exceed it."""
    return wilson_interval(top1, images)[0] <= chance


def format_top1(top1: float, images: int) -> str:
    """'95.00', or '95.00 (95% CI 86.3-98.3 on 60 images)' on a split under INTERVAL_BELOW images."""
    if images >= INTERVAL_BELOW:
        return f'{top1:.2f}'
    low, high = wilson_interval(top1, images)
    return f'{top1:.2f} (95% CI {low:.1f}-{high:.1f} on {images} images)'


def chance_note(metrics: Mapping[str, float], prefix: str = 'val_') -> Optional[str]:
    """For a row of evaluated metrics (`{prefix}top1`, `{prefix}images`, `{prefix}chance_top1`, as
    engine.evaluate returns and log.jsonl keeps them): the words that flag a top-1 at chance
    (starting 'AT CHANCE'), or that the split is too small to tell (even 100% would not be clearly
    above chance on it); None when it is clearly above chance (or the row predates the chance level)."""
    chance = metrics.get(f'{prefix}chance_top1')
    if chance is None:
        return None
    top1, images = metrics[f'{prefix}top1'], int(metrics[f'{prefix}images'])
    if not at_chance(top1, images, chance):
        return None
    if at_chance(100.0, images, chance):
        return (f'{images} validation image(s) are too few to tell any top-1 from chance ({chance:.2f}): score it '
                f'on more images')
    return (f'AT CHANCE: top-1 {top1:.2f} is not clearly above {chance:.2f}, what always guessing the most '
            f'frequent class gets on these {images} images; this model does no better than a constant guess')


def is_at_chance(note: Optional[str]) -> bool:
    """Whether a chance_note says the model is at chance (not merely that the split is too small)."""
    return bool(note) and note.startswith('AT CHANCE')
