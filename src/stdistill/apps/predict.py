"""Top-k classes of images, with the preprocessing the model was trained with.

    stdistill predict runs/my_std a.png b.jpg           # or an exported folder; --json, --top-k 3

The model is a run folder's best student (or `--ema`) or a folder `stdistill export` wrote.
Each image goes through the run's evaluation transform (resize, centre crop, mean/std) after
`to_model_mode` (every PIL mode, its range scaled), so a prediction sees what evaluation saw.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import torch
from PIL import Image

from ..training.builders import resolve_norm
from ..utils.errors import UserError
from .export import load_exported, load_run_student
from ..data.images import to_model_mode
from ..data.loaders import build_transforms

__all__ = ['predict']


def predict(target: str, images: List[str], top_k: int = 5, ema: bool = False,
            batch_size: int = 64) -> List[Dict[str, Any]]:
    """For each image path: {'image', 'top': [{'class', 'index', 'probability'}, ...]} (top_k,
    softmax probabilities in [0, 1], best first), `batch_size` images at a time. Raises
    UserError (one line) for a target that is neither a run nor an export, and for an image
    that cannot be read."""
    if top_k < 1:
        raise UserError(f'--top-k must be at least 1, got {top_k}')
    if os.path.isfile(os.path.join(target, 'config.yaml')):
        loaded = load_run_student(target, ema=ema)
    elif ema:
        raise UserError(f'--ema applies to a run folder; {target} is not one (export with --ema instead)')
    else:
        loaded = load_exported(target)
    mean, std = resolve_norm(loaded.cfg)
    transform = build_transforms(loaded.cfg, mean, std)[1]
    mode = 'L' if loaded.cfg.in_chans == 1 else 'RGB'
    results = []
    for start in range(0, len(images), batch_size):  # a bounded batch: any number of images fits in memory
        paths = images[start:start + batch_size]
        batch = torch.stack([transform(_read(path, mode)) for path in paths])
        with torch.no_grad():
            probabilities = torch.softmax(loaded.model(batch).float(), dim=1)
        top = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        results += [{'image': path,
                     'top': [{'class': loaded.classes[i], 'index': i, 'probability': float(p)}
                             for p, i in zip(values.tolist(), indices.tolist())]}
                    for path, values, indices in zip(paths, top.values, top.indices)]
    return results


def _read(path: str, mode: str) -> Image.Image:
    """The image at `path` in the model's mode; UserError (one line) when it cannot be read."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_model_mode(img, mode, path)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f'cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}') \
            from None
