"""A trained student out of its run folder: a folder timm loads, and optionally ONNX.

    stdistill export runs/my_std exported/            # best/ checkpoint; --head, --ema, --which last, --onnx

The folder is what timm's `save_for_hf` writes: `config.json` (architecture, its arguments,
class count and names, mean/std, input size, crop and interpolation) and `model.safetensors`.
timm loads it with `timm.create_model('local-dir:exported/', pretrained=True)`, and it predicts
with the head it was exported with:

- `cls` of an STD student: the backbone and its class head alone, the plain model: timm loads it
  without stdistill when the architecture is timm's own (`mixer_s16_224`, ...; the small students
  this package registers, `mixer_t4_28` and the like, need `import stdistill`);
- `dist` or `avg` (and DeiT-token students, any head): the whole student, registered with timm as
  `std_<backbone>` (`deit_<backbone>`) by `import stdistill`, its token configuration and head in
  config.json's `model_args`;
- `auto`: the head inference_head auto chose on the run's holdout images, recorded in the checkpoint.

What each head costs and scores (validation top-1, params, GMACs, CPU latency against the plain
backbone) is `head_table()`, printed by export and at the end of training. `--onnx` adds
`model.onnx`, the model as it predicts, checked against PyTorch under onnxruntime.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn

from ..training.builders import load_student_checkpoint, resolve_norm
from ..training.checkpoint import MODEL_FILE, checkpoint_entry, readable_as_umask, verify_checkpoint
from ..config import TrainConfig, config_from_dict, load_config
from ..utils.disk import write_failure, write_refusal
from ..utils.errors import UserError, first_line
from ..utils.locks import lock_folder
from ..methods import method_of
from ..method.teachers import TRAINING_ONLY_KWARGS, recorded_contract

__all__ = ['LoadedStudent', 'load_run_student', 'export_run', 'load_exported', 'export_onnx', 'ema_hint',
           'timm_needs_stdistill', 'shipped_top1', 'run_config', 'recorded_metrics', 'ShippedTop1', 'STDISTILL_JSON', 'EXPORT_HEADS', 'token_model_args']

STDISTILL_JSON = 'stdistill.json'  # what token exports of stdistill before 0.2 held instead of config.json
EXPORT_HEADS = ('cls', 'dist', 'avg', 'auto')


class LoadedStudent(NamedTuple):
    model: nn.Module          # in eval mode: (B, C, H, W) -> (B, num_classes) logits of the inference head
    classes: List[str]        # class names in index order (indices as strings when the data named none)
    cfg: TrainConfig          # the run's config: preprocessing (img_size, mean/std, crop_pct, interpolation)


def run_config(run: str) -> TrainConfig:
    """The config of the run folder `run` (its config.yaml); UserError for a folder that is no run."""
    path = os.path.join(run, 'config.yaml')
    if not os.path.isfile(path):
        raise UserError(f'{run} is not a run folder (no config.yaml)')
    return load_config(path)


def load_run_student(run: str, which: str = 'best', ema: bool = False, head: Optional[str] = None) -> LoadedStudent:
    """The student of a run folder's `which` checkpoint (or its EMA weights), ready to predict
    with `head` (a token student's inference head; None: the run's `inference_head`).

    Raises UserError (one line) for a missing or damaged checkpoint, or missing EMA weights.
    """
    cfg = run_config(run)
    if head is not None and head != 'cls' and not method_of(cfg.method).has_distillation_heads:
        raise UserError(f'--head {head}: the run\'s student has no distillation tokens, only its class head')
    if head is not None:
        if head not in EXPORT_HEADS:
            raise UserError(f'head must be one of {", ".join(EXPORT_HEADS)}, got {head!r}')
        if head == 'auto' and cfg.inference_head != 'auto':  # the choice is made in training, on the holdout
            raise UserError(f'--head auto: {run} was trained with inference_head {cfg.inference_head}, so no head was '
                            f'chosen on holdout images: give --head avg, cls or dist (or train with '
                            f'inference_head=auto holdout=N)')
        cfg = dataclasses.replace(cfg, inference_head=head)
    folder = os.path.join(run, which)
    if not os.path.isdir(folder):
        raise UserError(f'{run} has no {which}/ checkpoint')
    verify_checkpoint(folder)  # a missing state.json (and its checksums) is refused too
    path = os.path.join(folder, MODEL_FILE)
    recorded = recorded_contract(path)
    mean, std = resolve_norm(cfg)
    if recorded and (_rounded(recorded.get('mean')) != _rounded(mean) or _rounded(recorded.get('std')) != _rounded(std)):
        raise UserError(f'{run}/config.yaml gives mean {list(mean)} std {list(std)} but {path} was trained with mean '
                        f'{list(recorded["mean"])} std {list(recorded["std"])}: restore the run\'s config.yaml')
    student, classes = load_student_checkpoint(cfg, path, ema)  # the file: verified above
    num_classes = len(classes) if classes else cfg.num_classes
    student.eval()
    tokens = hasattr(student, 'inference_head')  # an STD or DeiT-token student (refused above for a head otherwise)
    # an STD student's class head needs no token: its backbone alone is that model (a DeiT token
    # student's blocks mix the token in, so it stays whole); a token head, the student predicting with it
    model = student.backbone if hasattr(student, 'token_pairs') and student.inference_head == 'cls' else student
    if tokens:
        cfg = dataclasses.replace(cfg, inference_head=student.inference_head)  # auto: the head it chose
    return LoadedStudent(model.eval(), classes or [str(i) for i in range(num_classes)], cfg)


def recorded_metrics(folder: str) -> Dict[str, Any]:
    """The validation metrics a checkpoint folder records for its weights (its log.jsonl row: best/
    keeps the epoch's row, last/ and previous/ the history, whose last row is theirs); {} for none."""
    try:
        row = checkpoint_entry(folder, 'metrics') or (checkpoint_entry(folder, 'history') or [{}])[-1]
    except (OSError, ValueError, TypeError, AttributeError):
        return {}
    return row if isinstance(row, dict) else {}


def timm_needs_stdistill(arch: str) -> bool:
    """Whether timm knows `arch` only once stdistill is imported (a student stdistill registers)."""
    import timm.models
    return timm.models.is_model(arch) and timm.models.model_entrypoint(arch).__module__.startswith('stdistill')


def ema_hint(run: str, which: str = 'best', ema: bool = False) -> Optional[str]:
    """A line for the user when the checkpoint's EMA weights scored better than the student's
    weights that are being taken (best/ is kept for whichever of the two scored best), else None."""
    if ema:
        return None
    try:
        row = recorded_metrics(os.path.join(run, which))
        student, averaged = float(row['val_top1']), float(row['ema_top1'])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError):
        return None  # no EMA in this run (or no record of it): nothing to say
    if averaged <= student:
        return None
    return (f'note: {run}/{which} was scored top-1 {averaged:.2f} with its EMA weights and {student:.2f} with the '
            f'student\'s, which these are: add --ema to take the EMA weights')


