"""Does the teacher matter where the STD paper says it does? A small-scale study on Fashion-MNIST.

    python benchmarks/reproduce_fashion_mnist.py --teachers-only     # the teachers (once; committed)
    python benchmarks/reproduce_fashion_mnist.py --regimes light --commit    # one regime's runs
    python benchmarks/reproduce_fashion_mnist.py --report            # every table, from the records

One MLP-Mixer student (`mixer_t4_28`) in two training regimes:
- light: `recipes/fashion_mnist/std.yaml`: crops, flips, label smoothing;
- deit: `recipes/fashion_mnist/std_deit.yaml`: DeiT's augmentation (RandAugment, mixup 0.8,
  CutMix 1.0, label smoothing 0.1, random erasing 0.25), the regime the paper trains in.
Every run: 12,000 images for 4 epochs (the data axis also 3,000 x 16 and 48,000 x 1: 372, 368
and 375 updates, an epoch's last incomplete batch dropped), cosine from the recipe's lr without warm-up, scored on all 10,000 test images
after every epoch; nothing is selected on the test set (the last epoch is the result).

The teachers are trained once on `recipes/fashion_mnist/teacher.yaml` (all 60,000 images) and
kept in the repository beside the records (RESULTS/teachers): `cnn` (the strong teacher) and
`cnn_epoch1` (the same run after its first epoch). `random` is the same network with random
weights (seeded), `shuffled` the strong teacher's outputs handed to other images of the same
batch (a derangement: right marginals, wrong images), `labels` the ground truth as a teacher.

Plans (`--plans`, default all):
- main: rows ROWS x regimes x seeds (12,000 x 4);
- ladder: STD both from each rung of LADDER, deit regime;
- data: DATA_ROWS x DATA_SIZES in DATA_REGIME.

Each finished run writes a small record, RESULTS/runs/REGIME/SIZE/ROW/seedS.json: its config
and the digest of it (teacher weights by their SHA-256), the teachers' digests and top-1, the
test top-1 of every head after every epoch, and minutes (summed over its epochs, across
resumes). A run whose record exists is not run again; a record whose digest differs from its
row's config today is refused in one line (`--rerun-changed` runs it again). `--commit` commits
each record (and nothing else) as it lands, so that a study stopped midway loses at most the
runs in flight. The teacher-output stores of each regime are measured before any student
trains: how often the teacher's top-1 differs from the label of a training view (under
mixup/CutMix the larger part of the mixed label), and the mean KL(label || teacher)
(RESULTS/disagreement/).

`--report` trains nothing and reads only RESULTS: on a fresh clone it prints every table of
RESULTS.md and draws RESULTS/chart.png. Run folders and stores go under --output (not kept).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import yaml

from stdistill.training.checkpoint import file_sha256
from stdistill.config import config_from_dict, first_difference, load_config
from stdistill.utils.disk import save_figure, write_atomic, write_json, writing
from stdistill.utils.errors import UserError, first_line
from stdistill.apps.quickstart import RECIPES, clear_run
from stdistill.method.teachers import recorded_architecture, recorded_contract

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
RESULTS = os.path.join(ROOT, 'benchmarks', 'results', 'fashion_mnist')
REGIMES = {'light': 'recipes/fashion_mnist/std.yaml', 'deit': 'recipes/fashion_mnist/std_deit.yaml'}
SIZES = {  # training images per epoch, epochs: 48,000 images seen, 372, 368, 375 updates at batch 128
    '12k': dict(train_samples=12000, epochs=4),
    '3k': dict(train_samples=3000, epochs=16),
    '48k': dict(train_samples=48000, epochs=1),
}
SMOKE = dict(train_samples=256, epochs=2, val_samples=500)  # --smoke: every size (the tests')
SMOKE_TEACHER = dict(train_samples=512, epochs=2, val_samples=500)
# the strong teacher: label, timm model, model_kwargs, epochs on all 60k images
TEACHER = ('ResNet-18', 'resnet18', {}, 20)
LABELS = {'model': 'labels'}
STD = dict(method='std', tokens='both', mine=False, teacher_weighting='entropy', inference_head='avg')
ROWS = {  # name -> (label, overrides on the regime's recipe); teachers by name until resolved
    'none': ('no distillation', dict(method='none', teachers=[])),
    'kd': ('soft KD (timm LogitDistillationTask)', dict(method='kd', teachers=['cnn'], distill='soft', tau=1.0)),
    'deit': ('DeiT token', dict(method='deit', teachers=['cnn'], distill='hard')),
    'std_both': ('STD both tokens', dict(STD, teachers=['cnn'])),
    'std_both_mine': ('STD both + MINE', dict(STD, mine=True, teachers=['cnn'])),
    'labels_kd': ('soft KD from the labels', dict(method='kd', teachers=['labels'], distill='soft', tau=1.0)),
    'labels_deit': ('DeiT token from the labels', dict(method='deit', teachers=['labels'], distill='hard')),
    'labels_std': ('STD both tokens from the labels', dict(STD, teachers=['labels'])),
}
# What a user deploys (deit regime, 12k): the head chosen on training images held out of training
# (the 48,000 that train_samples leaves unused give them: the training images stay the std_both
# row's), the class head taught by the teacher too (cls_distill), and the STD student folded into
# the plain backbone (stdistill fold: the student's chosen head as the teacher, through a store).
HOLDOUT = 2000
DEPLOY_ROWS = {
    'std_both_auto': ('STD both tokens, head chosen on held-out training images',
                      dict(STD, inference_head='auto', holdout=HOLDOUT, teachers=['cnn'])),
    'std_cls_distill': ('STD both + KD on the class head (cls_distill)',
                        dict(STD, cls_distill=True, inference_head='auto', holdout=HOLDOUT, teachers=['cnn'])),
    # trained by `stdistill fold` from the same seed's std_both_auto run (its teacher: that student)
    'fold': ('STD both, folded into the plain student (stdistill fold)', dict(teachers=['cnn'], fold_of='std_both_auto')),
}
DEPLOY_REGIME = 'deit'
# config keys added after the study's first records: left out of a config's digest at their defaults,
# so that the records made before them keep their digests
LATER_KEYS = {'holdout': 0, 'cls_distill': False}
HEAD_ROWS = ('std_both', 'std_both_mine')  # also scored with the class head alone, the distillation heads alone
# the ladder: STD both from teachers of less and less knowledge (deit regime); its two ends are main rows
LADDER = {'std_both': 'cnn', 'std_both_epoch1': 'cnn_epoch1', 'std_both_random': 'random',
          'std_both_shuffled': 'shuffled', 'labels_std': 'labels'}
LADDER_ROWS = {row: (f'STD both, teacher: {what}', dict(STD, teachers=[teacher]))
               for row, what in (('std_both_epoch1', 'the strong one after its first epoch'),
                                 ('std_both_random', 'random weights'),
                                 ('std_both_shuffled', 'the strong one, outputs shuffled within the batch'))
               for teacher in [LADDER[row]]}
ALL_ROWS = {**ROWS, **LADDER_ROWS, **DEPLOY_ROWS}
MEASURED_ON = {'cnn': 'std_both', 'cnn_epoch1': 'std_both_epoch1', 'random': 'std_both_random',
               'shuffled': 'std_both_shuffled'}
TEACHER_LABELS = {'cnn': TEACHER[0], 'cnn_epoch1': f'{TEACHER[0]} after 1 epoch', 'random': f'{TEACHER[0]}, random weights',
                  'shuffled': f'{TEACHER[0]}, outputs shuffled within the batch', 'labels': 'the labels'}
PLANS = ('main', 'ladder', 'data', 'deploy')
OUTPUT = 'runs/reproduce_fashion_mnist'  # run folders and stores, under the working folder
STUDY_SELECTION = dict(plans=PLANS, regimes=tuple(REGIMES), rows=None, seeds=(0, 1, 2))  # the whole study
DATA_REGIME = 'deit'  # the regime where the main rows show the teacher adding most (RESULTS.md)
DATA_ROWS, DATA_SIZES = ('none', 'std_both', 'labels_std'), ('3k', '48k')
# how a run is executed, not what it trains: left out of the config digest
EXECUTION_KEYS = ('workers', 'progress', 'log_interval', 'device', 'output', 'data_dir', 'teacher_outputs')


class Run(NamedTuple):
    row: str
    regime: str
    size: str
    seed: int

    def record(self, results: str) -> str:
        return os.path.join(results, 'runs', self.regime, self.size, self.row, f'seed{self.seed}.json')


# ---------------------------------------------------------------- configs, digests, records

def config_digest(values: Dict[str, Any], control: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """The digest of a run's whole config (every key, defaults included), EXECUTION_KEYS apart,
    with each teacher checkpoint given by its SHA-256; and that config as JSON."""
    doc = dataclasses.asdict(config_from_dict(values))
    for key in EXECUTION_KEYS:
        doc.pop(key)
    for key, default in LATER_KEYS.items():
        if doc[key] == default:
            doc.pop(key)
    doc['teachers'] = [dict(t, checkpoint=weights_sha256(t['checkpoint']) if t['checkpoint'] else None)
                       for t in doc['teachers']]
    if control:
        doc['control'] = control
    doc = json.loads(json.dumps(doc))  # as a record reads it back (tuples become lists)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest(), doc


_HASHED: Dict[Tuple[str, int, int], str] = {}


def weights_sha256(path: str) -> str:
    """file_sha256, once per file version (a report digests every run's config)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _HASHED:
        _HASHED[key] = file_sha256(path)
    return _HASHED[key]


def config_change(record: Dict[str, Any], config: Dict[str, Any]) -> str:
    """How a record's config differs from its row's `config` today: the first key that changed, or,
    where the configs are equal, that its digest was edited."""
    if record['config'] == config:
        return 'its config_digest is not that of its config: edited by hand?'
    return first_change(record['config'], config)


def first_change(old: Any, new: Any) -> str:
    """The first key where two configs differ, as 'key: old -> new'."""
    key, a, b = first_difference('', old, new)
    return f'{key or "config"}: {json.dumps(a)} -> {json.dumps(b)}'



def read_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _percent(value: Any) -> bool:
    return _number(value) and value <= 100


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _record_fault(doc: Any, kind: str, path: str, results: str) -> Optional[str]:
    """What is wrong with a record of `kind` ('run', 'teacher', 'disagreement') at `path`, or None."""
    if not isinstance(doc, dict):
        return 'not a JSON object'
    checks = {'config_digest': lambda v: isinstance(v, str), 'config': lambda v: isinstance(v, dict),
              'smoke': lambda v: isinstance(v, bool), 'minutes': _number}
    if kind == 'teacher':
        checks.update(name=lambda v: v in TEACHER_LABELS, file=lambda v: isinstance(v, str) and os.sep not in v,
                      label=lambda v: isinstance(v, str), model=lambda v: isinstance(v, str), epochs=_count,
                      top1=_percent, test_images=_count, weights_sha256=lambda v: isinstance(v, str))
    elif kind == 'run':
        checks.update(row=lambda v: v in ALL_ROWS, regime=lambda v: v in REGIMES, size=lambda v: v in SIZES,
                      seed=_count, params_m=_number, test_images=_count,
                      teachers=lambda v: isinstance(v, list) and all(isinstance(t, dict) and 'name' in t for t in v),
                      final=lambda v: isinstance(v, dict) and _percent(v.get('val_top1'))
                      and all(_percent(x) for x in v.values()),
                      per_epoch=lambda v: isinstance(v, list) and v and all(
                          isinstance(e, dict) and _percent(e.get('val_top1')) for e in v))
    else:
        checks.update(regime=lambda v: v in REGIMES, size=lambda v: v in SIZES, seed=_count,
                      teacher=lambda v: v in MEASURED_ON, views=lambda v: _count(v) and v > 0,
                      disagree_pct=_percent, kl_label_teacher=_number)
    wrong = next((key for key, ok in checks.items() if key not in doc or not ok(doc[key])), None)
    if wrong:
        return f'{wrong} is missing or not what a record holds'
    if kind == 'run':
        if doc['final']['val_top1'] != doc['per_epoch'][-1]['val_top1']:
            return 'its final top-1 is not its last epoch\'s'
        where = Run(doc['row'], doc['regime'], doc['size'], doc['seed']).record(results)
    elif kind == 'disagreement':
        where = os.path.join(results, 'disagreement', doc['regime'], doc['size'], doc['teacher'],
                             f'seed{doc["seed"]}.json')
    else:
        where = os.path.join(results, 'teachers', f'{doc["name"]}.json')
    if os.path.abspath(where) != os.path.abspath(path):
        return f'it is the record of {os.path.relpath(where, results)}'
    return None


def read_record(path: str, kind: str, results: str) -> Dict[str, Any]:
    """A study record, checked: a damaged one (unreadable, a key missing or out of range, in
    another record's place) is refused in one line naming it."""
    try:
        doc = read_json(path)
    except (OSError, ValueError) as e:
        fault = f'{type(e).__name__}: {e}'.splitlines()[0]
    else:
        fault = _record_fault(doc, kind, path, results)
    if fault:
        rel = os.path.relpath(path, ROOT)
        raise UserError(f'{rel} is a damaged {kind} record ({fault}): restore it (git checkout -- {rel}), or '
                        f'delete it and run the study again to remake it')
    return doc


def commit(paths: List[str], message: str) -> None:
    """Commit `paths` alone (other staged or unstaged changes are left as they are); a busy index
    (another git command) is waited for."""
    for attempt in range(30):
        added = subprocess.run(['git', 'add', '--', *paths], cwd=ROOT, capture_output=True, text=True)
        done = added.returncode == 0 and subprocess.run(
            ['git', 'commit', '-q', '-m', message, '--', *paths], cwd=ROOT, capture_output=True, text=True)
        if done and (done.returncode == 0 or 'nothing to commit' in done.stdout + done.stderr
                     or 'no changes added' in done.stdout + done.stderr):
            return
        time.sleep(2)
    print(f'   (could not commit {paths[0]}: {(done or added).stderr.strip()}; commit it by hand)', flush=True)


def check_results(results: str, for_report: bool) -> None:
    """--results must be a folder (or not exist yet, to train); --report needs records in it; a
    folder to train into must take a file, tried before any training."""
    parts = [results] + [os.path.join(results, d) for d in ('runs', 'teachers', 'disagreement')]
    for path in parts:
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f'--results: {path} is a file, not a folder: give the study\'s results folder '
                            f'(default {os.path.relpath(RESULTS, ROOT)})')
    above = results
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise UserError(f'--results {results}: {above} is a file, not a folder: give another --results')
    if for_report:
        if not any(glob.glob(os.path.join(results, sub, '**', '*.json'), recursive=True)
                   for sub in ('runs', 'teachers', 'disagreement')):
            raise UserError(f'--results {results} holds no study records: give the folder they are in '
                            f'(default {os.path.relpath(RESULTS, ROOT)})')
        return
    probe = os.path.join(above, f'.write-test{os.getpid()}')  # the folder, or where it will be made
    with writing(above, 'the study\'s records', 'run the study again'):
        write_atomic(probe, lambda f: f.write(''))
        os.remove(probe)


