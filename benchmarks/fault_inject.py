"""Kill a training run with SIGKILL at random moments, resume it after each kill, and compare
it with an uninterrupted run of the same seed.

    python benchmarks/fault_inject.py                       # 12 kills, CPU, about 4 minutes
    python benchmarks/fault_inject.py --kills 20 --seed 1 --output runs/fault_inject

The run is real and small: `mixer_t4_28` with STD (one ResNet teacher, MINE), EMA, mixup and
random erasing, on 384 Fashion-MNIST images, one data-loader worker, 12 epochs, started with
`stdistill train` (the CLI, in a child process of this script). First an uninterrupted
reference run records a digest of its checkpoint after every epoch. Then the same run is
started again and killed K times; after each kill, `stdistill train --resume` continues it.

Each child process arms one kill (`--child`), at a place and moment drawn from --seed:

  step        a random moment inside a training epoch (forward, backward, optimizer step or
              the worker handing over a batch), on a timer thread
  eval        a random moment inside an evaluation pass, on a timer thread
  checkpoint  a random point inside the write of `last/`: half-way through the weights file,
              after the weights file, after the state file, between the two renames, or just
              after the renames

and kills itself with `os.kill(os.getpid(), SIGKILL)`: no `finally`, no atexit handler and no
buffered write runs, as when the OOM killer or a preempted node ends a job. The first
process is killed only after its first checkpoint, so that every kill is followed by a resume.

Checked after each kill: the resume chose a checkpoint that passes its checksums, and it was
bitwise identical (weights, optimizer moments, EMA, MINE, RNG states) to the reference run's
checkpoint of the same epoch. A resumed process "ended identical" when the next checkpoint
resumed from (or, after the last kill, the final one) matches the reference. Last line:

    resumed=R/K identical=I/K
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from safetensors.numpy import load_file

SCRIPT = os.path.abspath(__file__)
RUN = ['dataset=fashion-mnist', 'img_size=28', 'in_chans=1', 'batch_size=32', 'workers=1', 'train_samples=384',
       'val_samples=256', 'aa=null', 'scale=[0.7,1.0]', 'reprob=0.25', 'mixup=0.8', 'cutmix=1.0', 'repeated_aug=false',
       'crop_pct=1.0', 'model=mixer_t4_28', 'model_kwargs={embed_dim: 32, num_blocks: 2}', 'drop_path=0.1',
       'method=std', 'teachers=[{model: resnet10t, pretrained: false}]', 'mine_hidden=32',
       'warmup_epochs=1', 'lr=0.003', 'model_ema=true', 'model_ema_decay=0.9', 'progress=false', 'log_interval=4',
       # fp32: under bf16 an evaluation pass of this run lasts about 0.1 s on the CPU, too short for
       # a timer to land in reliably on a loaded machine (bf16 resume is tested in tests/test_ddp.py)
       'amp=false']
PHASES = ('step', 'eval', 'checkpoint')
WRITE_POINTS = ('half of the weights file', 'after the weights file', 'after the state file', 'between the renames',
                'after the renames')


def checkpoint_digest(folder: str) -> str:
    """SHA-256 over every tensor of a checkpoint (weights and state), by name."""
    digest = hashlib.sha256()
    for name in ('model.safetensors', 'state.safetensors'):
        tensors = load_file(os.path.join(folder, name))
        for key in sorted(tensors):
            digest.update(f'{name}:{key}:{tensors[key].dtype}:{tensors[key].shape}'.encode())
            digest.update(tensors[key].tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- child process
def _kill(record: str, what: Dict[str, Any]) -> None:
    with open(record, 'w') as f:  # the parent learns where the kill landed
        json.dump(what, f)
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def child(args: argparse.Namespace) -> int:
    """One training process: arm the kill of --plan (if any), then run `stdistill train`."""
    import stdistill.training.train
    from stdistill.apps.cli import main

    plan = json.loads(args.plan) if args.plan else None
    state = {'phase': 'setup', 'count': {p: 0 for p in PHASES}, 'timings': {p: [] for p in PHASES}}
    record = os.path.join(args.work, 'kill.json')

    def killer(phase: str, detail: str) -> None:
        _kill(record, {'armed': plan['phase'], 'phase': state['phase'], 'detail': detail,
                       'epoch_on_disk': _epoch_on_disk(args.run)})

    def traced(phase: str, function):
        """Wrap a function of stdistill.training.train: track the phase, time it, arm a timed kill."""
        def wrapper(*a, **kw):
            state['phase'] = phase
            state['count'][phase] += 1
            if plan and plan['phase'] == phase and state['count'][phase] == plan['occurrence'] and phase != 'checkpoint':
                delay = plan['fraction'] * plan['duration']
                timer = threading.Timer(delay, killer, (phase, f'{delay:.2f}s into {phase} #{plan["occurrence"]}'))
                timer.daemon = True
                timer.start()
            start = time.perf_counter()
            try:
                return function(*a, **kw)
            finally:
                state['timings'][phase].append(time.perf_counter() - start)
                state['phase'] = 'between'
        return wrapper

    def checkpoint_writer(function):
        def save(folder, model, st, previous=None, **kwargs):
            is_last = os.path.basename(folder) == 'last'
            armed = (plan and plan['phase'] == 'checkpoint' and is_last
                     and state['count']['checkpoint'] + 1 == plan['occurrence'])
            if armed:
                _arm_write_point(plan['point'], lambda where: killer('checkpoint', f'{where} of last/ '
                                                                                   f'#{plan["occurrence"]}'))
            result = traced('checkpoint', function)(folder, model, st, previous, **kwargs) if is_last else function(
                folder, model, st, previous, **kwargs)
            if args.digests and is_last:
                with open(args.digests, 'a') as f:
                    f.write(json.dumps({'epoch': st['epoch'], 'digest': checkpoint_digest(folder)}) + '\n')
            if armed and plan['point'] == 'after the renames':
                state['phase'] = 'checkpoint'  # still inside the save, as far as the run can tell
                killer('checkpoint', f'after the renames of last/ #{plan["occurrence"]}')
            return result
        return save

    def resumed_from(function):
        def find(run):
            folder, rejected = function(run)
            with open(os.path.join(args.work, 'resumed.json'), 'w') as f:
                json.dump({'folder': os.path.basename(folder), 'epoch': _epoch_on_disk(run, folder),
                           'digest': checkpoint_digest(folder), 'passed_over': rejected}, f)
            return folder, rejected
        return find

    stdistill.training.train.train_one_epoch = traced('step', stdistill.training.train.train_one_epoch)
    stdistill.training.train.evaluate = traced('eval', stdistill.training.train.evaluate)
    stdistill.training.train.save_checkpoint = checkpoint_writer(stdistill.training.train.save_checkpoint)
    stdistill.training.train.newest_valid_checkpoint = resumed_from(stdistill.training.train.newest_valid_checkpoint)
    argv = ['train', '--resume', args.run] if args.resume else ['train', *RUN, f'epochs={args.epochs}', f'output={args.run}']
    code = main(argv)
    if args.timings:
        with open(args.timings, 'w') as f:
            json.dump(state['timings'], f)
    return code


def _arm_write_point(point: str, kill: Callable[[str], None]) -> None:
    """Make the next write of a checkpoint die at `point` (wrapping what save_checkpoint calls)."""
    import stdistill.training.checkpoint as ck
    save_file, replace, calls = ck.save_file, os.replace, {'save': 0, 'replace': 0}

    def save(tensors, path, metadata=None):
        save_file(tensors, path, metadata=metadata)
        calls['save'] += 1
        if point == 'half of the weights file' and calls['save'] == 1:
            with open(path, 'r+b') as f:  # what a kill in the middle of the write leaves on disk
                f.truncate(os.path.getsize(path) // 2)
            kill(point)
        if (point, calls['save']) in (('after the weights file', 1), ('after the state file', 2)):
            kill(point)

    def rename(src, dst):
        replace(src, dst)
        calls['replace'] += 1
        if point == 'between the renames' and calls['replace'] == 1:
            # with no last/ to move aside (resumed from previous/), the first rename is the only one
            kill('between the renames' if os.path.basename(dst) == 'previous' else 'after the only rename')

    ck.save_file = save
    ck.os.replace = rename  # os itself: this process ends at the kill, or the run ends


def _epoch_on_disk(run: str, folder: Optional[str] = None) -> Optional[int]:
    """The epoch of a checkpoint folder (default: the newest valid one of `run`), None if none."""
    from stdistill.training.checkpoint import newest_valid_checkpoint, verify_checkpoint
    try:
        return verify_checkpoint(folder or newest_valid_checkpoint(run)[0])['epoch']
    except ValueError:
        return None


# ---------------------------------------------------------------------------- parent process
def _spawn(work: str, run: str, resume: bool, plan: Optional[Dict], epochs: int, digests: Optional[str] = None,
           timings: Optional[str] = None) -> subprocess.CompletedProcess:
    for name in ('kill.json', 'resumed.json'):
        if os.path.exists(os.path.join(work, name)):
            os.remove(os.path.join(work, name))
    cmd = [sys.executable, SCRIPT, '--child', '--run', run, '--work', work, '--epochs', str(epochs)]
    cmd += ['--resume'] * resume + (['--plan', json.dumps(plan)] if plan else [])
    cmd += (['--digests', digests] if digests else []) + (['--timings', timings] if timings else [])
    return subprocess.run(cmd, capture_output=True, text=True)


def _read(path: str) -> Optional[Dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _plan(rng: random.Random, kill: int, timings: Dict[str, List[float]]) -> Dict[str, Any]:
    phase = PHASES[kill % len(PHASES)]
    # the first process dies only after its first checkpoint (occurrence 2: the second epoch)
    occurrence = rng.choice((2, 3)) if kill == 0 else rng.choice((1, 2))
    if phase == 'eval':  # two evaluations per epoch (student, EMA)
        occurrence = 2 * occurrence - rng.choice((0, 1))
    median = sorted(timings[phase])[len(timings[phase]) // 2]
    return {'phase': phase, 'occurrence': occurrence, 'fraction': rng.random(), 'duration': median,
            'point': rng.choice(WRITE_POINTS)}


def fail(message: str, result: subprocess.CompletedProcess) -> int:
    print(f'fault_inject: {message}\n{result.stderr[-3000:]}', file=sys.stderr)
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--kills', type=int, default=12, help='SIGKILLs of the interrupted run (at least 10)')
    parser.add_argument('--seed', type=int, default=0, help='draws the kills (the training seed is fixed)')
    parser.add_argument('--epochs', type=int, default=12, help='epochs of the run (enough for the kills to land)')
    parser.add_argument('--output', default='runs/fault_inject', help='work folder (its runs are replaced)')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    for name in ('--run', '--work', '--plan', '--digests', '--timings'):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument('--resume', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.kills < 1 or args.epochs < 3:
        parser.error('--kills must be at least 1 and --epochs at least 3')

    work = os.path.abspath(args.output)
    reference, faulty = os.path.join(work, 'reference'), os.path.join(work, 'faulty')
    for folder in (reference, faulty):
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, 'config.yaml')):
            parser.error(f'{folder} exists and is not a stdistill run: choose another --output')
        shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    digests_path, timings_path = os.path.join(work, 'reference_digests.jsonl'), os.path.join(work, 'timings.json')
    if os.path.exists(digests_path):
        os.remove(digests_path)
    start = time.perf_counter()
    result = _spawn(work, reference, False, None, args.epochs, digests_path, timings_path)
    if result.returncode != 0:
        return fail('the reference run failed', result)
    with open(digests_path) as f:
        expected = {row['epoch']: row['digest'] for row in map(json.loads, f)}
    timings = _read(timings_path)
    print(f'reference run: {len(expected)} epochs in {time.perf_counter() - start:.0f}s; median step phase '
          f'{sorted(timings["step"])[len(timings["step"]) // 2]:.2f}s, eval {sorted(timings["eval"])[1]:.2f}s',
          flush=True)

    rng = random.Random(args.seed)
    rows, resumed, identical, kills = [], 0, 0, 0
    print(f'\n{"kill":>4}  {"armed":<10} {"landed in":<10} {"where":<44} {"on disk":>7}  {"resumed from":<18} '
          f'{"same as reference":<17} passed over')
    for i in range(args.kills + 1):
        plan = _plan(rng, i, timings) if i < args.kills else None
        result = _spawn(work, faulty, i > 0, plan, args.epochs)
        back = _read(os.path.join(work, 'resumed.json'))
        if i > 0:  # this process resumed after kill i: did it load a verified checkpoint that matches?
            ok_resume = back is not None
            resumed += ok_resume
            same = ok_resume and expected.get(back['epoch']) == back['digest']
            rows[-1].update(resumed=f'{back["folder"]}/ epoch {back["epoch"]}' if ok_resume else 'FAILED',
                            passed_over=len(back['passed_over']) if ok_resume else '-', loaded_same=same)
            if i > 1:  # ... and the process before it ended where the reference was at that epoch
                rows[-2]['ended_same'] = same
        killed = result.returncode == -signal.SIGKILL
        if plan is not None and not killed:
            if result.returncode != 0:
                return fail(f'process {i} ended with exit status {result.returncode} instead of being killed', result)
            print(f'# the run finished before kill {i + 1} was due; {kills} kills')
            break
        if plan is None and result.returncode != 0:
            return fail('the final resume failed', result)
        if killed:
            kills += 1
            what = _read(os.path.join(work, 'kill.json'))
            rows.append(dict(kill=kills, armed=plan['phase'], landed=what['phase'], where=what['detail'],
                             on_disk=what['epoch_on_disk']))
    final = checkpoint_digest(os.path.join(faulty, 'last'))
    last_epoch = max(expected)
    if rows:
        rows[-1]['ended_same'] = final == expected[last_epoch]
    for r in rows:
        identical += bool(r.get('ended_same'))
        print(f'{r["kill"]:>4}  {r["armed"]:<10} {r["landed"]:<10} {r["where"]:<44} {str(r["on_disk"]):>7}  '
              f'{r.get("resumed", "-"):<18} {"yes" if r.get("loaded_same") else "NO":<17} {r.get("passed_over", "-")}')
    with open(os.path.join(faulty, 'summary.json')) as f:
        epochs_done = json.load(f)['epochs_done']
    temporaries = [n for n in os.listdir(faulty) if n.startswith('.')]
    print(f'\ninterrupted run: {kills} kills, {epochs_done} epochs; final checkpoint (epoch {last_epoch}) '
          f'{"identical to" if final == expected[last_epoch] else "DIFFERENT from"} the reference; '
          f'{len(temporaries)} temporary folders left; {time.perf_counter() - start:.0f}s in all')
    print(f'resumed={resumed}/{kills} identical={identical}/{kills}')
    return 0 if kills and resumed == kills and identical == kills and not temporaries else 1


if __name__ == '__main__':
    sys.exit(main())
