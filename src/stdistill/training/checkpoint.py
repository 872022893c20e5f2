"""Checkpoints: a folder per checkpoint, written whole or not at all, checked when read.

    run/last/model.safetensors   the student's weights (timm names; `stdistill eval` reads them)
    run/last/state.safetensors   every other tensor: optimizer moments, EMA, MINE, RNG states
    run/last/model_ema.safetensors   with model_ema: the EMA of the student's weights (same names)
    run/last/state.json          the rest: epoch, scheduler, metrics, param groups, python RNG,
                                 and the SHA-256 of the tensor files and of the JSON itself

Nothing is pickled, so loading a checkpoint never runs code. A checkpoint is first written to
a temporary folder beside its final place and then renamed over it: a crash leaves either the
old checkpoint or the new one, never a half-written one. The checksums catch what renames
cannot: a file truncated by a full disk or a copy, or edited by hand, is refused on load with
one line naming the file. (They detect damage, not a forger who rewrites them too; such a
file is still safe to load, since nothing in it is unpickled.) A run keeps its previous
checkpoint (`run/previous/`), so that resume falls back to it when `last/` is damaged
(`newest_valid_checkpoint`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..utils.errors import UserError, first_line, whole_message
from ..method.teachers import EMA_FILE

__all__ = ['save_checkpoint', 'load_checkpoint', 'verify_checkpoint', 'newest_valid_checkpoint',
           'remove_stale_temporaries', 'split_tensors', 'join_tensors', 'rng_state', 'set_rng_state', 'rng_state_fits',
           'checkpoint_entry', 'readable_as_umask', 'file_sha256', 'MODEL_FILE', 'STATE_FILE', 'STATE_JSON', 'EMA_FILE', 'RESUMABLE']

MODEL_FILE, STATE_FILE, STATE_JSON = 'model.safetensors', 'state.safetensors', 'state.json'
FORMAT = 'stdistill-checkpoint/1'
# A run's resumable checkpoints, newest first when epochs tie; '.old' is left by a crash
# between the two renames of a save without a `previous` folder.
RESUMABLE = ('last', 'previous', 'last.old')


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


def rng_state(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """This process's random states: python, numpy, torch (CPU) and, on a GPU, that GPU's."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if device is not None and device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def rng_state_fits(state: Any, device: torch.device) -> bool:
    """Whether `state` (from rng_state) can be restored exactly on `device`: it has a GPU state
    exactly when the process now trains on a GPU."""
    return isinstance(state, dict) and isinstance(state.get('cuda'), (torch.Tensor, type(None))) \
        and ('cuda' in state) == (device.type == 'cuda')


