"""Device choice, process-group settings and per-process random states, checked without a GPU
(torch.cuda is stubbed where a GPU would be needed)."""
from datetime import timedelta

import pytest
import torch

import stdistill.utils.distributed as distributed
from stdistill.training.checkpoint import rng_state, rng_state_fits
from stdistill.utils.distributed import DistInfo, init_distributed, resolve_device
from stdistill.training.train import _restore_rng


@pytest.fixture
def two_gpus(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'set_device', chosen.append)
    return chosen


def test_cuda_n_is_honoured_in_one_process(two_gpus):
    assert resolve_device('cuda:1', DistInfo()) == torch.device('cuda', 1)
    assert two_gpus == [1]  # made the current GPU: allocations and RNG state follow it
    assert resolve_device('cuda', DistInfo()) == torch.device('cuda', 0)


def test_under_torchrun_each_process_takes_its_local_rank(two_gpus):
    assert resolve_device('cuda', DistInfo(rank=3, world_size=4, local_rank=1)) == torch.device('cuda', 1)
    with pytest.raises(ValueError, match='under torchrun each process takes GPU LOCAL_RANK'):
        resolve_device('cuda:1', DistInfo(rank=0, world_size=2))


@pytest.mark.parametrize('name, words', [('cuda:2', 'only 2 GPU(s) are visible'), ('gpu', 'cuda:N'),
                                         ('cuda:x', 'cuda:N')])
def test_bad_device_names_are_refused(two_gpus, name, words):
    with pytest.raises(ValueError, match=words.replace('(', r'\(').replace(')', r'\)')):
        resolve_device(name, DistInfo())


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ValueError, match='no GPU is visible'):
        resolve_device('cuda:0', DistInfo())
    assert resolve_device('auto', DistInfo()) == torch.device('cpu')


def test_process_group_timeout_is_the_configured_one(monkeypatch):
    seen = {}
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setattr(distributed.dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(distributed.dist, 'init_process_group', lambda backend, timeout: seen.update(
        backend=backend, timeout=timeout))
    info = init_distributed('cpu', timeout_minutes=7.5)
    assert info == DistInfo(rank=1, world_size=2, local_rank=0)
    assert seen == {'backend': 'gloo', 'timeout': timedelta(minutes=7.5)}


def test_a_state_saved_with_a_gpu_is_reseeded_on_the_cpu(capsys):
    saved = dict(rng_state(), cuda=torch.zeros(16, dtype=torch.uint8))
    assert rng_state_fits(rng_state(), torch.device('cpu')) and not rng_state_fits(saved, torch.device('cpu'))
    draws = []
    for _ in range(2):  # deterministic in (seed, rank, epoch)
        _restore_rng([saved], DistInfo(), torch.device('cpu'), seed=3, epoch=5)
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])
    _restore_rng([saved], DistInfo(), torch.device('cpu'), seed=3, epoch=6)
    assert not torch.equal(torch.rand(3), draws[0])
    lines = [line for line in capsys.readouterr().err.splitlines() if 'reseeded' in line]
    assert len(lines) == 3 and '1 process(es) with a GPU and this run has 1 process(es) on the CPU' in lines[0]


def test_pinned_memory_only_for_cuda(tmp_path, monkeypatch):
    import stdistill.training.train as train_module
    from test_train import tiny_config
    seen = []
    build = train_module.build_data
    monkeypatch.setattr(train_module, 'build_data', lambda *a, **k: seen.append(k.get('pin_memory')) or build(*a, **k))
    train_module.train(tiny_config(tmp_path / 'run', 'epochs=1', 'device=cpu'))
    assert seen == [False]