def check_committable(results: str) -> None:
    """With --commit: refuse up front a results folder whose records git would not commit
    (outside the repository, or ignored), rather than say 'commit it by hand' after every run."""
    results = os.path.realpath(results)  # a link out of the repository is outside it for git too
    probes = [Run('none', 'light', '12k', 0).record(results), os.path.join(results, 'teachers', 'cnn.json'),
              os.path.join(results, 'teachers', 'cnn.safetensors'),
              os.path.join(results, 'disagreement', 'light', '12k', 'cnn', 'seed0.json')]
    for probe in probes:
        if os.path.commonpath([os.path.realpath(ROOT), probe]) != os.path.realpath(ROOT):
            raise UserError(f'--commit: {results} is outside the repository {ROOT}: give a --results inside it, '
                            f'or drop --commit')
        # -v also names a negating rule that keeps a file, so it decides nothing: only the exit status does
        check = ['git', 'check-ignore', '--no-index', probe]
        if subprocess.run(check, cwd=ROOT, capture_output=True).returncode == 0:
            rule = subprocess.run([*check[:2], '-v', *check[2:]], cwd=ROOT, capture_output=True,
                                  text=True).stdout.split('\t')[0]
            raise UserError(f'--commit: git ignores {os.path.relpath(probe, ROOT)} (rule {rule}): un-ignore the '
                            f'records in .gitignore, or drop --commit')


def machine() -> str:
    cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
               platform.processor()) if os.path.isfile('/proc/cpuinfo') else platform.processor()
    return f'{cpu}, {os.cpu_count()} CPUs'


# ---------------------------------------------------------------- runs

def same_config(cfg) -> bool:
    """Whether cfg's run folder holds a run of this config, EXECUTION_KEYS apart."""
    path = os.path.join(cfg.output, 'config.yaml')
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        saved = yaml.safe_load(f)
    try:
        saved = config_from_dict(saved)
    except (ValueError, TypeError):  # a run of an older stdistill, with a key it no longer has: not this run
        return False
    if cfg.num_classes is None:  # the run folder records the class count read from the data
        cfg = dataclasses.replace(cfg, num_classes=saved.num_classes)
    keep = [k for k in EXECUTION_KEYS if k not in ('output', 'data_dir', 'teacher_outputs')]
    cfg = dataclasses.replace(cfg, **{k: getattr(saved, k) for k in keep})
    return dataclasses.asdict(cfg) == dataclasses.asdict(saved)


