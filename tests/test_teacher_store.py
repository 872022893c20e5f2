"""The data schedule and the teacher-output store, on real Fashion-MNIST images through the CLI:
a run from the store is the online run, bit for bit (hard) or to 1e-6 (soft, k = classes);
a store made for other settings is refused; a killed pass resumes to the same store."""
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stdistill.apps.cli import main
from stdistill.config import load_config
from stdistill.utils.distributed import DistInfo
from stdistill.training.engine import prepare_batch
from stdistill.data.loaders import build_data, build_mixup
from stdistill.method.losses import DistillationLoss, TeacherTargets, topk_soft_loss
from stdistill.data.schedule import ScheduledDataset
from stdistill.training.store import TeacherStore, outputs_spec, run_fingerprint
from stdistill.training.builders import build_objective, student_contract

# Two random teachers of two families, hard distillation, entropy weights, mixup and cutmix, MINE
BASE = ['dataset=fashion-mnist', 'img_size=28', 'in_chans=1', 'batch_size=16', 'workers=0', 'train_samples=64',
        'val_samples=32', 'aa=null', 'scale=[0.7,1.0]', 'reprob=0.25', 'mixup=0.8', 'cutmix=1.0',
        'repeated_aug=false', 'crop_pct=1.0', 'model=mixer_t4_28', 'model_kwargs={embed_dim: 16, num_blocks: 2}',
        'drop_path=0.1', 'method=std', 'mine_hidden=32', 'epochs=2', 'warmup_epochs=1', 'lr=0.003',
        'progress=false', 'amp=false',
        'teachers=[{model: resnet10t, pretrained: false}, {model: mobilenetv3_small_050, pretrained: false, '
        'token_position: 0}]']


def _pass(store, *extra, shard_steps=2):
    return main(['teacher-pass', *BASE, *extra, '--output', str(store), '--shard-steps', str(shard_steps)])


def _weights(run):
    return load_file(str(run / 'last' / 'model.safetensors'))


@pytest.mark.parametrize('amp', ['amp=false', 'amp=true'])  # fp32, and bf16 autocast (the GPU's code path)
def test_training_from_a_hard_store_is_the_online_run_bit_for_bit(tmp_path, capsys, amp):
    online, replay, store = tmp_path / 'online', tmp_path / 'replay', tmp_path / 'store'
    assert main(['train', *BASE, amp, f'output={online}']) == 0
    assert _pass(store, amp) == 0
    capsys.readouterr()
    assert main(['train', *BASE, amp, f'output={replay}', f'teacher_outputs={store}']) == 0
    assert f'teacher outputs from the store {store}: hard labels' in capsys.readouterr().out
    a, b = _weights(online), _weights(replay)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (load_file(str(p / 'last' / 'state.safetensors')) for p in (online, replay))  # Adam moments, MINE
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith('state.rng'))


def test_soft_distillation_from_all_classes_matches_online_losses(tmp_path):
    soft = [*BASE, 'distill=soft', 'tau=2.0', 'store_topk=10']
    store = tmp_path / 'store'
    assert main(['teacher-pass', *soft, '--output', str(store)]) == 0
    cfg = load_config(None, soft)
    info, device = DistInfo(), torch.device('cpu')
    contract = student_contract(cfg)
    data = build_data(cfg, info, contract.mean, contract.std)
    mixup = build_mixup(cfg, data.num_classes)
    objective = build_objective(cfg, data.num_classes, device, True, classes=data.classes).train()
    reader = TeacherStore(str(store), run_fingerprint(cfg, data.train_loader.dataset, data.classes, 1,
                                                      contract.to_json()), outputs_spec(cfg), 0,
                          len(data.train_loader), device)
    data.train_loader.sampler.set_epoch(1)
    checked = 0
    with torch.no_grad():
        for step, raw in enumerate(data.train_loader):
            batch = prepare_batch(raw, device, mixup, 0, 1, step, 0)
            out = objective.student(batch.images)
            online = objective.distill_loss(out, batch.targets, objective.teacher_logits(batch.images))
            stored = objective.distill_loss(out, batch.targets, reader(1, step, batch.indices))
            for key in online.terms:
                assert abs(float(online.terms[key]) - float(stored.terms[key])) < 1e-6, key
            assert abs(float(online.total) - float(stored.total)) < 1e-6
            checked += 1
    assert checked == 4


