"""The labels teacher (`teachers: [{model: labels}]`), the read-out control of the reproduction
study: its distillation targets are the batch's labels, and under mixup/cutmix the mixed labels
(timm's Mixup with its smoothing taken out), on real Fashion-MNIST batches through the training
path; it trains with every method and is refused where it cannot work. Also MINE's warm-up."""
import pytest
import torch
import torch.nn.functional as F

from stdistill.apps.cli import main
from stdistill.config import load_config
from stdistill.utils.distributed import DistInfo
from stdistill.training.engine import prepare_batch
from stdistill.data.loaders import build_data, build_mixup
from stdistill.method.losses import DistillationLoss, LabelsTeacher
from stdistill.data.schedule import scheduled_mixup
from stdistill.training.builders import build_objective, student_contract

BASE = ['dataset=fashion-mnist', 'img_size=28', 'in_chans=1', 'batch_size=16', 'workers=0', 'train_samples=64',
        'val_samples=32', 'aa=null', 'reprob=0.0', 'repeated_aug=false', 'crop_pct=1.0', 'model=mixer_t4_28',
        'model_kwargs={embed_dim: 16, num_blocks: 2}', 'method=std', 'mine_hidden=32', 'epochs=1',
        'warmup_epochs=0', 'progress=false', 'amp=false', 'smoothing=0.1', 'teachers=[{model: labels}]']


def _batches(cfg):
    """(objective, mixup, prepared batches of epoch 0) of cfg on real Fashion-MNIST images."""
    info, device = DistInfo(), torch.device('cpu')
    contract = student_contract(cfg)
    data = build_data(cfg, info, contract.mean, contract.std)
    mixup = build_mixup(cfg, data.num_classes)
    objective = build_objective(cfg, data.num_classes, device, mixup is not None, classes=data.classes)
    data.train_loader.sampler.set_epoch(0)
    batches = [prepare_batch(raw, device, mixup, 0, 0, step, 0) for step, raw in enumerate(data.train_loader)]
    return objective, mixup, batches


def test_hard_targets_are_the_labels():
    cfg = load_config(None, [*BASE, 'distill=hard', 'mixup=0.0', 'cutmix=0.0'])
    objective, mixup, batches = _batches(cfg)
    assert mixup is None and len(batches) == 4
    for batch in batches:
        (target,) = objective.teacher_logits(batch.images, batch.targets)
        assert torch.equal(target.labels, batch.targets)
        assert torch.equal(target.probs, F.one_hot(batch.targets, 10).float())
        assert torch.equal(target.entropy, torch.zeros(len(batch.targets)))
        # the hard loss of the distillation head is cross-entropy against the labels (no smoothing)
        out = objective.student(batch.images)
        loss = objective.distill_loss.per_sample(out.dist_logits[0], target)
        assert torch.allclose(loss, F.cross_entropy(out.dist_logits[0], batch.targets, reduction='none'), atol=1e-6)


@pytest.mark.parametrize('distill', ['hard', 'soft'])
def test_under_mixup_the_targets_are_the_mixed_labels(distill):
    tau = ['tau=2.0'] if distill == 'soft' else []  # tau is refused with hard distillation
    cfg = load_config(None, [*BASE, f'distill={distill}', 'mixup=0.8', 'cutmix=1.0', *tau])
    objective, mixup, batches = _batches(cfg)
    assert mixup.label_smoothing == 0.1
    # the same draws (lambda, mixup or cutmix, the box) without smoothing: the mixed labels themselves
    unsmoothed = build_mixup(load_config(None, [*BASE, 'mixup=0.8', 'cutmix=1.0', 'smoothing=0.0']), 10)
    info, contract = DistInfo(), student_contract(cfg)
    data = build_data(cfg, info, contract.mean, contract.std)
    data.train_loader.sampler.set_epoch(0)
    mixed_any = False
    for step, (raw, batch) in enumerate(zip(data.train_loader, batches)):
        _, labels = scheduled_mixup(unsmoothed, raw[0].clone(), raw[1], 0, 0, step, 0)
        (target,) = objective.teacher_logits(batch.images, batch.targets)
        assert torch.allclose(target.probs, labels, atol=1e-6)
        assert torch.allclose(target.probs.sum(-1), torch.ones(len(labels)), atol=1e-6)
        assert torch.equal(target.labels, labels.argmax(-1))
        mixed_any |= bool((labels.max(-1).values < 1).any())
        out = objective.student(batch.images)
        loss = objective.distill_loss.per_sample(out.dist_logits[0], target)
        if distill == 'hard':  # cross-entropy against the mixed labels
            expected = -(labels * F.log_softmax(out.dist_logits[0], -1)).sum(-1)
        else:  # tau^2 KL(mixed labels || student at tau); the labels are a distribution, not tempered
            log_p = F.log_softmax(out.dist_logits[0] / 2.0, -1)
            expected = 4.0 * (torch.xlogy(labels, labels) - labels * log_p).sum(-1)
        assert torch.allclose(loss, expected, atol=1e-5)
    assert mixed_any  # the batches were mixed: not one-hot