class ShippedTop1(NamedTuple):
    head: str                    # the head the export predicts with: cls, avg or dist
    top1: Optional[float]        # its validation top-1 at the exported epoch (None: not recorded)
    headline_head: str           # the run's inference_head, which its reported top-1 is of
    headline_top1: float         # the top-1 the run reported for these weights
    images: int                  # validation images both were measured on
    chance_top1: Optional[float]  # what guessing the most frequent class scores there (None: older runs)


def shipped_top1(run: str, which: str = 'best', ema: bool = False, head: Optional[str] = None,
                 tokens: bool = True) -> Optional[ShippedTop1]:
    """The validation top-1 the run recorded for the exported weights and head, beside the run's
    headline (its inference head), from the checkpoint's metrics. head: the exported head (None:
    the run's); tokens: whether the student has distillation tokens (else its class head is all).
    None when the checkpoint records no metrics."""
    try:
        row = recorded_metrics(os.path.join(run, which))
        cfg = run_config(run)
        headline = float(row['ema_top1'] if ema else row['val_top1'])
        images = int(row['val_images'])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError):
        return None
    run_head = row.get('inference_head', 'avg') if cfg.inference_head == 'auto' else cfg.inference_head
    shipped_head = (head or run_head) if tokens else 'cls'
    shipped_head = run_head if shipped_head == 'auto' else shipped_head
    if shipped_head == run_head or not tokens:
        top1 = headline
    else:  # each head's top-1 is recorded for the student's weights, not for their EMA
        top1 = None if ema else row.get(f'val_top1_{shipped_head}')
    return ShippedTop1(shipped_head, top1, run_head if tokens else 'cls', headline, images,
                       row.get('val_chance_top1'))