def test_topk_soft_loss_keeps_the_rest_of_the_mass_as_one_bucket():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    tau, k = 1.5, 3
    top = teacher.topk(k, dim=-1)
    target = TeacherTargets(top.indices[:, 0], torch.zeros(3), None, top.values, top.indices,
                            torch.logsumexp(teacher / tau, dim=-1))
    # by hand: both distributions over the k classes and one bucket of the rest
    p_t, p_s = F.softmax(teacher / tau, -1), F.softmax(student / tau, -1)
    inside = torch.zeros_like(p_t, dtype=torch.bool).scatter(1, top.indices, True)
    bucket_t, bucket_s = (p_t * ~inside).sum(-1, keepdim=True), (p_s * ~inside).sum(-1, keepdim=True)
    q_t, q_s = torch.cat([p_t.gather(1, top.indices), bucket_t], 1), torch.cat([p_s.gather(1, top.indices), bucket_s], 1)
    expected = tau ** 2 * (q_t * (q_t.log() - q_s.log())).sum(-1)
    assert torch.allclose(topk_soft_loss(student, target, tau), expected, atol=1e-10)
    # k = classes: the KL itself
    full = TeacherTargets.from_logits(teacher)
    everything = teacher.topk(7, dim=-1)
    exact = TeacherTargets(full.labels, full.entropy, None, everything.values, everything.indices,
                           torch.logsumexp(teacher / tau, -1))
    loss = DistillationLoss(distill='soft', tau=tau)
    assert torch.allclose(topk_soft_loss(student, exact, tau), loss.per_sample(student, full), atol=1e-10)


def test_soft_run_refuses_a_store_of_hard_labels(tmp_path, capsys):
    store = tmp_path / 'store'
    assert _pass(store) == 0
    capsys.readouterr()
    assert main(['train', *BASE, 'distill=soft', f'teacher_outputs={store}', f'output={tmp_path / "run"}']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'holds hard labels only' in err
    assert not (tmp_path / 'run').exists()


def _teacher_file(path, seed):
    import timm
    torch.manual_seed(seed)
    save_file(timm.create_model('resnet10t', num_classes=10, in_chans=1).state_dict(), str(path))
    return path


@pytest.fixture(scope='module')
def two_stores(tmp_path_factory):
    """A store made by one process, with teacher checkpoint A, and one made by two (torchrun)."""
    root = tmp_path_factory.mktemp('stores')
    a, b = _teacher_file(root / 'a.safetensors', 1), _teacher_file(root / 'b.safetensors', 2)
    teachers = f'teachers=[{{model: resnet10t, checkpoint: {a}, mean: [0.5], std: [0.5]}}]'
    assert _pass(root / 'one', teachers) == 0
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '-m', 'stdistill',
                           'teacher-pass', *BASE, teachers, 'device=cpu', '--output', str(root / 'two')],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return root, teachers, b


@pytest.mark.parametrize('change, named', [
    ('seed=1', 'data_seed 0, this run 1'),
    ('batch_size=8', 'batch_size 16, this run 8'),
    ('scale=[0.5,1.0]', 'augmentation.scale [0.7, 1.0], this run [0.5, 1.0]'),
    ('teacher b', 'teachers.0.checkpoint_sha256'),
    ('world size', 'world_size 2, this run 1'),
])
def test_a_store_for_other_settings_is_refused_in_one_line(two_stores, tmp_path, capsys, change, named):
    root, teachers, other = two_stores
    store, extra = root / 'one', [change]
    if change == 'teacher b':
        extra = [f'teachers=[{{model: resnet10t, checkpoint: {other}, mean: [0.5], std: [0.5]}}]']
    elif change == 'world size':
        store, extra = root / 'two', []
    capsys.readouterr()
    argv = ['train', *BASE, teachers, *extra, f'teacher_outputs={store}', f'output={tmp_path / "run"}']
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert 'make a store for this run' in err and not (tmp_path / 'run').exists()


