"""Checkpoints: a folder per checkpoint, written whole or not at all.

    run/last/model.safetensors   the student's weights (timm names; `stdistill eval` reads them)
    run/last/state.safetensors   every other tensor: optimizer moments, EMA, MINE, RNG states
    run/last/state.json          the rest: epoch, scheduler, metrics, param groups, python RNG

Nothing is pickled, so loading a checkpoint never runs code. A checkpoint is first written to
a temporary folder beside its final place and then renamed over it: a crash leaves either the
old checkpoint or the new one, never a half-written one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from typing import Any, Dict, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .teachers import _first_line

__all__ = ['save_checkpoint', 'load_checkpoint', 'split_tensors', 'join_tensors', 'rng_state',
           'set_rng_state', 'MODEL_FILE', 'STATE_FILE', 'STATE_JSON']

MODEL_FILE, STATE_FILE, STATE_JSON = 'model.safetensors', 'state.safetensors', 'state.json'


def split_tensors(obj: Any, prefix: str = '') -> Tuple[Any, Dict[str, torch.Tensor]]:
    """Replace every tensor in a nested dict/list/tuple by {'__tensor__': key}; return both parts."""
    tensors: Dict[str, torch.Tensor] = {}

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[path] = o.detach().cpu().contiguous()
            return {'__tensor__': path}
        if isinstance(o, dict):
            return {'__dict__': [[walk(k, f'{path}.k{i}'), walk(v, f'{path}.{i}')] for i, (k, v) in enumerate(o.items())]}
        if isinstance(o, (list, tuple)):
            return {'__list__' if isinstance(o, list) else '__tuple__': [walk(v, f'{path}.{i}') for i, v in enumerate(o)]}
        if isinstance(o, np.ndarray):
            return walk(torch.from_numpy(o.copy()), path)
        if isinstance(o, (np.integer, np.floating)):
            return o.item()
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f'cannot store {type(o).__name__} at {path} in a checkpoint')

    return walk(obj, prefix), tensors


def join_tensors(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    """Inverse of split_tensors."""
    if isinstance(obj, dict):
        if '__tensor__' in obj:
            return tensors[obj['__tensor__']]
        if '__dict__' in obj:
            return {join_tensors(k, tensors): join_tensors(v, tensors) for k, v in obj['__dict__']}
        if '__list__' in obj:
            return [join_tensors(v, tensors) for v in obj['__list__']]
        if '__tuple__' in obj:
            return tuple(join_tensors(v, tensors) for v in obj['__tuple__'])
    return obj


def rng_state() -> Dict[str, Any]:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(folder: str, model: torch.nn.Module, state: Dict[str, Any]) -> None:
    """Write model weights and training state to `folder`, atomically (temp folder + rename)."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(folder)}.', dir=parent)
    try:
        save_file(_state_dict(model), os.path.join(tmp, MODEL_FILE), metadata={'format': 'pt'})
        skeleton, tensors = split_tensors(state, 'state')
        save_file(tensors, os.path.join(tmp, STATE_FILE))
        with open(os.path.join(tmp, STATE_JSON), 'w') as f:
            json.dump(skeleton, f)
        old = folder + '.old'
        if os.path.isdir(folder):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(folder: str, model: torch.nn.Module) -> Dict[str, Any]:
    """Load weights into `model` (strictly) and return the training state."""
    if not os.path.isdir(folder) and os.path.isdir(folder + '.old'):
        folder = folder + '.old'  # a crash between the two renames of save_checkpoint
    paths = [os.path.join(folder, name) for name in (MODEL_FILE, STATE_FILE, STATE_JSON)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f'not a stdistill checkpoint: {missing[0]} is missing')
    try:
        weights = load_file(paths[0])
        tensors = load_file(paths[1])
        with open(paths[2]) as f:
            skeleton = json.load(f)
    except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'corrupt checkpoint in {folder}: {_first_line(e)}') from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f'checkpoint {folder} does not fit this model: {_first_line(e)}') from None
    return join_tensors(skeleton, tensors)
