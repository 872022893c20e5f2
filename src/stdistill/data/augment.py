"""A guard on timm's auto-augment ops for Pillow releases that changed their contract.

RandAugment's 'Posterize' (timm `rand-m9-mstd0.5-inc1`, DeiT's recipe and our default) keeps
`4 - int(4 * magnitude / 10)` bits, which is 0 at the top magnitude. Pillow up to 12 turned
0 bits into an all-black image (the mask `~(2 ** 8 - 1)` clears every bit); Pillow 13 refuses
0 bits (`bits must be between or equal to 1 and 8`), which stops a run on about one image in
400. `guard_posterize` swaps timm's posterize inside a built transform for one that keeps the
old meaning whatever Pillow is installed, without patching timm for other code in the process.
"""
from __future__ import annotations

from typing import Any, Callable

from PIL import Image, ImageOps
from timm.data import auto_augment

__all__ = ['posterize', 'guard_posterize']


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize with Pillow <= 12 semantics: 8 bits or more is the image, 0 (or fewer)
    is all black (every band zero), 1..7 is `ImageOps.posterize`."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def guard_posterize(transform: Callable) -> Callable:
    """Replace timm's posterize by `posterize` in every auto-augment op inside `transform`
    (a torchvision Compose, timm's RandAugment / AutoAugment / AugMix, nested); returns it."""
    seen = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, auto_augment.AugmentOp):
            if obj.aug_fn is auto_augment.posterize:
                obj.aug_fn = posterize
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
            return
        for attr in ('transforms', 'ops', 'policy'):  # Compose, RandAugment/AugMix, AutoAugment
            if hasattr(obj, attr):
                walk(getattr(obj, attr))

    walk(transform)
    return transform