def train_run(values: Dict[str, Any], stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Train the config `values`: a finished identical run is reused, an interrupted identical one
    resumed from its last epoch, anything else started afresh; return its summary."""
    from stdistill.training.train import train

    cfg = config_from_dict(values)
    summary_path = os.path.join(cfg.output, 'summary.json')
    same = same_config(cfg)
    if same and os.path.isfile(summary_path):
        done = read_json(summary_path)
        if done.get('epochs_done') == cfg.epochs or (stop_after and done.get('epochs_done', 0) >= stop_after):
            return done
    resume = same and any(os.path.isdir(os.path.join(cfg.output, d)) for d in ('last', 'previous'))
    if not resume:
        clear_run(cfg.output)  # an unfinished or different run starts again; a folder that is no run is refused
    else:
        print(f'   resuming {cfg.output}', flush=True)
    return train(cfg, resume=resume, stop_after=stop_after)


def epochs_of(folder: str) -> List[Dict[str, Any]]:
    with open(os.path.join(folder, 'log.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def minutes_of(rows: List[Dict[str, Any]]) -> float:
    """Minutes of training and evaluation in a run's epochs (its log rows), summed over every
    process that ran them: a resumed run counts the epochs before the interruption too."""
    return round(sum(r['epoch_s'] for r in rows) / 60, 2)


# ---------------------------------------------------------------- teachers

def teacher_values(args) -> Dict[str, Any]:
    label, model, kwargs, epochs = TEACHER
    budget = SMOKE_TEACHER if args.smoke else dict(train_samples=0, epochs=epochs)
    return dict(RECIPES['teacher'], **budget, model=model, model_kwargs=dict(kwargs), warmup_epochs=1,
                workers=args.workers, data_dir=args.data_dir, device=args.device, progress=False,
                output=os.path.join(args.output, 'teachers', 'cnn'))


def keep_first_epoch(run: str, to: str) -> None:
    """Copy the weights of `run`'s checkpoint after its first epoch (in last/ or, once a later
    epoch is saved, previous/) to `to`, unless `to` already holds them."""
    for kept in ('last', 'previous'):
        state = os.path.join(run, kept, 'state.json')
        if os.path.isfile(state) and read_json(state)['epoch'] == 0:
            shutil.copyfile(os.path.join(run, kept, 'model.safetensors'), to)
            return
    if not os.path.isfile(to):
        raise UserError(f'{run} has no checkpoint after its first epoch any more: delete that folder and '
                        f'train the teachers again')


def teachers(args) -> Dict[str, Dict[str, Any]]:
    """The records of the trained teachers ('cnn', 'cnn_epoch1'), training them first unless
    --report: the epoch-1 weights are kept when the run stops after its first epoch, then the
    run resumes (bitwise as if it had not stopped) to its end."""
    folder = os.path.join(args.results, 'teachers')
    values = teacher_values(args)
    digest, config = config_digest(values)
    records = {name: os.path.join(folder, f'{name}.json') for name in ('cnn', 'cnn_epoch1')}
    if all(os.path.isfile(p) for p in records.values()):
        found = {name: read_record(p, 'teacher', args.results) for name, p in records.items()}
        if found['cnn']['config_digest'] != digest and not args.rerun_changed:
            raise UserError(f'{records["cnn"]} was trained with another config ({first_change(found["cnn"]["config"], config)}'
                            f'): retrain the teachers with --rerun-changed (every record distilled from them is then '
                            f'refused), or restore TEACHER')
        if found['cnn']['config_digest'] == digest:
            for name, doc in found.items():
                path = os.path.join(folder, doc['file'])
                if not os.path.isfile(path) or file_sha256(path) != doc['weights_sha256']:
                    raise UserError(f'{path} is missing or is not the weights its record {records[name]} names: '
                                    f'restore it from git (git checkout -- {os.path.relpath(path, ROOT)})')
            return found
    if not args.teachers_only:  # one process trains them (two side by side would share a folder)
        raise UserError(f'no teacher records in {os.path.relpath(folder)}: train the teachers first, '
                        f'alone (--teachers-only)' + (', with --rerun-changed' if args.rerun_changed else ''))
    print(f'== teacher cnn: {values["model"]}, {values["epochs"]} epochs', flush=True)
    train_run(values, stop_after=1)
    run = values['output']
    first = epochs_of(run)[0]
    os.makedirs(folder, exist_ok=True)
    out = {}
    epoch1 = os.path.join(folder, 'cnn_epoch1.safetensors')
    keep_first_epoch(run, epoch1)
    summary = train_run(values)
    rows = epochs_of(run)
    shutil.copyfile(os.path.join(run, 'last', 'model.safetensors'), os.path.join(folder, 'cnn.safetensors'))
    common = dict(label=TEACHER[0], model=values['model'], model_kwargs=values['model_kwargs'],
                  config_digest=digest, config=config, test_images=rows[-1]['val_images'],
                  machine=machine(), smoke=args.smoke, date=datetime.date.today().isoformat())
    out['cnn'] = dict(common, name='cnn', file='cnn.safetensors', epochs=len(rows), minutes=minutes_of(rows),
                      top1=summary['final']['val_top1'], curve=[r['val_top1'] for r in rows],
                      weights_sha256=file_sha256(os.path.join(folder, 'cnn.safetensors')))
    out['cnn_epoch1'] = dict(common, name='cnn_epoch1', file='cnn_epoch1.safetensors', epochs=1,
                             label=f'{TEACHER[0]} after 1 epoch', top1=first['val_top1'], minutes=minutes_of([first]),
                             weights_sha256=file_sha256(epoch1))
    for name, doc in out.items():
        write_json(records[name], doc, sort_keys=True)  # folder: made above
    if args.commit:
        commit([folder], f'Study record: teachers {TEACHER[0]} ({out["cnn"]["top1"]:.2f}) and after 1 epoch '
                         f'({out["cnn_epoch1"]["top1"]:.2f})')
    return out


def resolve_teachers(names: List[str], found: Dict[str, Dict[str, Any]], args) -> Tuple[List[Dict], Optional[str]]:
    """Teacher names as config entries, and the run's control ('shuffled' or None)."""
    entries, control = [], None
    for name in names:
        if name == 'labels':
            entries.append(dict(LABELS))
            continue
        model, kwargs = TEACHER[1], dict(TEACHER[2])
        if name == 'random':  # the trained teacher's network and input, random weights (seeded by the run's seed)
            trained = os.path.join(args.results, 'teachers', found['cnn']['file'])
            arch, contract = recorded_architecture(trained), recorded_contract(trained)
            entries.append(dict(model=model, kwargs=dict(arch['model_kwargs'], in_chans=arch['in_chans']),
                                pretrained=False, mean=list(contract['mean']), std=list(contract['std']),
                                img_size=arch['img_size'], interpolation=contract['interpolation']))
            continue
        source = 'cnn' if name == 'shuffled' else name
        control = 'shuffled' if name == 'shuffled' else control
        entries.append(dict(model=model, kwargs=kwargs,
                            checkpoint=os.path.join(args.results, 'teachers', found[source]['file'])))
    return entries, control


# ---------------------------------------------------------------- the shuffled teacher

def derangement(images):
    """For a batch (B, C, H, W): source (B,), image i taking the outputs of image source[i] != i;
    drawn from the batch's own bytes, so that the same batch gets the same draw (a resumed run
    and the disagreement measure see what the run saw)."""
    import torch

    seed = int(hashlib.sha256(images.detach().float().cpu().numpy().tobytes()).hexdigest()[:15], 16)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    source = torch.empty_like(order)
    source[order] = order.roll(1)  # image order[i] takes the outputs of image order[i - 1]
    return source


def shuffled_teachers(teachers, images, targets=None):
    """stdistill.method.task.run_teachers with each network teacher's outputs handed to other images of
    the batch (derangement): the teacher's marginals, on the wrong images."""
    from stdistill.method.losses import LabelsTeacher

    outputs = ORIGINAL_RUN_TEACHERS(teachers, images, targets)
    source = derangement(images)
    return [o if isinstance(t, LabelsTeacher) else o[source.to(o.device)] for t, o in zip(teachers, outputs)]


ORIGINAL_RUN_TEACHERS = None


def train_with_control(values: Dict[str, Any], control: Optional[str]) -> Dict[str, Any]:
    global ORIGINAL_RUN_TEACHERS
    if control != 'shuffled':
        return train_run(values)
    import stdistill.method.task as task
    ORIGINAL_RUN_TEACHERS = task.run_teachers
    task.run_teachers = shuffled_teachers
    try:
        return train_run(values)
    finally:
        task.run_teachers = ORIGINAL_RUN_TEACHERS


# ---------------------------------------------------------------- stores and disagreement

def make_store(values: Dict[str, Any], folder: str) -> str:
    """The teacher-output store of a run's one teacher (soft top-10 at tau 1: exact for 10
    classes, serving soft and hard rows), made, completed, or found whole."""
    from stdistill.apps.teacher_pass import teacher_pass

    store = dict(values, method='kd', distill='soft', tau=1.0, store_topk=10, teacher_outputs=None,
                 mine=False, mine_warmup_epochs=0, inference_head='cls', holdout=0, cls_distill=False)
    while True:
        try:
            teacher_pass(config_from_dict(store), folder)
            return folder
        except UserError as e:
            if 'in use by another stdistill process' in str(e):
                time.sleep(10)  # two processes side by side (a row each) share a seed's store: wait for it
            elif 'made for other settings' in str(e):  # e.g. retrained teachers: made again
                shutil.rmtree(folder)
            else:  # a full disk, say
                raise


