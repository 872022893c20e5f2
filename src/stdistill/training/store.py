"""The teacher-output store: the teachers run once (`stdistill teacher-pass`), training replays them.

As FKD (Shen and Xing, ECCV 2022) stores a teacher's soft labels per crop, the store holds,
for every epoch, step, process (rank) and position of the data schedule (schedule.py), what
the distillation loss uses of each teacher's output on that exact augmented, mixed image:

    hard: labels (P, M) the argmax, entropy (P, M) of the prediction (the confidence weights)
    soft: the above and topk_logits (P, M, k), topk_index (P, M, k), lse (P, M) = logsumexp(z / tau)

for P images and M teachers, with the images' dataset indices (`index`, checked against the
run's batch at every step) and `offsets` (steps + 1) marking where each step's images start.

    STORE/store.json                          fingerprint, outputs kept, steps per epoch
    STORE/epoch0000/rank0000-step000000.safetensors   one shard: up to `shard_steps` steps

A shard is written to a temporary file and renamed, and carries the SHA-256 of its tensors in
its metadata: a killed pass leaves whole shards only, and a resumed one redoes the rest. The
fingerprint records everything the outputs depend on; a run whose fingerprint differs is
refused with the first difference named. The teachers' input contracts follow from the
fingerprinted teacher entries, weights and the student's input; the pass records them too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Subset

from .checkpoint import file_sha256, readable_as_umask
from ..config import TrainConfig, first_difference
from ..data.fashion_mnist import FashionMNIST
from ..utils.disk import write_json, write_refusal
from ..utils.errors import UserError
from ..data.folders import FolderReader
from ..data.loaders import data_seed_of
from ..method.losses import TeacherTargets
from ..data.schedule import ScheduledDataset

__all__ = ['STORE_JSON', 'SHARD_STEPS', 'run_fingerprint', 'outputs_spec', 'StoreWriter',
           'TeacherStore', 'describe_outputs']

STORE_JSON = 'store.json'
FORMAT = 1
SHARD_STEPS = 256  # steps a shard: what a killed pass can lose, and what training reads at once
# the training transform's settings: compared one by one, so that a refusal names the key
_AUGMENTATION_KEYS = ('img_size', 'in_chans', 'mean', 'std', 'train_samples', 'scale', 'ratio', 'hflip', 'color_jitter',
                      'aa', 'interpolation', 'reprob', 'remode', 'recount')


def _dataset_fingerprint(ds: Any) -> Dict[str, Any]:
    """What identifies the training images: for an image folder, every file's relative path, size
    and label; for Fashion-MNIST, its pixels and labels; else the dataset's type and length."""
    if isinstance(ds, ScheduledDataset):
        return _dataset_fingerprint(ds.dataset)
    if isinstance(ds, Subset):
        inner = _dataset_fingerprint(ds.dataset)
        inner['subset_sha256'] = hashlib.sha256(json.dumps(list(map(int, ds.indices))).encode()).hexdigest()
        inner['images'] = len(ds)
        return inner
    reader = getattr(ds, 'reader', None)
    digest = hashlib.sha256()
    if isinstance(reader, FolderReader):
        for path, label in reader.samples:
            digest.update(f'{os.path.relpath(path, reader.root)}\t{os.path.getsize(path)}\t{label}\n'.encode())
        kind = 'image folder'
    elif isinstance(ds, FashionMNIST):
        digest.update(ds.images.tobytes())
        digest.update(ds.targets.tobytes())
        kind = 'fashion-mnist'
    else:
        kind = type(ds).__name__
        digest.update(f'{kind}:{len(ds)}'.encode())
    return {'kind': kind, 'images': len(ds), 'files_sha256': digest.hexdigest()}


def _transform_text(ds: Any) -> str:
    """The training transform as text (torchvision's and timm's reprs), without memory addresses."""
    while isinstance(ds, (ScheduledDataset, Subset)):
        ds = ds.dataset
    return re.sub(r' at 0x[0-9a-fA-F]+', '', repr(getattr(ds, 'transform', None)))