def test_confidence_weights_with_a_labels_teacher():
    """One-hot labels have entropy 0: beside a teacher of entropy H the labels weigh 1 / (1 + e^-H)."""
    labels = LabelsTeacher(3)(torch.tensor([0, 2]))
    loss = DistillationLoss(teacher_weighting='entropy')
    from stdistill.models.students import STDOutput
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    out = STDOutput(torch.zeros(2, 3), [torch.zeros(2, 3), torch.zeros(2, 3)], [None, None], [None, None])
    terms = loss(out, torch.tensor([0, 2]), [labels, logits]).terms
    h = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)
    assert abs(float(terms['teacher_weight_0']) - float(torch.sigmoid(h).mean())) < 1e-6


@pytest.mark.parametrize('method', ['kd', 'deit', 'std'])
def test_every_method_trains_from_the_labels_teacher(tmp_path, capsys, method):
    warmup = ['mine_warmup_epochs=0.5'] if method == 'std' else []  # MINE is STD's
    assert main(['train', *BASE, f'method={method}', 'mixup=0.8', 'cutmix=1.0', *warmup, f'output={tmp_path}']) == 0
    out = capsys.readouterr().out
    assert 'teachers.0 (labels) gives the ground truth' in out
    assert 'done: 1/1 epochs' in out


@pytest.mark.parametrize('key, line', [
    ('mine_warmup_epochs=1', 'mine_warmup_epochs 1.0 is not below epochs 1'),
    ('mine=false|mine_warmup_epochs=0.5', 'mine_warmup_epochs applies to MINE'),
    ('teachers.0.checkpoint=x.safetensors', 'remove teachers.0.checkpoint'),
    ('teachers.0.kwargs={drop_rate: 0.1}', 'remove teachers.0.kwargs'),
    ('teachers.0.img_size=32', 'remove teachers.0.img_size'),
    ('teacher_outputs=somewhere', 'teachers.0 is the labels teacher, which a teacher-output store does not hold'),
])
def test_refusals_are_one_line(tmp_path, capsys, key, line):
    assert main(['train', *BASE, *key.split('|'), f'output={tmp_path / "run"}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0], err
    assert not (tmp_path / 'run').exists()
    assert main(['teacher-pass', *BASE, '--output', str(tmp_path / 'store')]) == 2
    assert 'labels teacher' in capsys.readouterr().err
    assert not (tmp_path / 'store').exists()


def test_mine_warmup_keeps_the_penalty_off_for_its_updates(monkeypatch, tmp_path):
    """mine_warmup_epochs=0.5 of 4 steps: the tokens get no penalty for updates 0 and 1, then do."""
    from stdistill.method.mine import MIRegularizer
    seen = []
    original = MIRegularizer.set_penalty
    monkeypatch.setattr(MIRegularizer, 'set_penalty', lambda self, on: (seen.append(on), original(self, on)))
    assert main(['train', *BASE, 'mixup=0.0', 'cutmix=0.0', 'mine_warmup_epochs=0.5', 'epochs=2',
                 f'output={tmp_path}']) == 0
    assert seen == [False, False, True, True, True, True, True, True]