def disagreement(values: Dict[str, Any], store_folder: str, shuffled: bool = False) -> Dict[str, Any]:
    """Over every training view of the run `values` (its loader, mixup and schedule, as the
    students see them), from the store: the share of views whose teacher top-1 is not the
    label's top-1 (under mixup/CutMix the larger part of the mixed label), and the mean
    KL(label || teacher) in nats, the label distribution being the target the student's class
    loss trains towards (label smoothing included). shuffled: the outputs as the shuffled
    teacher hands them out (derangement)."""
    import torch
    from stdistill.training.builders import student_contract
    from stdistill.utils.distributed import DistInfo
    from stdistill.training.engine import prepare_batch
    from stdistill.data.loaders import build_data, build_mixup, data_seed_of
    from stdistill.training.store import TeacherStore, outputs_spec, run_fingerprint

    cfg = config_from_dict(dict(values, method='kd', distill='soft', tau=1.0, store_topk=10, mine=False,
                                teacher_outputs=store_folder, inference_head='cls', holdout=0, cls_distill=False))
    contract = student_contract(cfg)
    data = build_data(cfg, DistInfo(), contract.mean, contract.std)
    cfg = dataclasses.replace(cfg, batch_size=data.batch_size)
    mixup = build_mixup(cfg, data.num_classes)
    fingerprint = run_fingerprint(cfg, data.train_loader.dataset, data.classes, 1, contract.to_json())
    steps = len(data.train_loader)
    store = TeacherStore(store_folder, fingerprint, outputs_spec(cfg), 0, steps, torch.device('cpu'))
    views, differ, kl = 0, 0, 0.0
    for epoch in range(cfg.epochs):
        data.train_loader.sampler.set_epoch(epoch)
        for step, raw in enumerate(data.train_loader):
            batch = prepare_batch(raw, torch.device('cpu'), mixup, data_seed_of(cfg), epoch, step, 0)
            if batch.images is None:
                continue
            t = store(epoch, step, batch.indices)[0]
            logits = torch.full((len(t.labels), data.num_classes), float('-inf'))
            logits.scatter_(1, t.topk_index, t.topk_logits)
            log_teacher = torch.log_softmax(logits, dim=1)
            if shuffled:
                log_teacher = log_teacher[derangement(batch.images)]
            if batch.targets.dim() == 2:  # mixup/CutMix targets, smoothing folded in
                label = batch.targets.float()
            else:
                s = cfg.smoothing
                label = torch.full((len(batch.targets), data.num_classes), s / data.num_classes)
                label.scatter_(1, batch.targets.long()[:, None], 1 - s + s / data.num_classes)
            differ += int((log_teacher.argmax(1) != label.argmax(1)).sum())
            kl += float(torch.where(label > 0, label * (label.clamp_min(1e-30).log() - log_teacher),
                                    torch.zeros_like(label)).sum())
            views += len(label)
    return {'views': views, 'disagree_pct': 100 * differ / views, 'kl_label_teacher': kl / views}


# ---------------------------------------------------------------- the plan

def plan(args) -> List[Run]:
    """The runs, a seed of every row before the next seed of any (a study stopped midway has
    whole rows of seeds)."""
    runs = []
    for seed in args.seeds:
        if 'main' in args.plans:
            runs += [Run(row, regime, '12k', seed) for regime in args.regimes for row in ROWS]
        if 'ladder' in args.plans and 'deit' in args.regimes:
            runs += [Run(row, 'deit', '12k', seed) for row in LADDER_ROWS]
        if 'data' in args.plans and DATA_REGIME in args.regimes:
            runs += [Run(row, DATA_REGIME, size, seed) for size in DATA_SIZES for row in DATA_ROWS]
        if 'deploy' in args.plans and DEPLOY_REGIME in args.regimes:
            runs += [Run(row, DEPLOY_REGIME, '12k', seed) for row in DEPLOY_ROWS]
    if args.rows:
        runs = [r for r in runs if r.row in args.rows]
    return list(dict.fromkeys(runs))


def run_values(run: Run, found: Dict[str, Dict[str, Any]], args
               ) -> Tuple[Dict[str, Any], Optional[str], str, Dict[str, Any]]:
    """A run's config, control, config digest and config as recorded. Its folder is named by the
    digest, so that a run of another config (retrained teachers included) never resumes or
    reuses the folder of the old one."""
    label, overrides = ALL_ROWS[run.row]
    if 'fold_of' in overrides:
        return fold_values(run, found, args)
    recipe = {k: v for k, v in dataclasses.asdict(load_config(os.path.join(ROOT, REGIMES[run.regime]))).items()
              if k not in ('teachers', 'output')}
    size = SMOKE if args.smoke else SIZES[run.size]
    values = dict(recipe, **size, warmup_epochs=0, **{k: v for k, v in overrides.items() if k != 'teachers'},
                  seed=run.seed, workers=args.workers, data_dir=args.data_dir, device=args.device, progress=False,
                  output=os.path.join(args.output, 'runs', run.regime, run.size, run.row, f'seed{run.seed}'))
    values['teachers'], control = resolve_teachers(overrides['teachers'], found, args)
    digest, config = config_digest(values, control)  # output is not part of it
    values['output'] += f'-{digest[:12]}'
    return values, control, digest, config


def fold_values(run: Run, found: Dict[str, Dict[str, Any]], args
                ) -> Tuple[Dict[str, Any], Optional[str], str, Dict[str, Any]]:
    """A fold row's config (stdistill.apps.fold.fold_config of its source run's folder; None until that
    run has finished), control (None), digest and config as recorded: the fold is identified by its
    source run's config digest, so a fresh clone's --report checks it without any run folder."""
    from stdistill.apps.fold import fold_config

    source = Run(ALL_ROWS[run.row][1]['fold_of'], run.regime, run.size, run.seed)
    source_values, _, source_digest, _ = run_values(source, found, args)
    # the source's last epoch, as every record's result: its best/ is chosen on the test images
    config = {'fold_of': {'row': source.row, 'config_digest': source_digest, 'checkpoint': 'last'}, 'fold_overrides': []}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    output = os.path.join(args.output, 'runs', run.regime, run.size, run.row, f'seed{run.seed}-{digest[:12]}')
    values = None
    if os.path.isfile(os.path.join(source_values['output'], 'summary.json')):
        cfg = fold_config(source_values['output'], [f'output={output}', 'progress=false', f'workers={args.workers}',
                                                    f'device={args.device}',
                                                    f'teacher_outputs={store_folder(run, source.row, args)}'],
                          which='last')
        values = dataclasses.asdict(cfg)
    return values, None, digest, config


def train_fold(run: Run, values: Optional[Dict[str, Any]], found, args) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train a fold row: its source run first (reused when its folder holds it finished, trained
    again when only its record is left, as on a fresh clone), then the fold's teacher pass into its
    store (completed when interrupted), then the fold (resumed when interrupted). Returns train()'s
    summary and the fold's config values."""
    from stdistill.apps.teacher_pass import teacher_pass

    source = Run(ALL_ROWS[run.row][1]['fold_of'], run.regime, run.size, run.seed)
    if values is None:
        print(f'== source of the fold: {run.regime} {run.size} {source.row} seed {run.seed}', flush=True)
        source_values, control, _, _ = run_values(source, found, args)
        teacher = store_teacher(source)
        if teacher and not args.online:
            source_values['teacher_outputs'] = make_store(source_values, store_folder(source, teacher, args))
        train_with_control(source_values, control)
        values = fold_values(run, found, args)[0]
    store = values['teacher_outputs']
    print(f'== teacher pass of the fold: {values["teachers"][0]["checkpoint"]} -> {store}', flush=True)
    teacher_pass(config_from_dict(dict(values, teacher_outputs=None)), store)
    return train_run(values), values


def store_teacher(run: Run) -> Optional[str]:
    """The teacher whose store a run reads (None: no teacher, the labels, or online)."""
    names = ALL_ROWS[run.row][1]['teachers']
    if not names or names[0] in ('labels', 'shuffled'):
        return None
    return names[0]