def _teacher_fingerprint(spec: Dict[str, Any], known: Dict[str, str]) -> Dict[str, Any]:
    """A teacher entry with the SHA-256 of every weights file it names (checkpoint, overlay file);
    `known`: digests by absolute path, already read."""
    def sha256(path: str) -> str:
        return known.get(os.path.abspath(path)) or file_sha256(path)
    out = {k: spec[k] for k in ('model', 'pretrained', 'use_ema', 'mean', 'std', 'img_size', 'interpolation')}
    kwargs = json.loads(json.dumps(spec['kwargs']))
    overlay = kwargs.get('pretrained_cfg_overlay')
    if isinstance(overlay, dict) and overlay.get('file') and os.path.isfile(overlay['file']):
        overlay['file_sha256'] = sha256(overlay.pop('file'))
    out['kwargs'] = kwargs
    checkpoint = spec['checkpoint']
    if checkpoint and spec['use_ema'] and checkpoint.endswith('model.safetensors'):
        beside = os.path.join(os.path.dirname(checkpoint), 'model_ema.safetensors')
        checkpoint = beside if os.path.isfile(beside) else checkpoint
    if checkpoint and not os.path.isfile(checkpoint):
        raise UserError(f'checkpoint not found: {checkpoint}')
    out['checkpoint_sha256'] = sha256(checkpoint) if checkpoint else None
    return out