def _rounded(values) -> Optional[tuple]:
    return None if values is None else tuple(round(float(v), 6) for v in values)


def export_onnx(model: nn.Module, cfg: TrainConfig, path: str, atol: float = 1e-4) -> float:
    """Write `model` as ONNX (batch size dynamic) and return the largest difference of its logits
    from PyTorch's under onnxruntime on a random batch; a UserError above `atol`."""
    import numpy as np
    for needed in ('onnx', 'onnxscript', 'onnxruntime'):  # torch's ONNX exporter writes through onnxscript
        try:
            importlib.import_module(needed)
        except ImportError:  # e.name is None for some failed imports: name the package ourselves
            raise UserError(f'--onnx needs {needed}: pip install "stdistill[export]"') from None
    import onnxruntime

    sample = torch.randn(2, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim('batch', min=1, max=4096)
    torch.onnx.export(model, (sample,), path, input_names=['images'], output_names=['logits'],
                      dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    with torch.no_grad():
        expected = model(sample).numpy()
    got = session.run(['logits'], {'images': sample.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= atol:
        raise UserError(f'the ONNX model differs from PyTorch by {diff:.2e} (more than {atol}): not written')
    return diff


def export_run(run: str, output: str, which: str = 'best', ema: bool = False, onnx: bool = False,
               head: Optional[str] = None) -> Dict[str, Any]:
    """Export a run's student to `output` (a new folder, written whole or not at all); head='cls'
    exports a token student's backbone and class head alone, a timm model. Returns what was
    written ({'folder', 'architecture', 'head', 'files', 'onnx_max_diff', 'top1'}). head: cls, dist,
    avg, or auto (the head the run chose on its holdout images), None: the run's inference_head."""
    if not output:
        raise UserError('give the export a folder')
    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        raise UserError(f'{output} exists and is not an empty folder: export to a new folder')
    inside = os.path.relpath(os.path.realpath(output), os.path.realpath(run)).split(os.sep)[0]  # links resolved
    if inside in ('best', 'last', 'previous', 'last.old', 'best.old'):
        raise UserError(f'{output} is inside the run\'s {inside}/ checkpoint, which training replaces: export elsewhere')
    with lock_folder(output, 'the export'):  # a second export into the same folder is refused, not raced
        if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
            raise UserError(f'{output} exists and is not an empty folder: export to a new folder')
        return _export(run, output, which, ema, onnx, head)


def _export(run: str, output: str, which: str, ema: bool, onnx: bool, head: Optional[str]) -> Dict[str, Any]:
    """export_run(), once `output` is claimed."""
    from timm.models import save_for_hf

    loaded = load_run_student(run, which, ema, head)
    cfg = loaded.cfg
    parent = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix='.export.', dir=parent)
    except OSError as e:
        raise write_refusal('the export', output, e) from None
    try:
        mean, std = resolve_norm(cfg)
        data = {'mean': tuple(mean), 'std': tuple(std), 'crop_pct': cfg.crop_pct,
                'interpolation': cfg.interpolation, 'input_size': (cfg.in_chans, cfg.img_size, cfg.img_size)}
        save_for_hf(loaded.model, tmp, safe_serialization=True, model_config={'label_names': loaded.classes},
                    model_args=token_model_args(loaded.model, cfg), data_config=data)
        diff = export_onnx(loaded.model, cfg, os.path.join(tmp, 'model.onnx')) if onnx else None
        for name in os.listdir(tmp):  # mkdtemp's 0700 and safetensors' 0600 would hide it from other users
            readable_as_umask(os.path.join(tmp, name))
        readable_as_umask(tmp)
        if os.path.isdir(output):
            os.rmdir(output)  # an empty folder given as the output
        os.replace(tmp, output)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or (isinstance(e, Exception) and write_failure(e)):  # a full or read-only
            raise write_refusal('the export', output, e) from None  # disk (Python's writes or safetensors'), a bad name
        raise
    arch = (getattr(loaded.model, 'pretrained_cfg', None) or {}).get('architecture', cfg.model)
    tokens = method_of(cfg.method).has_distillation_heads
    return {'folder': output, 'architecture': arch, 'head': cfg.inference_head if tokens else 'cls',
            'files': sorted(os.listdir(output)), 'onnx_max_diff': diff,
            'top1': shipped_top1(run, which, ema, cfg.inference_head if tokens else None, tokens)}


def token_model_args(model: nn.Module, cfg: TrainConfig) -> Optional[Dict[str, Any]]:
    """What timm needs, beside its class count and channels, to rebuild `model` from config.json: for
    a token student (std_*, deit_*) its token configuration and head, with the size it was built
    for and the backbone's arguments (model_kwargs); None for a plain model (timm records its own)."""
    if not hasattr(model, 'inference_head'):
        return None
    args = {k: v for k, v in cfg.model_kwargs.items() if k not in TRAINING_ONLY_KWARGS}
    args.update(img_size=cfg.img_size, inference_head=model.inference_head)
    if hasattr(model, 'token_pairs'):
        args.update(num_teachers=model.num_teachers, token_positions=list(model.token_positions), tokens=cfg.tokens,
                    token_depth=cfg.token_depth)
    return json.loads(json.dumps(args))  # as config.json holds it (tuples as lists)


def load_exported(folder: str) -> LoadedStudent:
    """An exported folder, ready to predict, through `timm.create_model('local-dir:...')`. Raises
    UserError (one line naming the folder) for a folder that is no export, or a damaged or edited one."""
    if not os.path.isdir(folder):
        raise UserError(f'folder not found: {folder}')
    try:
        loaded = _load_exported(folder)
    except ValueError as e:
        raise UserError(str(e) if folder in str(e) else f'{folder}: {e}') from None
    except Exception as e:  # edited JSON, missing or truncated weights, foreign architecture: one line
        raise UserError(f'{folder} is a damaged export ({type(e).__name__}: {first_line(e)}): export it again') \
            from None
    count = _head_size(loaded.model)
    if count is not None and count != len(loaded.classes):
        raise UserError(f'{folder} names {len(loaded.classes)} classes but its model predicts {count}: export it '
                        f'again')
    return loaded


def _head_size(model: nn.Module) -> Optional[int]:
    num = getattr(model, 'num_classes', None)
    return int(num) if isinstance(num, int) else None


def _load_exported(folder: str) -> LoadedStudent:
    import timm
    from safetensors.torch import load_file

    if os.path.isfile(os.path.join(folder, STDISTILL_JSON)) and not os.path.isfile(os.path.join(folder, 'config.json')):
        raise UserError(f'{folder} is a token-head export of stdistill before 0.2 (stdistill.json), which this version '
                        f'does not read: export the run again (its token students are timm models now)')
    if not os.path.isfile(os.path.join(folder, 'config.json')):
        raise UserError(f'{folder} is neither a run folder nor an exported one (no config.json)')
    with open(os.path.join(folder, 'config.json')) as f:
        architecture = json.load(f).get('architecture', '')
    model = timm.create_model(f'local-dir:{os.path.abspath(folder)}', pretrained=True).eval()
    pcfg = model.pretrained_cfg
    # timm re-initialises a classifier whose size config.json changed: the weights file decides
    classifier = pcfg.get('classifier') or 'head'
    key = f'{classifier[0] if isinstance(classifier, (list, tuple)) else classifier}.weight'
    head = load_file(os.path.join(folder, 'model.safetensors')).get(key)
    loaded_head = model.state_dict()[key]
    if head is not None and not (head.shape == loaded_head.shape and torch.equal(head, loaded_head)):
        raise UserError(f'{folder}/config.json does not fit its weights (their classifier has {head.shape[0]} '
                        f'classes; timm would start it again from random)')
    chans, size = pcfg['input_size'][0], pcfg['input_size'][-1]
    # a config for the preprocessing only (predict's transforms), from the export's own cfg
    cfg = config_from_dict({'model': architecture, 'img_size': size, 'in_chans': chans, 'mean': list(pcfg['mean']),
                            'std': list(pcfg['std']), 'crop_pct': pcfg.get('crop_pct', 1.0),
                            'interpolation': pcfg.get('interpolation', 'bicubic'), 'method': 'none'})
    names = pcfg.get('label_names') or [str(i) for i in range(model.num_classes)]
    return LoadedStudent(model, list(names), cfg)