def do_run(run: Run, found: Dict[str, Dict[str, Any]], args) -> Optional[Dict[str, Any]]:
    """Train one run and write its record; a run whose record exists is skipped (or refused, or
    with --rerun-changed run again, when its config changed). Returns its record, None when
    --report finds none."""
    path = run.record(args.results)
    values, control, digest, config = run_values(run, found, args)
    if os.path.lexists(path):
        record = read_record(path, 'run', args.results)
        if record['config_digest'] == digest:
            return record
        if not args.rerun_changed:
            raise UserError(f'{os.path.relpath(path, ROOT)} was made with another config '
                            f'({config_change(record, config)}): run it again '
                            f'with --rerun-changed, or restore the row')
    if args.report:
        return None
    fold_of = ALL_ROWS[run.row][1].get('fold_of')
    teacher = None if fold_of else store_teacher(run)
    if teacher and not args.online:
        store = store_folder(run, teacher, args)
        print(f'== teacher pass {teacher} {run.regime} {run.size} seed {run.seed}', flush=True)
        make_store(values, store)
        values['teacher_outputs'] = store
    print(f'== {run.regime} {run.size} {run.row} seed {run.seed}', flush=True)
    if fold_of:
        summary, values = train_fold(run, values, found, args)
    else:
        summary = train_with_control(values, control)
    rows = epochs_of(summary['output'])
    heads = ('val_top1', 'val_top1_cls', 'val_top1_dist', 'val_top1_avg', 'holdout_top1_cls', 'holdout_top1_dist',
             'holdout_top1_avg')
    teachers_of = []
    for name in ALL_ROWS[run.row][1]['teachers']:
        source = found.get('cnn' if name == 'shuffled' else name)  # labels and random: no weights file
        teachers_of.append({'name': name, **({'top1': source['top1'], 'weights_sha256': source['weights_sha256']}
                                             if source else {})})
    if fold_of:  # the fold's own teacher: the source run's student, with the head it chose
        teachers_of = [{'name': fold_of, 'via': teachers_of}]
    record = {'row': run.row, 'label': ALL_ROWS[run.row][0], 'regime': run.regime, 'size': run.size,
              'train_samples': values['train_samples'], 'epochs': values['epochs'], 'seed': run.seed,
              'config_digest': digest, 'config': config, 'teachers': teachers_of, 'control': control,
              'per_epoch': [{k: r[k] for k in ('epoch', *heads, 'val_images', 'inference_head') if k in r}
                            for r in rows],
              'final': {k: v for k, v in summary['final'].items() if k in heads},
              'test_images': rows[-1]['val_images'], 'params_m': summary['params_m'],
              'minutes': minutes_of(rows), 'smoke': args.smoke,
              'machine': machine(), 'date': datetime.date.today().isoformat()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, record, sort_keys=True)
    print(f'   top-1 {record["final"]["val_top1"]:.2f} in {record["minutes"]:.1f} min -> {os.path.relpath(path, ROOT)}',
          flush=True)
    if args.commit:
        commit([path], f'Study record: {run.regime} {run.size} {run.row} seed {run.seed} '
                       f'({record["final"]["val_top1"]:.2f})')
    return record


def store_folder(run: Run, teacher: str, args) -> str:
    return os.path.join(args.output, 'stores', run.regime, run.size, teacher, f'seed{run.seed}')


def measure(run: Run, found: Dict[str, Dict[str, Any]], args) -> None:
    """The disagreement record of the store a run reads (made first if need be), or for the
    shuffled teacher of the strong teacher's store as the run hands it out; once per regime,
    size, teacher and seed."""
    teacher = ALL_ROWS[run.row][1]['teachers'][0]
    source = 'cnn' if teacher == 'shuffled' else teacher
    path = os.path.join(args.results, 'disagreement', run.regime, run.size, teacher, f'seed{run.seed}.json')
    # the views are a seed's, regime's and size's, whichever row reads the store: measured on one row's config
    values, _, digest, config = run_values(Run(MEASURED_ON[teacher], run.regime, run.size, run.seed), found, args)
    store = store_folder(run, source, args)
    if os.path.lexists(path) and read_record(path, 'disagreement', args.results)['config_digest'] == digest:
        return
    print(f'== teacher pass {source} {run.regime} {run.size} seed {run.seed}', flush=True)
    make_store(values, store)
    began = time.perf_counter()
    doc = disagreement(values, store, shuffled=teacher == 'shuffled')
    record = dict(doc, regime=run.regime, size=run.size, teacher=teacher, seed=run.seed, config_digest=digest,
                  config=config, smoke=args.smoke, minutes=round((time.perf_counter() - began) / 60, 2),
                  date=datetime.date.today().isoformat())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, record, sort_keys=True)
    print(f'   {teacher} vs labels on {doc["views"]} views of {run.regime}: {doc["disagree_pct"]:.1f}% differ, '
          f'KL {doc["kl_label_teacher"]:.3f}', flush=True)
    if args.commit:
        commit([path], f'Study record: disagreement {run.regime} {run.size} {teacher} seed {run.seed}')


# ---------------------------------------------------------------- the report

def load_teachers(results: str, smoke: bool) -> List[Dict[str, Any]]:
    """The teacher records (cnn, cnn_epoch1) of the budget (smoke or not)."""
    paths = [os.path.join(results, 'teachers', f'{name}.json') for name in ('cnn', 'cnn_epoch1')]
    docs = [read_record(p, 'teacher', results) for p in paths if os.path.lexists(p)]
    return [d for d in docs if d['smoke'] == smoke]


Study = Tuple[List[Dict[str, Any]], List[Dict[str, Any]], int, List[Tuple[str, str]]]


def load_records(results: str, smoke: bool) -> Study:
    """The run records and disagreement measures (smoke or not); how many run records were left
    out for having distilled from other weights than the teachers recorded today (runs of
    retrained teachers not yet run again: never averaged with the new ones); and (record, first
    change) for those left out for a config that is no longer their row's (split_changed)."""
    runs = [read_record(p, 'run', results)
            for p in sorted(glob.glob(os.path.join(results, 'runs', '*', '*', '*', 'seed*.json')))]
    measures = [read_record(p, 'disagreement', results)
                for p in sorted(glob.glob(os.path.join(results, 'disagreement', '*', '*', '*', 'seed*.json')))]
    runs = [r for r in runs if r['smoke'] == smoke]
    weights = {d['name']: d['weights_sha256'] for d in load_teachers(results, smoke)}
    named = sorted({t['name'] for r in runs for t in r['teachers'] if t.get('weights_sha256')} - set(weights)
                   - {'shuffled'})
    if named:
        folder = os.path.relpath(os.path.join(results, 'teachers'), ROOT)
        raise UserError(f'run records distil from teacher {named[0]}, which has no record in {folder}: restore the '
                        f'teachers\' records and weights (git checkout -- {folder})')
    weights['shuffled'] = weights.get('cnn')  # the strong teacher's outputs, shuffled
    current = [r for r in runs if all(t.get('weights_sha256') in (None, weights.get(t['name'])) for t in r['teachers'])]
    kept, changed = split_changed(current, results, smoke)
    return kept, [m for m in measures if m['smoke'] == smoke], len(runs) - len(current), changed


def split_changed(records: List[Dict[str, Any]], results: str, smoke: bool
                  ) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """The records whose config is their row's today, and (record, first change) for the others
    (a recipe or row edited since): a training run refuses those, so the report leaves them out."""
    found = {d['name']: d for d in load_teachers(results, smoke)}
    args = argparse.Namespace(results=results, smoke=smoke, workers=0, data_dir=None, device='auto', output=results)
    kept, changed = [], []
    for r in records:
        run = Run(r['row'], r['regime'], r['size'], r['seed'])
        _, _, digest, config = run_values(run, found, args)
        if r['config_digest'] == digest:
            kept.append(r)
        else:
            changed.append((os.path.relpath(run.record(results), results), config_change(r, config)))
    return kept, changed


def _by_seed(records: List[Dict[str, Any]], row: str, regime: str, size: str, head: str = 'val_top1'
             ) -> Dict[int, float]:
    return {r['seed']: r['final'][head] for r in records
            if r['row'] == row and r['regime'] == regime and r['size'] == size and head in r['final']}


def _stats(values: Iterable[float], signed: bool = False) -> str:
    """'mean ± std' over seeds (signed: with the sign of a difference)."""
    values = list(values)
    if not values:
        return 'n/a'
    spread = f' ± {statistics.stdev(values):.2f}' if len(values) > 1 else ' (one seed)'
    return f'{statistics.mean(values):{"+" if signed else ""}.2f}{spread}'


def _paired(a: Dict[int, float], b: Dict[int, float]) -> List[float]:
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def _verdict(diffs: List[float]) -> str:
    """All paired differences above 0: reproduced; all below: the opposite; else not decided."""
    if len(diffs) < 2:
        return 'not testable (under 2 seeds)'
    if all(d > 0 for d in diffs):
        return 'reproduced'
    if all(d < 0 for d in diffs):
        return 'not reproduced (the opposite, every seed)'
    if all(d == 0 for d in diffs):
        return 'not reproduced (no difference)'
    return 'not reproduced (seeds disagree)'