def test_two_processes_replay_their_own_shards_bit_for_bit(two_stores, tmp_path):
    root, teachers, _ = two_stores
    for epoch in ('epoch0000', 'epoch0001'):
        names = sorted(os.listdir(root / 'two' / epoch))
        assert names == ['rank0000-step000000.safetensors', 'rank0001-step000000.safetensors']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(sys.path))
    for name, extra in (('online', []), ('replay', [f'teacher_outputs={root / "two"}'])):
        done = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '-m',
                               'stdistill', 'train', *BASE, teachers, 'device=cpu', *extra,
                               f'output={tmp_path / name}'], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(tmp_path / 'online'), _weights(tmp_path / 'replay')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


_KILLER = """
import os, signal, sys
import stdistill.training.store as store
flush, count = store.StoreWriter.flush, [0]
def killing_flush(self):
    flush(self)
    count[0] += 1
    if count[0] == 3:  # the third whole shard is written: die as the OOM killer would
        os.kill(os.getpid(), signal.SIGKILL)
store.StoreWriter.flush = killing_flush
from stdistill.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_pass_resumes_to_the_same_store(tmp_path):
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    assert _pass(straight, shard_steps=1) == 0
    argv = ['teacher-pass', *BASE, '--output', str(killed), '--shard-steps', '1']
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, '-c', _KILLER, *argv], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL
    shards = lambda root: sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    assert len([s for s in shards(killed) if s.endswith('.safetensors')]) == 3
    assert main(argv) == 0
    assert shards(straight) == shards(killed)
    for name in shards(straight):  # the same tensors and metadata (safetensors orders its header freely)
        if name.endswith('.safetensors'):
            a, b = (safe_open(str(root / name), 'pt') for root in (straight, killed))
            assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys()), name
            assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys()), name


def test_batches_follow_the_data_seed_not_the_worker_count_or_seed(tmp_path):
    def first_batches(*extra):
        cfg = load_config(None, [*BASE, *extra])
        contract = student_contract(cfg)
        data = build_data(cfg, DistInfo(), contract.mean, contract.std)
        assert isinstance(data.train_loader.dataset, ScheduledDataset)
        data.train_loader.sampler.set_epoch(1)
        torch.manual_seed(123)  # other users of the global generators change nothing
        return [prepare_batch(b, torch.device('cpu'), build_mixup(cfg, 10), cfg.data_seed if cfg.data_seed is not None
                              else cfg.seed, 1, i, 0) for i, b in zip(range(2), data.train_loader)]
    reference = first_batches()
    for extra in (['workers=2'], ['seed=5', 'data_seed=0']):
        for a, b in zip(reference, first_batches(*extra)):
            assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets), extra
            assert torch.equal(a.indices, b.indices)
    other = first_batches('data_seed=1')
    assert not torch.equal(reference[0].images, other[0].images)


def _edit_json(store, **changes):
    import json
    doc = json.loads((store / 'store.json').read_text())
    doc.update(changes)
    (store / 'store.json').write_text(json.dumps(doc))


@pytest.mark.parametrize('damage, named', [
    ('foreign shard', 'belongs to another store'),
    ('flipped byte', 'fails its checksum'),
    ('outputs edited', 'not a stdistill teacher store'),
    ('shard_steps edited', 'not a stdistill teacher store'),
])
def test_a_damaged_or_mixed_store_is_refused_before_the_run_starts(tmp_path, capsys, damage, named):
    store, other = tmp_path / 'store', tmp_path / 'other'
    assert _pass(store) == 0
    shard = 'epoch0001/rank0000-step000002.safetensors'  # the last: a late check would train first
    if damage == 'foreign shard':
        assert _pass(other, 'teachers=[{model: resnet18, pretrained: false}, {model: resnet10t, pretrained: false}]') == 0
        (store / shard).write_bytes((other / shard).read_bytes())
    elif damage == 'flipped byte':
        data = bytearray((store / shard).read_bytes())
        data[-1] ^= 0xFF
        (store / shard).write_bytes(bytes(data))
    elif damage == 'outputs edited':
        _edit_json(store, outputs={})
    else:
        _edit_json(store, shard_steps='abc')
    capsys.readouterr()
    assert main(['train', *BASE, f'teacher_outputs={store}', f'output={tmp_path / "run"}']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not (tmp_path / 'run').exists()
