"""torchrun with 2 CPU processes (gloo): both ranks end with identical weights, rank 0 writes, and a
resume is bitwise on both."""
import json
import os
import subprocess
import sys

import pytest
import torch

from stdistill.training.checkpoint import load_checkpoint
from stdistill.config import load_config
from stdistill.utils.distributed import weights_digest
from stdistill.training.builders import build_student
from test_train import TINY

pytestmark = pytest.mark.slow  # 2-process torchrun runs


def _torchrun(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'stdistill', 'train', *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _summary(run):
    with open(run / 'summary.json') as f:
        return json.load(f)


def _ranks_identical_and_trained(out, result):
    """Both ranks end with the weights rank 0 saved, moved from the initial ones, each rank on its
    own half of the data; rank 0 alone reports."""
    summary = _summary(out)
    digests = summary['weights_sha256_per_rank']
    assert summary['world_size'] == 2 and len(digests) == 2 and digests[0] == digests[1]
    cfg = load_config(str(out / 'config.yaml'))
    student = build_student(cfg, cfg.num_classes, pretrained=False)
    initial = weights_digest(student)
    state = load_checkpoint(str(out / 'last'), student)
    assert weights_digest(student) == digests[0] != initial
    assert state['num_updates'] == 4  # 128 images / 2 ranks / batch 32 = 2 steps an epoch
    with open(out / 'log.jsonl') as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2 and rows[-1]['val_images'] == 96
    assert result.stdout.count('done:') == 1  # said by rank 0, not once a process


def test_two_process_resume_is_bitwise_on_both_ranks(tmp_path):
    """Each rank saves and restores its own random states (mixup, drop path, random erasing, MINE's
    derangements differ by rank), and MINE's moving average is the global batch's on every rank:
    2 epochs straight == 1 epoch, stop, resume, 1 more, on both ranks, every tensor."""
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    common = [*TINY, 'device=cpu', 'workers=1', 'epochs=2', 'amp=true',
              'teachers=[{model: resnet10t, pretrained: false, token_position: 0}, {model: resnet18, pretrained: false}]']
    result = _torchrun(*common, f'output={straight}')
    _ranks_identical_and_trained(straight, result)
    _torchrun(*common, f'output={stopped}', '--stop-after', '1')
    assert _summary(stopped)['epochs_done'] == 1
    _torchrun('--resume', str(stopped))
    a, b = _summary(straight)['weights_sha256_per_rank'], _summary(stopped)['weights_sha256_per_rank']
    assert len(a) == 2 and a == b and a[0] == a[1]
    # the whole saved state too: optimizer moments, MINE's statistics networks and moving average, RNGs
    from safetensors.torch import load_file
    for name in ('model.safetensors', 'state.safetensors'):
        x, y = load_file(str(straight / 'last' / name)), load_file(str(stopped / 'last' / name))
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), name
    cfg = load_config(str(straight / 'config.yaml'))
    rng = load_checkpoint(str(straight / 'last'), build_student(cfg, cfg.num_classes, pretrained=False))['rng']
    assert len(rng) == 2 and not torch.equal(rng[0]['torch'], rng[1]['torch'])  # each rank's own states


def test_resume_with_another_world_size_reseeds_and_says_so(tmp_path):
    run = tmp_path / 'run'
    _torchrun(*TINY, 'device=cpu', 'epochs=2', f'output={run}', '--stop-after', '1')
    result = subprocess.run([sys.executable, '-m', 'stdistill', 'train', '--resume', str(run)], capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if 'reseeded' in line]
    assert len(warnings) == 1 and 'written by 2 process(es) on the CPU and this run has 1 process(es)' in warnings[0]
    assert _summary(run)['epochs_done'] == 2


def _agree_on_skips(rank, store, results):
    """One process of a 2-process group: rank 1's first batch has no readable image."""
    import datetime

    import torch.distributed as dist
    import torch.nn as nn

    from stdistill.training.engine import DistillObjective, train_one_epoch

    class _NoSchedule:
        def step_update(self, num_updates):
            pass

    dist.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)
    objective = DistillObjective(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), 'none', nn.CrossEntropyLoss())
    model = objective.prepare_distributed()
    images, targets = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(rank)), torch.tensor([0, 1, 2, 0])
    first = (None, None, 4) if rank == 1 else (images, targets, 0)
    loader = [first, (images, targets, 0), (images[:1], targets[:1], 3)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics, updates = train_one_epoch(model, loader, optimizer, _NoSchedule(), torch.device('cpu'), 0, 0, min_batch=2)
    results.put((rank, metrics['updates'], metrics['skipped_batches'], metrics['skipped_images'], updates,
                 [p.detach().tolist() for p in objective.parameters()]))  # plain lists: a tensor in a queue
    # is shared by file descriptor, which fails (EOFError) once this process has exited
    dist.destroy_process_group()


def test_processes_skip_a_step_together_when_one_cannot_take_it(tmp_path):
    """Under DDP a process whose batch is unreadable (or too small) must not skip a step the
    others take: the gradient all-reduce would then pair different steps, or hang."""
    import torch.multiprocessing as mp
    context = mp.get_context('spawn')
    results = context.Queue()
    procs = [context.Process(target=_agree_on_skips, args=(rank, str(tmp_path / 'store'), results)) for rank in (0, 1)]
    for p in procs:
        p.start()
    out = sorted((results.get(timeout=120) for _ in procs), key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
    # batch 0: rank 1 has no image; batch 2: one image, below min_batch, on both ranks
    assert [r[1:5] for r in out] == [(1, 2, 10, 1), (1, 2, 10, 1)]  # 3 + 4 + 3 unreadable in all
    assert out[0][5] == out[1][5]