# two-sided 95% quantiles of Student's t by degrees of freedom (n seeds - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def _interval(diffs: List[float]) -> Optional[Tuple[float, float, float]]:
    """(mean, low, high): the 95% confidence interval of the mean paired difference (t over seeds);
    None under 2 seeds."""
    if len(diffs) < 2 or len(diffs) - 1 not in T95:
        return None
    mean = statistics.mean(diffs)
    half = T95[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def _ci_verdict(diffs: List[float], margin: float = 0.0) -> str:
    """Decided by the 95% interval of the paired differences against `margin`: above it, below it,
    or not decided (the interval holds it)."""
    ci = _interval(diffs)
    if ci is None:
        return 'not testable (under 2 seeds)'
    if ci[1] > margin:
        return 'yes' if margin == 0 else f'yes (above {margin:+g})'
    if ci[2] < margin:
        return 'no' if margin == 0 else f'no (below {margin:+g})'
    return 'not decided'


def _ci_text(diffs: List[float]) -> str:
    ci = _interval(diffs)
    return 'n/a' if ci is None else f'{ci[0]:+.2f} ({ci[1]:+.2f} to {ci[2]:+.2f})'


def deploy_section(records: List[Dict[str, Any]]) -> List[str]:
    """RESULTS.md's "What you deploy": each model a user can take away from the deit regime's runs
    (12,000 x 4), what it costs at inference, and the paired comparisons the choice rests on."""
    regime, size = DEPLOY_REGIME, '12k'
    if not any(r['row'] in DEPLOY_ROWS and r['regime'] == regime for r in records):
        return []
    from stdistill.apps.profiling import profile_model
    model = load_config(os.path.join(ROOT, REGIMES[regime])).model
    plain = profile_model(model, img_size=28, in_chans=1)
    tokens = profile_model(f'std_{model}', img_size=28, in_chans=1, num_teachers=1, num_classes=10)
    cost = {False: f'{plain.params / 1e6:.3f}M, {plain.macs / 1e6:.1f}M', True: f'{tokens.params / 1e6:.3f}M, '
            f'{tokens.macs / 1e6:.1f}M'}
    auto = 'val_top1'  # an auto row's reported top-1: the head it chose on the holdout images
    rows_spec = [  # label, row, head, has tokens at inference, timm loads it alone
        ('plain student (no distillation)', 'none', 'val_top1', False),
        ('soft KD (timm LogitDistillationTask)', 'kd', 'val_top1', False),
        ('STD both, averaged heads (avg, the paper\'s)', 'std_both_auto', 'val_top1_avg', True),
        ('STD both, distillation heads (dist)', 'std_both_auto', 'val_top1_dist', True),
        ('STD both, head chosen on the holdout (auto)', 'std_both_auto', auto, True),
        ('STD both, class head alone (cls)', 'std_both_auto', 'val_top1_cls', False),
        ('STD + cls_distill, head chosen on the holdout (auto)', 'std_cls_distill', auto, True),
        ('STD + cls_distill, class head alone (cls)', 'std_cls_distill', 'val_top1_cls', False),
        ('STD both folded into the plain student (stdistill fold)', 'fold', 'val_top1', False),
    ]
    values = {(row, head): _by_seed(records, row, regime, size, head) for _, row, head, _ in rows_spec}
    out = [f'### What you deploy ({regime} regime, 12,000 images x 4 epochs)', '']
    rows = []
    for label, row, head, with_tokens in rows_spec:
        v = values[(row, head)]
        chosen = ''
        if head == auto and ALL_ROWS[row][1].get('inference_head') == 'auto':
            picks = [r['per_epoch'][-1].get('inference_head') for r in records
                     if r['row'] == row and r['regime'] == regime and r['size'] == size]
            chosen = ', '.join(f'{h} x{picks.count(h)}' for h in sorted(set(picks), key=str))
        rows.append([label, f'{_stats(v.values())} ({len(v)})' if v else 'not run', cost[with_tokens],
                     'one pair (tokens)' if with_tokens else 'none (the plain backbone)', chosen,
                     ', '.join(f'{v[s]:.2f}' for s in sorted(v))])
    out += _table(['model you take away', 'test top-1 (%), seeds', 'params, MACs (1 image)', 'token layers at inference',
                   'head chosen', 'per seed'], rows)
    out += ['', f'Params and MACs of the model at inference ({model}, 28x28, one teacher\'s token pair for the '
            f'token heads; torch.utils.flop_counter). A model without token layers exports as the plain backbone, '
            f'which timm loads alone when it is one of timm\'s architectures (Mixer-S/16, say; {model} is registered '
            f'by stdistill); a token model exports as std_{model}, which timm loads after `import stdistill`. '
            f'The auto rows choose the head on {HOLDOUT:,} '
            f'training images the run never trained on (drawn from the 48,000 that train_samples leaves out), '
            f'at the last epoch; the test split is never used to choose.', '']
    comparisons = [  # claim, a, b, margin
        ('the fold beats soft KD', ('fold', 'val_top1'), ('kd', 'val_top1'), 0.0),
        ('the fold is within 1 point of the token model (auto)', ('fold', 'val_top1'), ('std_both_auto', auto), -1.0),
        ('the fold beats the plain student', ('fold', 'val_top1'), ('none', 'val_top1'), 0.0),
        ('cls_distill\'s class head beats soft KD', ('std_cls_distill', 'val_top1_cls'), ('kd', 'val_top1'), 0.0),
        ('cls_distill\'s class head is within 1 point of the token model (auto)', ('std_cls_distill', 'val_top1_cls'),
         ('std_both_auto', auto), -1.0),
        ('cls_distill\'s class head beats STD\'s class head', ('std_cls_distill', 'val_top1_cls'),
         ('std_both_auto', 'val_top1_cls'), 0.0),
        ('cls_distill keeps the token model (auto vs auto)', ('std_cls_distill', auto), ('std_both_auto', auto), -1.0),
        ('auto beats avg (the same runs)', ('std_both_auto', auto), ('std_both_auto', 'val_top1_avg'), 0.0),
        ('auto is never worse than avg (every seed, both variants)', None, None, None),
    ]
    rows = []
    for claim, a, b, margin in comparisons:
        if a is None:
            diffs = [d for row in ('std_both_auto', 'std_cls_distill')
                     for d in _paired(values.get((row, auto)) or _by_seed(records, row, regime, size, auto),
                                      _by_seed(records, row, regime, size, 'val_top1_avg'))]
            worse = sum(d < 0 for d in diffs)
            rows.append([claim, 'auto minus avg, per run', ', '.join(f'{d:+.2f}' for d in diffs) or 'no runs', '',
                         f'{"yes" if diffs and not worse else "no"} ({worse} of {len(diffs)} runs worse)'
                         if diffs else 'not testable'])
            continue
        va = values.get(a) or _by_seed(records, a[0], regime, size, a[1])
        vb = values.get(b) or _by_seed(records, b[0], regime, size, b[1])
        diffs = _paired(va, vb)
        rows.append([claim, f'{_label(a)} minus {_label(b)}', ', '.join(f'{d:+.2f}' for d in diffs) or 'no runs',
                     _ci_text(diffs), _ci_verdict(diffs, margin)])
    out += _table(['question', 'paired difference', 'per seed', 'mean (95% CI)', 'answer'], rows)
    out += ['', f'Each answer is decided by the 95% confidence interval of the paired per-seed differences (t with '
            f'n - 1 degrees of freedom): "yes" when it lies above the margin (0, or -1 point for "within 1 point"), '
            f'"no" when below, "not decided" when it holds it. {len(comparisons) - 1} intervals, no correction for '
            f'their number; with 3 seeds an interval is wide.', '']
    return out


def _label(key: Tuple[str, str]) -> str:
    row, head = key
    names = {'val_top1': '', 'val_top1_cls': ' (cls)', 'val_top1_dist': ' (dist)', 'val_top1_avg': ' (avg)'}
    short = {'fold': 'fold', 'kd': 'soft KD', 'none': 'plain', 'std_both_auto': 'STD', 'std_cls_distill': 'cls_distill'}
    suffix = names[head] if not (row in DEPLOY_ROWS and row != 'fold' and head == 'val_top1') else ' (auto)'
    return short.get(row, row) + suffix


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + ['| ' + ' | '.join(r) + ' |' for r in rows]


def report(results: str, smoke: bool = False, selection: Optional[argparse.Namespace] = None,
           study: Optional[Study] = None) -> str:
    """Every table of RESULTS.md, from the records in `results` alone (`study`: load_records' of
    them, where the caller has it); and the runs of `selection` (--regimes, --plans, --rows,
    --seeds, --output; default: the whole study) that have no record, with the commands that
    complete them."""
    records, measures, stale, changed = study or load_records(results, smoke)
    out: List[str] = []
    if smoke:
        out += [f'(Smoke records, the tests\': every size trains {SMOKE["train_samples"]} images x {SMOKE["epochs"]} '
                f'epochs, the teachers {SMOKE_TEACHER["train_samples"]} x {SMOKE_TEACHER["epochs"]}; the headings name '
                f'the study\'s budgets. They test the script and measure nothing.)', '']
    if changed:
        out += [f'({len(changed)} run records were made with another config than their row\'s today (first: '
                f'{changed[0][0]}, {changed[0][1]}) and are left out: run them again with --rerun-changed)', '']
    if stale:
        out += [f'({stale} run records distilled from teachers other than those recorded now are left out: '
                f'run them again with --rerun-changed)', '']
    teacher_docs = load_teachers(results, smoke)
    out += ['### Teachers', '']
    out += _table(['teacher', 'timm model', 'epochs (60,000 images)', 'test top-1 (%)', 'weights (SHA-256)'],
                  [[d['label'], d['model'], str(d['epochs']), f'{d["top1"]:.2f}', d['weights_sha256'][:16]]
                   for d in teacher_docs])
    out += ['', f'Test top-1 on {teacher_docs[0]["test_images"]:,} test images.' if teacher_docs else '']

    out += ['### How often the teacher disagrees with the label of a training view', '']
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for m in measures:
        groups.setdefault((m['regime'], m['size'], m['teacher']), []).append(m)
    out += _table(['regime', 'data', 'teacher', 'seeds', 'views per seed', 'teacher top-1 differs from the label (%)',
                   'KL(label ‖ teacher), nats'],
                  [[reg, size, t, str(len(ms)), f'{ms[0]["views"]:,}', _stats(m['disagree_pct'] for m in ms),
                    _stats(m['kl_label_teacher'] for m in ms)] for (reg, size, t), ms in sorted(groups.items())])
    out.append('')

    regimes = [r for r in REGIMES if any(x['regime'] == r for x in records)]
    out += ['### Both regimes side by side (12,000 images x 4 epochs)', '']
    header, rows = ['row'], []
    for regime in regimes:
        header += [f'{regime}: test top-1 (%)', f'{regime}: paired vs no distillation']
    for row, (label, _) in ROWS.items():
        cells = [label]
        for regime in regimes:
            values = _by_seed(records, row, regime, '12k')
            diff = _paired(values, _by_seed(records, 'none', regime, '12k')) if row != 'none' else []
            cells += [f'{_stats(values.values())} ({len(values)})' if values else 'not run',
                      _stats(diff, signed=True) if diff else '']
        rows.append(cells)
    out += _table(header, rows)
    out += ['', 'Mean ± std over seeds (their number in brackets); the paired difference is taken seed by seed.', '']
    for regime in regimes:
        out += [f'### Main rows, {regime} regime (12,000 images x 4 epochs)', '']
        base = _by_seed(records, 'none', regime, '12k')
        rows = []
        for row, (label, _) in ROWS.items():
            for head, suffix in (('val_top1', ''), ('val_top1_cls', ', class head alone'),
                                 ('val_top1_dist', ', distillation heads alone')):
                if suffix and row not in HEAD_ROWS:
                    continue
                values = _by_seed(records, row, regime, '12k', head)
                if not values:
                    continue
                params = next(r['params_m'] for r in records if r['row'] == row and r['regime'] == regime)
                diff = _paired(values, base) if row != 'none' or suffix else []
                rows.append([label + suffix, f'{params:.3f}M', _stats(values.values()),
                             _stats(diff, signed=True) if diff else '', str(len(values)),
                             ', '.join(f'{values[s]:.2f}' for s in sorted(values))])
        out += _table(['row', 'params', 'test top-1 (%)', 'paired vs no distillation', 'seeds', 'per seed'], rows)
        out.append('')

    out += ['### The teacher\'s part: each method from the teacher minus the same method from the labels', '']
    rows = []
    for regime in regimes:
        for size in SIZES:
            for method, labels in (('kd', 'labels_kd'), ('deit', 'labels_deit'), ('std_both', 'labels_std')):
                cells = [_by_seed(records, row, regime, size) for row in (method, labels, 'none')]
                seeds = set(cells[0]) & set(cells[1])
                if not seeds:
                    continue
                if seeds & set(cells[2]):  # the share's two terms on the same seeds
                    seeds &= set(cells[2])
                teacher_run, label_run, base = ({s: c[s] for s in seeds if s in c} for c in cells)
                diffs = _paired(teacher_run, label_run)
                gain = _paired(teacher_run, base)
                share = (statistics.mean(diffs) / statistics.mean(gain)
                         if gain and statistics.mean(gain) > 0 else None)
                rows.append([regime, size, ALL_ROWS[method][0], _stats(gain, signed=True) if gain else 'n/a', _stats(diffs, signed=True),
                             ', '.join(f'{d:+.2f}' for d in diffs),
                             f'{100 * share:.0f}%' if share is not None else 'n/a'])
    out += _table(['regime', 'data', 'method', 'gain over no distillation', 'teacher minus labels (paired)',
                   'per seed', 'teacher\'s share of the gain'], rows)
    out += ['', 'On the seeds that have all three runs (the gain may differ from the main table\'s, taken on every '
            'seed of the row). The teacher\'s share is (teacher minus labels) / (teacher minus no distillation): '
            'above 100% where the method from the labels falls below no distillation, n/a where there is no gain.', '']

    out += ['### STD against timm-equivalent soft KD and the DeiT token (paired, per seed)', '']
    rows = []
    for regime in regimes:
        std = _by_seed(records, 'std_both', regime, '12k')
        for other in ('kd', 'deit', 'std_both_mine'):
            diffs = _paired(std, _by_seed(records, other, regime, '12k'))
            if diffs:
                rows.append([regime, f'STD both minus {ALL_ROWS[other][0]}', _stats(diffs, signed=True),
                             ', '.join(f'{d:+.2f}' for d in diffs)])
    out += _table(['regime', 'comparison', 'mean ± std', 'per seed'], rows)
    out.append('')

    if any(_by_seed(records, row, 'deit', '12k') for row in LADDER_ROWS):
        out += ['### The teacher ladder: STD both, deit regime, 12,000 x 4', '']
        top1 = {d['name']: f' ({d["top1"]:.2f})' for d in teacher_docs}
        rows = []
        for row, t in LADDER.items():
            runs = _by_seed(records, row, 'deit', '12k')
            measured = groups.get(('deit', '12k', t), [])
            agree = '100 (by definition)' if t == 'labels' else (
                _stats(100 - m['disagree_pct'] for m in measured) if measured else 'not measured')
            heads = [_by_seed(records, row, 'deit', '12k', head) for head in ('val_top1_cls', 'val_top1_dist')]
            rows.append([TEACHER_LABELS[t] + top1.get(t, ''), agree, _stats(runs.values()) if runs else 'not run',
                         *[_stats(h.values()) if h else '' for h in heads],
                         str(len(runs)), ', '.join(f'{v:.2f}' for _, v in sorted(runs.items()))])
        out += _table(['teacher', 'teacher top-1 agrees with the view\'s label (%)', 'student test top-1 (%)',
                       'class head alone', 'distillation heads alone', 'seeds', 'per seed'], rows)
        out += ['', 'Under mixup and CutMix a view\'s label is the larger part of its mixed label: a perfect teacher '
                'of the unmixed images agrees with it far less than 100%.', '']

    sizes = [s for s in SIZES if any(r['size'] == s and r['regime'] == DATA_REGIME for r in records)]
    if len(sizes) > 1:
        out += [f'### Less data, the same images seen ({DATA_REGIME} regime)', '']
        rows = []
        for size in sizes:
            cells = {row: _by_seed(records, row, DATA_REGIME, size) for row in DATA_ROWS}
            diffs = _paired(cells['std_both'], cells['labels_std'])
            rows.append([f'{SIZES[size]["train_samples"]:,} x {SIZES[size]["epochs"]}',
                         *[_stats(cells[row].values()) for row in DATA_ROWS], _stats(diffs, signed=True) if diffs else 'n/a'])
        out += _table(['images x epochs', *[ALL_ROWS[r][0] for r in DATA_ROWS], 'STD minus labels STD (paired)'],
                      rows)
        out.append('')

    out += ['### The paper\'s claims, per regime (12,000 x 4; decided by paired per-seed differences)', '']
    rows = []
    claims = (('STD beats no distillation', 'std_both', 'none'),
              ('STD beats soft KD', 'std_both', 'kd'),
              ('STD beats the DeiT token', 'std_both', 'deit'),
              ('MINE adds to STD', 'std_both_mine', 'std_both'),
              ('the teacher adds to STD beyond the labels (read-out control)', 'std_both', 'labels_std'))
    for regime in regimes:
        for claim, a, b in claims:
            diffs = _paired(_by_seed(records, a, regime, '12k'), _by_seed(records, b, regime, '12k'))
            rows.append([claim, regime, f'{ALL_ROWS[a][0]} minus {ALL_ROWS[b][0]}',
                         ', '.join(f'{d:+.2f}' for d in diffs) or 'no runs', _verdict(diffs)])
    out += _table(['claim', 'regime', 'control', 'paired differences', 'verdict'], rows)
    out += ['', 'Reproduced: every seed\'s paired difference above 0; not reproduced: any at or below 0 (the '
            'opposite: every one below 0); not testable: under 2 seeds.', '']

    out += deploy_section(records)

    out += ['### The plain student\'s curve (test top-1 after each epoch: is 4 epochs long enough?)', '']
    rows = []
    for r in sorted((r for r in records if r['row'] == 'none'), key=lambda r: (r['regime'], r['size'], r['seed'])):
        rows.append([r['regime'], r['size'], str(r['seed']), ', '.join(f'{e["val_top1"]:.2f}' for e in r['per_epoch'])])
    out += _table(['regime', 'data', 'seed', 'after each epoch'], rows)
    minutes = sum(r['minutes'] for r in records)
    out += ['', f'{len(records)} runs in the records, {minutes:.0f} minutes of training and evaluation in all '
            f'(summed over epochs).']
    selection = selection or argparse.Namespace(**STUDY_SELECTION, output=None, data_dir=None)
    done = {(r['row'], r['regime'], r['size'], r['seed']) for r in records}
    missing = [run for run in plan(selection) if tuple(run) not in done]
    if missing:
        out += ['', f'{len(missing)} planned runs have no record yet ('
                + ', '.join(f'{r.regime} {r.size} {r.row} seed {r.seed}' for r in missing[:6])
                + (', ...' if len(missing) > 6 else '') + '). Complete them (2 cores, one process per regime): '
                + ' and '.join(f'`{c}`' for c in complete_commands(missing, selection, results, smoke))
                + '; when they end, `' + ' '.join(['python benchmarks/reproduce_fashion_mnist.py --report',
                                                   *chosen(selection, ('regimes', 'plans', 'rows', 'seeds')),
                                                   *where(results, smoke)]
                                                  + ['--update-results RESULTS.md'] * (results == RESULTS and not smoke))
                + '`.']
    return '\n'.join(out)


def chosen(selection: argparse.Namespace, keys: Iterable[str]) -> List[str]:
    """The options of `selection` among `keys` that narrow the whole study."""
    options = []
    for key in keys:
        value = getattr(selection, key)
        if value is not None and list(value) != list(STUDY_SELECTION[key] or []):
            options += [f'--{key}', *map(str, value)]
    return options


def where(results: str, smoke: bool) -> List[str]:
    """The options that name a study's records: --smoke, --results (none for the repository's)."""
    return ['--smoke'] * smoke + (['--results', shlex.quote(results)] if os.path.abspath(results) != RESULTS else [])


def complete_commands(missing: List[Run], selection: argparse.Namespace, results: str, smoke: bool) -> List[str]:
    """One command per regime with missing runs, run from the repository root: the selection's runs
    (those with a record are skipped), with --commit where the records are the repository's."""
    options = chosen(selection, ('plans', 'rows', 'seeds')) + where(results, smoke)
    for key in ('output', 'data_dir'):
        if getattr(selection, key):
            options += [f'--{key.replace("_", "-")}', shlex.quote(getattr(selection, key))]
    options += ['--commit'] * (os.path.abspath(results) == RESULTS)  # the repository's records are committed
    regimes = [r for r in REGIMES if any(run.regime == r for run in missing)]
    return [' '.join(['OMP_NUM_THREADS=1 python benchmarks/reproduce_fashion_mnist.py --regimes', r, *options, '&'])
            for r in regimes]


BEGIN, END = '<!-- report: python benchmarks/reproduce_fashion_mnist.py --report -->', '<!-- /report -->'


def results_block(markdown: str) -> Optional[str]:
    """What stands between the report's markers in a RESULTS.md text (None: no markers)."""
    if BEGIN not in markdown or END not in markdown:
        return None
    return markdown.split(BEGIN, 1)[1].split(END, 1)[0].strip('\n')


def update_results(path: str, text: str) -> None:
    """Put the report `text` between the markers of the markdown file `path` (whole or not at all)."""
    try:
        with open(path, encoding='utf-8') as f:
            markdown = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'--update-results {path}: cannot read it ({type(e).__name__}: {first_line(e)}): give the '
                        f'markdown file to rewrite (RESULTS.md)') from None
    if markdown.count(BEGIN) != 1 or markdown.count(END) != 1 or markdown.index(BEGIN) > markdown.index(END):
        raise UserError(f'{path} needs one {BEGIN} ... {END} block, in that order, where the tables go '
                        f'(it has {markdown.count(BEGIN)} and {markdown.count(END)})')
    head, rest = markdown.split(BEGIN, 1)
    with writing(os.path.dirname(os.path.abspath(path)), os.path.basename(path), 'run --report again'):
        write_atomic(path, lambda f: f.write(f'{head}{BEGIN}\n\n{text}\n\n{END}{rest.split(END, 1)[1]}'))