def set_rng_state(state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    """Restore what rng_state saved (the GPU state onto `device`, this process's own GPU)."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and device is not None and device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'], device)


def _state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _seal(doc: Dict[str, Any]) -> str:
    """Checksum of state.json's own content (everything but this checksum)."""
    body = {k: v for k, v in doc.items() if k != 'sha256'}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def _fsync(path: str) -> None:
    """Flush a file (or a folder's entries) to disk: a rename is only as durable as what it names."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: str, model: torch.nn.Module, state: Dict[str, Any], previous: Optional[str] = None,
                    metadata: Optional[Dict[str, str]] = None, ema: Optional[torch.nn.Module] = None) -> None:
    """Write model weights (and `ema`'s, beside them) and training state to `folder`, atomically
    (temp folder + rename).

    The checkpoint it replaces is deleted, or with `previous` moved there (replacing that one).
    `metadata` goes into the header of each weights file (train records the student's input
    contract and class names there, so that the model can be a teacher later).
    """
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(folder)}.', dir=parent)
    try:
        readable_as_umask(tmp)
        files = {}
        skeleton, tensors = split_tensors(state, 'state')
        header = {'format': 'pt', **(metadata or {})}
        parts = [(MODEL_FILE, _state_dict(model), header), (STATE_FILE, tensors, None)]
        if ema is not None:
            parts.append((EMA_FILE, _state_dict(ema), header))
        for name, content, header in parts:
            path = os.path.join(tmp, name)
            save_file(content, path, metadata=header)
            readable_as_umask(path)
            _fsync(path)
            files[name] = {'bytes': os.path.getsize(path), 'sha256': file_sha256(path)}
        doc = {'format': FORMAT, 'epoch': state.get('epoch'), 'files': files, 'state': skeleton}
        doc['sha256'] = _seal(doc)
        with open(os.path.join(tmp, STATE_JSON), 'w') as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        old = previous or folder + '.old'
        if os.path.isdir(folder):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if previous is None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def readable_as_umask(path: str) -> None:
    """Give a file or folder the permissions the umask gives a new one (mkdtemp makes folders
    0700, and safetensors files 0600: a checkpoint or export must be shareable as any file)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def remove_stale_temporaries(run: str) -> List[str]:
    """Delete the temporary folders of checkpoint writes that a killed process left in `run`."""
    stale = [p for p in glob.glob(os.path.join(glob.escape(run), '.*.*')) if os.path.isdir(p)
             and os.path.basename(p).split('.')[1] in ('last', 'best')]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def verify_checkpoint(folder: str) -> Dict[str, Any]:
    """Check a checkpoint folder against its checksums; return its state.json document.

    Raises UserError, one line naming the damaged file, for a missing, truncated, edited or
    foreign file. The tensor files are not parsed here (safetensors does that, without pickle).
    """
    paths = {name: os.path.join(folder, name) for name in (MODEL_FILE, STATE_FILE, STATE_JSON)}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise UserError(f'not a stdistill checkpoint: {missing[0]} is missing')
    try:
        with open(paths[STATE_JSON]) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f'corrupt checkpoint {folder}: {STATE_JSON} is unreadable ({first_line(e)})') from None
    if not isinstance(doc, dict) or doc.get('format') != FORMAT:
        raise UserError(f'corrupt checkpoint {folder}: {STATE_JSON} is not a {FORMAT} document '
                        f'(written by an older stdistill, or another program)')
    if doc.get('sha256') != _seal(doc):
        raise UserError(f'corrupt checkpoint {folder}: {STATE_JSON} does not match its checksum (edited or damaged)')
    files = doc.get('files') if isinstance(doc.get('files'), dict) else {}
    for name in (MODEL_FILE, STATE_FILE) + ((EMA_FILE,) if EMA_FILE in files else ()):
        paths[name] = os.path.join(folder, name)
        if not os.path.isfile(paths[name]):
            raise UserError(f'corrupt checkpoint {folder}: {name} is missing')
        expected = files.get(name)
        if not isinstance(expected, dict) or not {'bytes', 'sha256'} <= set(expected):
            raise UserError(f'corrupt checkpoint {folder}: {STATE_JSON} lists no checksum for {name}')
        size = os.path.getsize(paths[name])
        if size != expected['bytes']:
            raise UserError(f'corrupt checkpoint {folder}: {name} has {size} bytes, {expected["bytes"]} were written '
                            f'(truncated or overwritten)')
        if file_sha256(paths[name]) != expected['sha256']:
            raise UserError(f'corrupt checkpoint {folder}: {name} does not match its checksum (edited or damaged)')
    return doc


def newest_valid_checkpoint(run: str) -> Tuple[str, List[str]]:
    """The resumable checkpoint of `run` with the highest epoch that passes verification, and one
    line for each checkpoint that was passed over as damaged."""
    valid, rejected = [], []
    for name in RESUMABLE:
        folder = os.path.join(run, name)
        if not os.path.isdir(folder):
            continue
        try:
            epoch = verify_checkpoint(folder).get('epoch')
        except ValueError as e:
            rejected.append(str(e))
            continue
        if isinstance(epoch, int):
            valid.append((epoch, folder))
        else:
            rejected.append(f'checkpoint {folder} holds no training state (no epoch): it cannot be resumed')
    if not valid:
        reasons = '; '.join(rejected) or f'no {"/, ".join(RESUMABLE)}/ folder'
        raise UserError(f'nothing to resume in {run}: {reasons}')
    # the highest epoch; between equal epochs, the first in RESUMABLE order (max keeps the first)
    return max(valid, key=lambda v: v[0])[1], rejected


def checkpoint_entry(folder: str, key: str) -> Any:
    """A plain (tensor-free) top-level entry of a checkpoint's training state, read from its
    state.json without loading any tensor; None when it has none."""
    with open(os.path.join(folder, STATE_JSON)) as f:
        skeleton = json.load(f).get('state')
    pairs = skeleton.get('__dict__', []) if isinstance(skeleton, dict) else []
    return next((join_tensors(v, {}) for k, v in pairs if k == key), None)


def load_checkpoint(folder: str, model: torch.nn.Module, verified: bool = False,
                    ema: Optional[torch.nn.Module] = None) -> Dict[str, Any]:
    """Verify the checkpoint, load its weights into `model` (strictly), its EMA weights into `ema`
    when both are there, and return the training state.

    verified=True: the caller has just verified `folder` (newest_valid_checkpoint does), so its
    files are not hashed a second time.
    """
    if not os.path.isdir(folder) and os.path.isdir(folder + '.old'):
        folder = folder + '.old'  # a crash between the two renames of save_checkpoint
    try:
        if verified:
            with open(os.path.join(folder, STATE_JSON)) as f:
                doc = json.load(f)
        else:
            doc = verify_checkpoint(folder)
        weights = load_file(os.path.join(folder, MODEL_FILE))
        tensors = load_file(os.path.join(folder, STATE_FILE))
        ema_weights = load_file(os.path.join(folder, EMA_FILE)) \
            if ema is not None and os.path.isfile(os.path.join(folder, EMA_FILE)) else None
    except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f'corrupt checkpoint in {folder}: {first_line(e)}') from None
    try:
        model.load_state_dict(weights)
        if ema_weights is not None:
            ema.load_state_dict(ema_weights)
    except RuntimeError as e:
        raise UserError(f'checkpoint {folder} does not fit this model: {whole_message(e)}') from None
    return join_tensors(doc['state'], tensors)