def run_fingerprint(cfg: TrainConfig, train_set: Any, classes: Optional[Sequence[str]], world_size: int,
                    student_input: str, known_sha256: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Everything the teachers' outputs on a run's batches depend on: the data (images, classes,
    transform, mixup, schedule seed, batch size, world size, epochs), each teacher (entry and
    weights) and the precision. train_set: the loader's dataset; student_input: the student's
    input contract as JSON (the batches the teachers' inputs are adapted from); known_sha256: the
    SHA-256 of files already read, by absolute path (a training run's input digests), not read again."""
    return {  # settings first, so that a refusal names the key a user changed, not a digest
        'data_seed': data_seed_of(cfg),
        'batch_size': cfg.batch_size, 'world_size': world_size, 'epochs': cfg.epochs,
        'repeated_aug': cfg.repeated_aug,
        'augmentation': {k: getattr(cfg, k) for k in _AUGMENTATION_KEYS},
        'mixup': {k: getattr(cfg, k) for k in ('mixup', 'cutmix', 'mixup_prob', 'mixup_switch_prob', 'mixup_mode')}
        if cfg.mixup > 0 or cfg.cutmix > 0 else None,
        'precision': 'bf16' if cfg.amp else 'fp32',
        'teachers': [_teacher_fingerprint(t, known_sha256 or {}) for t in cfg.teachers],
        # teachers without weights to load are initialised from the run's seed (train.build_teachers)
        'teacher_init_seed': cfg.seed if any(t['checkpoint'] is None and t['pretrained'] is False for t in cfg.teachers)
        else None,
        'student_input': student_input,
        'dataset': {**_dataset_fingerprint(train_set), 'classes': list(classes) if classes is not None else None},
        'transform': _transform_text(train_set),
    }


def outputs_spec(cfg: TrainConfig) -> Dict[str, Any]:
    """What a run's loss needs of the teachers: hard labels, or top-k soft outputs at cfg.tau (soft
    distillation, or cls_distill's KD on the class head)."""
    soft = cfg.distill == 'soft' or cfg.cls_distill
    return {'kind': 'soft', 'topk': cfg.store_topk, 'tau': cfg.tau} if soft else {'kind': 'hard'}


def describe_outputs(outputs: Dict[str, Any], num_classes: int) -> str:
    if outputs['kind'] == 'hard':
        return 'hard labels and prediction entropies'
    k = min(outputs['topk'], num_classes)
    exact = 'all classes' if k >= num_classes else f'top-{k} soft: the other classes as one bucket'
    return f'soft outputs at tau {outputs["tau"]} ({exact})'


def store_id(doc: Dict[str, Any]) -> str:
    """What every shard of one store carries: a digest of its fingerprint, outputs and layout, so
    that a shard of another store (or another --shard-steps) is refused, not replayed."""
    key = {k: doc[k] for k in ('fingerprint', 'outputs', 'steps_per_epoch', 'shard_steps', 'num_classes')}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _tensor_digest(tensors: Dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes()
                      if tensors[name].numel() else b'')
    return digest.hexdigest()


def _shard_path(folder: str, epoch: int, rank: int, first_step: int) -> str:
    return os.path.join(folder, f'epoch{epoch:04d}', f'rank{rank:04d}-step{first_step:06d}.safetensors')


def _read_shard(path: str, expected: Optional[Dict[str, str]] = None) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """A shard's tensors and metadata; UserError when it is damaged (checksum, format) or its
    metadata differ from `expected` (a shard of another store, epoch, process or layout)."""
    try:
        with safe_open(path, 'pt') as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a foreign or cut file: one line
        raise UserError(f'teacher store shard {path} is damaged ({type(e).__name__}): delete it and run '
                        f'stdistill teacher-pass again (it redoes missing shards)') from None
    if meta.get('sha256') != _tensor_digest(tensors):
        raise UserError(f'teacher store shard {path} fails its checksum: delete it and run stdistill teacher-pass '
                        f'again (it redoes missing shards)')
    wrong = [k for k, v in (expected or {}).items() if meta.get(k) != v]
    if wrong:
        raise UserError(f'teacher store shard {path} belongs to another store, epoch, process or layout (its '
                        f'{wrong[0]} is {meta.get(wrong[0])!r}, not {expected[wrong[0]]!r}): delete it and run '
                        f'stdistill teacher-pass again (it redoes missing shards)')
    return tensors, meta


def _shard_meta(store: str, epoch: int, rank: int, first_step: int, steps: int) -> Dict[str, str]:
    return {'store': store, 'epoch': str(epoch), 'rank': str(rank), 'first_step': str(first_step),
            'steps': str(steps)}


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            doc = json.load(f)
        if not isinstance(doc, dict) or doc.get('format') != FORMAT:
            raise UserError(f'format {doc.get("format") if isinstance(doc, dict) else "?"}, not {FORMAT}')
        missing = [k for k in ('fingerprint', 'outputs', 'steps_per_epoch', 'shard_steps', 'num_classes')
                   if k not in doc]
        if missing:
            raise UserError(f'no {", ".join(missing)}')
        outputs = doc['outputs']
        counts = all(isinstance(doc[k], int) and not isinstance(doc[k], bool) and doc[k] > 0
                     for k in ('steps_per_epoch', 'shard_steps', 'num_classes'))
        good_outputs = isinstance(outputs, dict) and (outputs.get('kind') == 'hard' or (
            outputs.get('kind') == 'soft' and isinstance(outputs.get('topk'), int) and outputs['topk'] > 0
            and isinstance(outputs.get('tau'), (int, float)) and outputs['tau'] > 0))
        if not (isinstance(doc['fingerprint'], dict) and isinstance(doc['fingerprint'].get('epochs'), int)
                and counts and good_outputs and isinstance(doc.get('info', {}), dict)):
            raise UserError('its fields are not those of a store (edited?)')
        return doc
    except (OSError, ValueError) as e:
        raise UserError(f'{path} is not a stdistill teacher store ({e}): make the store again with stdistill '
                        f'teacher-pass into a new folder') from None


def _first_change(stored: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """'KEY stored, this run current' for the first key where two fingerprints differ, else None."""
    if stored == current:
        return None
    name, before, after = first_difference('', stored, current)

    def short(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + '...'
    return f'{name} {short(before)}, this run {short(after)}'


class StoreWriter:
    """Writes one process's shards of a teacher pass; finds what an earlier, killed pass left.

    Raises UserError when `folder` holds a store of another fingerprint or outputs."""

    def __init__(self, folder: str, fingerprint: Dict[str, Any], outputs: Dict[str, Any], steps_per_epoch: int,
                 rank: int, num_classes: int, info: Dict[str, Any], shard_steps: int = SHARD_STEPS) -> None:
        self.folder, self.rank, self.outputs = folder, rank, outputs
        self.num_teachers = len(fingerprint['teachers'])
        self.num_classes = num_classes
        path = os.path.join(folder, STORE_JSON)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UserError(f'--output {folder} is a file: give a folder for the store')
        doc = {'format': FORMAT, 'fingerprint': fingerprint, 'outputs': outputs, 'steps_per_epoch': steps_per_epoch,
               'shard_steps': shard_steps, 'num_classes': num_classes, 'info': info}
        shards = [n for n in (os.listdir(folder) if os.path.isdir(folder) else ()) if n.startswith('epoch')]
        if os.path.isfile(path):
            old = _read_json(path)
            change = _first_change(old['fingerprint'], fingerprint) or _first_change(
                {'outputs': old['outputs']}, {'outputs': outputs})
            if change and shards:
                raise UserError(f'{folder} holds a teacher store made for other settings ({change}): give --output a '
                                f'new folder')
            if change and rank == 0:  # a pass that failed before its first shard: nothing to keep
                write_json(path, doc)
            doc = doc if change else old  # a kept store keeps its layout (shard_steps)
        else:
            # (rank 0 only: other processes may already see the shard folders rank 0 makes)
            if rank == 0 and os.path.isdir(folder) and any(not n.startswith(STORE_JSON) for n in os.listdir(folder)):
                raise UserError(f'{folder} exists and is not a teacher store: give --output a new folder')
            try:
                os.makedirs(folder, exist_ok=True)
                if rank == 0:
                    write_json(path, doc)
            except OSError as e:
                raise write_refusal('the teacher store', folder, e) from None
        self.shard_steps, self.steps_per_epoch = doc['shard_steps'], steps_per_epoch
        self.store = store_id(doc)
        for name in os.listdir(folder):  # this process's half-written shards of a killed pass
            sub = os.path.join(folder, name)
            for leftover in (os.listdir(sub) if name.startswith('epoch') and os.path.isdir(sub) else ()):
                if leftover.startswith(f'rank{rank:04d}-') and '.tmp' in leftover:
                    os.remove(os.path.join(sub, leftover))
        self._rows: List[Tuple[int, torch.Tensor, Dict[str, torch.Tensor]]] = []
        self._epoch, self._first = 0, 0

    def stored_steps(self, epoch: int) -> int:
        """Steps of `epoch` this process has whole, checked shards for, counted from step 0."""
        step = 0
        while step < self.steps_per_epoch:
            path = _shard_path(self.folder, epoch, self.rank, step)
            if not os.path.isfile(path):
                break
            steps = min(self.shard_steps, self.steps_per_epoch - step)
            try:
                _read_shard(path, _shard_meta(self.store, epoch, self.rank, step, steps))
            except ValueError:  # damaged or foreign: redone from here
                break
            step += steps
        return step

    def start(self, epoch: int, first_step: int) -> None:
        self._epoch, self._first, self._rows = epoch, first_step, []

    def add(self, indices: Optional[torch.Tensor], logits: List[torch.Tensor]) -> None:
        """The next step's outputs: each teacher's fp32 logits (B, classes) on its B images (B may
        be 0: a step without readable images); flushed as a shard every shard_steps steps. The
        fields are computed on the logits' device by the loss's own code (TeacherTargets), so a
        run from the store uses the numbers an online run computes."""
        index = indices.cpu().long() if indices is not None and logits else torch.zeros(0, dtype=torch.long)
        fields: Dict[str, List[torch.Tensor]] = {}
        with torch.autocast(logits[0].device.type if logits else 'cpu', enabled=False):
            for t in logits:
                t = t.detach().float()
                target = TeacherTargets.from_logits(t)
                fields.setdefault('labels', []).append(target.labels.cpu())
                fields.setdefault('entropy', []).append(target.entropy.cpu())
                if self.outputs['kind'] == 'soft':
                    top = t.topk(min(self.outputs['topk'], self.num_classes), dim=-1)
                    fields.setdefault('topk_logits', []).append(top.values.cpu())
                    fields.setdefault('topk_index', []).append(top.indices.cpu())
                    fields.setdefault('lse', []).append(torch.logsumexp(t / self.outputs['tau'], dim=-1).cpu())
        self._rows.append((len(index), index, {k: torch.stack(v, dim=1) for k, v in fields.items()}))
        if len(self._rows) == self.shard_steps:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        counts = torch.tensor([0] + [n for n, _, _ in self._rows], dtype=torch.long)
        tensors = {'offsets': counts.cumsum(0), 'index': torch.cat([i for _, i, _ in self._rows])}
        label_type = torch.int16 if self.num_classes <= 32767 else torch.int32
        filled = [f for n, _, f in self._rows if n]  # a step without readable images has no fields
        k = min(self.outputs.get('topk', 1), self.num_classes)
        empty = {'labels': (0, self.num_teachers), 'entropy': (0, self.num_teachers),
                 **({'topk_logits': (0, self.num_teachers, k), 'topk_index': (0, self.num_teachers, k),
                     'lse': (0, self.num_teachers)} if self.outputs['kind'] == 'soft' else {})}
        for name, shape in empty.items():
            tensors[name] = torch.cat([f[name] for f in filled]).contiguous() if filled else torch.zeros(shape)
            if name in ('labels', 'topk_index'):
                tensors[name] = tensors[name].to(label_type)
        meta = dict(_shard_meta(self.store, self._epoch, self.rank, self._first, len(self._rows)),
                    sha256=_tensor_digest(tensors))
        path = _shard_path(self.folder, self._epoch, self.rank, self._first)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}'
        try:
            save_file(tensors, tmp, metadata=meta)
            readable_as_umask(tmp)  # safetensors writes 0600: a store is shared like any file
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)  # whole shards only: a kill before this leaves a temporary file, redone later
        finally:  # a failed write (a full disk) leaves no partial shard either
            if os.path.exists(tmp):
                os.remove(tmp)
        self._first += len(self._rows)
        self._rows = []


class TeacherStore:
    """A store opened for a run: checks it, then gives each step's stored teacher outputs.

    Raises UserError (one line) when the store is missing, of another fingerprint, lacks the
    outputs the run's loss needs, or misses shards of this process."""

    def __init__(self, folder: str, fingerprint: Dict[str, Any], outputs: Dict[str, Any], rank: int,
                 steps_per_epoch: int, device: torch.device) -> None:
        path = os.path.join(folder, STORE_JSON)
        if not os.path.isfile(path):
            raise UserError(f'teacher_outputs: {folder} is not a teacher store (no {STORE_JSON} in it): give the '
                            f'folder stdistill teacher-pass --output wrote, or make one with stdistill teacher-pass '
                            f'--config RECIPE --output NEW_FOLDER')
        doc = _read_json(path)
        change = _first_change(doc['fingerprint'], fingerprint)
        if change:
            raise UserError(f'teacher_outputs: {folder} was made for other settings: {change}; make a store for this '
                            f'run with stdistill teacher-pass')
        stored = doc['outputs']
        if outputs['kind'] == 'soft' and (stored['kind'] != 'soft' or stored['tau'] != outputs['tau']):
            what = 'hard labels only' if stored['kind'] == 'hard' else f'soft outputs at tau {stored["tau"]}'
            raise UserError(f'teacher_outputs: {folder} holds {what}, this run distils soft outputs at tau '
                            f'{outputs["tau"]}: make the store with the run\'s distill and tau')
        if doc['steps_per_epoch'] != steps_per_epoch:
            raise UserError(f'teacher_outputs: {folder} has {doc["steps_per_epoch"]} steps an epoch, this run '
                            f'{steps_per_epoch}: make a store for this run with stdistill teacher-pass')
        self.folder, self.rank, self.device, self.doc = folder, rank, device, doc
        self.outputs, self.num_classes, self.shard_steps = stored, doc['num_classes'], doc['shard_steps']
        self.soft, self.run_outputs = outputs['kind'] == 'soft', outputs
        identity = store_id(doc)
        # every shard of this process, checked now (checksum, and that it belongs to this store,
        # epoch and place): a damaged file stops the run before it writes anything
        for epoch in range(fingerprint['epochs']):
            for first in range(0, steps_per_epoch, self.shard_steps):
                shard = _shard_path(folder, epoch, rank, first)
                if not os.path.isfile(shard):
                    raise UserError(f'teacher_outputs: {folder} is incomplete (epoch {epoch + 1}, process {rank}, '
                                    f'step {first + 1} on are missing): finish it by running the same stdistill '
                                    f'teacher-pass again (it continues where it stopped)')
                steps = min(self.shard_steps, steps_per_epoch - first)
                _read_shard(shard, _shard_meta(identity, epoch, rank, first, steps))
        self._identity = identity
        self._key: Optional[Tuple[int, int]] = None
        self._shard: Dict[str, torch.Tensor] = {}

    def describe(self) -> str:
        """What the run reads: hard labels (of any store), or the store's soft outputs."""
        if not self.soft:
            return describe_outputs({'kind': 'hard'}, self.num_classes)
        return describe_outputs(self.outputs, self.num_classes)

    def __call__(self, epoch: int, step: int, indices: Optional[torch.Tensor]) -> List[TeacherTargets]:
        """Each teacher's TeacherTargets (on the run's device) for step `step` of `epoch`, whose
        images have dataset indices `indices` (B,). Raises UserError when the stored step holds
        other images (the store does not describe this run's batches)."""
        first = step - step % self.shard_steps
        if self._key != (epoch, first):
            steps = min(self.shard_steps, self.doc['steps_per_epoch'] - first)
            self._shard, _ = _read_shard(_shard_path(self.folder, epoch, self.rank, first),
                                         _shard_meta(self._identity, epoch, self.rank, first, steps))
            self._key = (epoch, first)
        s = self._shard
        lo, hi = int(s['offsets'][step - first]), int(s['offsets'][step - first + 1])
        if indices is None or not torch.equal(s['index'][lo:hi], indices.cpu().long()):
            raise UserError(f'teacher_outputs: the store\'s images of epoch {epoch + 1}, step {step + 1} are not this '
                            f'run\'s batch (the data changed since the pass, e.g. an image became unreadable): make a '
                            f'store for this run')
        out = []
        for j in range(s['labels'].shape[1]):
            def field(name: str) -> Optional[torch.Tensor]:
                return s[name][lo:hi, j].to(self.device) if name in s else None
            labels = field('labels').long()
            if self.soft:
                out.append(TeacherTargets(labels, field('entropy'), None, field('topk_logits'),
                                          field('topk_index').long(), field('lse')))
            else:
                out.append(TeacherTargets(labels, field('entropy')))
        return out