def chart(records: List[Dict[str, Any]], path: str) -> None:
    """The main rows of each regime and the ladder (of `records`, load_records' first): mean ± std
    over seeds, the axis from 0."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    groups = [(f'{regime}: {ALL_ROWS[row][0]}', _by_seed(records, row, regime, '12k'))
              for regime in REGIMES for row in list(ROWS) + (list(LADDER_ROWS) if regime == 'deit' else [])]
    groups = [(label, v) for label, v in groups if v]
    if not groups:
        return
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(groups) + 1.5))
    ys = list(range(len(groups)))[::-1]
    means = [statistics.mean(v.values()) for _, v in groups]
    errs = [statistics.stdev(v.values()) if len(v) > 1 else 0.0 for _, v in groups]
    colours = ['#4c72b0' if label.startswith('light') else '#dd8452' for label, _ in groups]
    ax.barh(ys, means, xerr=errs, color=colours, capsize=2)
    for y, m in zip(ys, means):
        ax.annotate(f'{m:.2f}', (1, y), va='center', fontsize=7, color='white')
    ax.set_yticks(ys, [label for label, _ in groups], fontsize=7)
    ax.set(xlim=(0, 100), xlabel='Fashion-MNIST test top-1 (%), mean ± std over seeds; axis from 0')
    fig.tight_layout()
    with writing(os.path.dirname(path), os.path.basename(path), 'run --report again'):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_figure(fig, path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--results', default=RESULTS, help='the records (committed): teachers, runs, disagreement')
    parser.add_argument('--output', default=None, help=f'run folders and stores (not kept; default {OUTPUT})')
    parser.add_argument('--plans', nargs='+', default=list(PLANS), choices=PLANS)
    parser.add_argument('--regimes', nargs='+', default=list(REGIMES), choices=tuple(REGIMES))
    parser.add_argument('--rows', nargs='+', default=None, choices=tuple(ALL_ROWS))
    parser.add_argument('--seeds', type=int, nargs='+', default=list(STUDY_SELECTION['seeds']))
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--data-dir', default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    parser.add_argument('--device', default='auto')
    parser.add_argument('--online', action='store_true', help='run the teachers in every step (no teacher-output store)')
    parser.add_argument('--teachers-only', action='store_true', help='train the teachers (and write their records)')
    parser.add_argument('--rerun-changed', action='store_true', help='run again a run whose record has another config')
    parser.add_argument('--commit', action='store_true', help='git-commit each record as it is written')
    parser.add_argument('--smoke', action='store_true', help='tiny teachers and runs (the tests\'); records say so')
    parser.add_argument('--report', action='store_true', help='train nothing: every table and the chart, from the records')
    parser.add_argument('--update-results', metavar='MARKDOWN', default=None,
                        help='with --report: also write the tables into this file (RESULTS.md) between its markers')
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error('--seeds: give each seed once')
    if not all(0 <= s <= 2 ** 32 - 1 for s in args.seeds):
        parser.error('--seeds: each from 0 to 4294967295 (a run\'s seed)')
    given_output = args.output and os.path.abspath(args.output)
    args.output, args.results = os.path.abspath(args.output or OUTPUT), os.path.abspath(args.results)
    # train() keeps data_dir absolute in a run's config: a relative one would never match it again
    args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    if args.update_results and not args.report:
        parser.error('--update-results goes with --report')
    if args.report:
        selection = argparse.Namespace(plans=args.plans, regimes=args.regimes, rows=args.rows, seeds=args.seeds,
                                       output=given_output, data_dir=args.data_dir)
        check_results(args.results, for_report=True)
        study = load_records(args.results, args.smoke)
        text = report(args.results, args.smoke, selection, study)
        chart(study[0], os.path.join(args.results, 'chart.png'))  # before the page: all or nothing
        print(text)
        if args.update_results:
            update_results(args.update_results, text)
        return 0
    check_results(args.results, for_report=False)
    if args.commit:
        check_committable(args.results)
    runs = plan(args)
    if not runs and not args.teachers_only:
        raise UserError(f'--plans {" ".join(args.plans)} --regimes {" ".join(args.regimes)}'
                        + (f' --rows {" ".join(args.rows)}' if args.rows else '')
                        + f' select no run: the ladder runs in --regimes deit, the data plan runs '
                          f'{", ".join(DATA_ROWS)} in --regimes {DATA_REGIME}')
    # the rows without a network teacher (none, the labels rows) do not wait for the teachers
    networks = any(t != 'labels' for run in runs for t in ALL_ROWS[run.row][1]['teachers'])
    found = teachers(args) if networks or args.teachers_only else {}
    if args.teachers_only:
        print(', '.join(f'{d["label"]}: {d["top1"]:.2f}' for d in found.values()))
        return 0
    start = time.perf_counter()
    # what the teachers can add beyond the labels, measured on the training views before any student trains
    measured = {}
    for run in runs:
        teacher = (ALL_ROWS[run.row][1]['teachers'] or ['labels'])[0]
        if teacher != 'labels' and not args.online:
            measured.setdefault((run.regime, run.size, teacher, run.seed), run)
    for run in measured.values():
        measure(run, found, args)
    for run in runs:
        do_run(run, found, args)
    print(f'\nthis call {(time.perf_counter() - start) / 60:.1f} min\n')
    print(report(args.results, args.smoke))
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except UserError as e:  # bad input (a record of another config, a folder that is no run): one line
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # records are written whole: only the run in flight is lost, and it resumes
        print('\ninterrupted: the finished runs keep their records; run the same command again to resume',
              file=sys.stderr)
        sys.exit(130)
