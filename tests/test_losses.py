import math

import pytest
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from stdistill.method.losses import DistillationLoss, prediction_entropy, teacher_weights
from stdistill.models.students import STDOutput


def _output(logits, dist):
    """logits: one batch of class logits; dist: one batch of logits per teacher."""
    return STDOutput(torch.tensor(logits), [torch.tensor(d) for d in dist], [None] * len(dist), [None] * len(dist))


def test_hard_loss_matches_hand_computation():
    # one sample, 2 classes; class logits [0, 0] -> CE = log 2 whatever the label
    out = _output([[0.0, 0.0]], [[[math.log(3.0), 0.0]]])  # dist softmax = [3/4, 1/4]
    teacher = [torch.tensor([[0.0, 5.0]])]                 # teacher says class 1
    loss = DistillationLoss(alpha=0.5, distill='hard')(out, torch.tensor([0]), teacher)
    expected = 0.5 * math.log(2) + 0.5 * -math.log(1 / 4)
    assert loss.total.item() == pytest.approx(expected, abs=1e-6)
    assert loss.terms['loss_dist'].item() == pytest.approx(math.log(4), abs=1e-6)


def test_soft_loss_matches_hand_computation():
    tau = 2.0
    out = _output([[0.0, 0.0]], [[[0.0, 0.0]]])               # student dist: [1/2, 1/2] at any tau
    teacher = [torch.tensor([[2 * math.log(3.0), 0.0]])]    # teacher at tau 2: [3/4, 1/4]
    loss = DistillationLoss(alpha=1.0, tau=tau, distill='soft')(out, torch.tensor([0]), teacher)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert loss.total.item() == pytest.approx(tau ** 2 * kl, abs=1e-6)


def test_alpha_zero_is_plain_cross_entropy_and_mixup_targets_work():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    out = STDOutput(logits, [torch.randn(6, 4)], [None], [None])
    soft_targets = torch.softmax(torch.randn(6, 4), -1)
    loss = DistillationLoss(SoftTargetCrossEntropy(), alpha=0.0)(out, soft_targets, [torch.randn(6, 4)])
    assert loss.total.item() == pytest.approx(SoftTargetCrossEntropy()(logits, soft_targets).item(), abs=1e-6)


def test_entropy_weighting_prefers_confident_teacher():
    confident = torch.tensor([[8.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.1, 0.0, 0.0]])
    w = teacher_weights([unsure, confident], 'entropy')
    h = torch.stack([prediction_entropy(unsure), prediction_entropy(confident)], 1)
    assert w[0, 1] > w[0, 0]
    assert torch.allclose(w, torch.softmax(-h, 1))
    assert torch.allclose(w.sum(1), torch.ones(1))


def test_entropy_weighting_is_uniform_when_entropies_match():
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])  # same entropies, other classes
    assert torch.allclose(teacher_weights([a, b], 'entropy'), torch.full((2, 2), 0.5))
    assert torch.allclose(teacher_weights([a, b], 'uniform'), torch.full((2, 2), 0.5))


def test_weighted_sum_per_sample():
    """The distillation term is the per-sample weighted sum of each teacher's loss."""
    torch.manual_seed(0)
    s = [torch.randn(5, 3), torch.randn(5, 3)]
    t = [torch.randn(5, 3) * 3, torch.randn(5, 3)]
    out = STDOutput(torch.randn(5, 3), s, [None] * 2, [None] * 2)
    loss = DistillationLoss(alpha=1.0)(out, torch.zeros(5, dtype=torch.long), t)
    w = teacher_weights(t)
    per = torch.stack([F.cross_entropy(s[j], t[j].argmax(-1), reduction='none') for j in range(2)], 1)
    assert loss.total.item() == pytest.approx((w * per).sum(1).mean().item(), abs=1e-6)


@pytest.mark.parametrize('kwargs', [dict(distill='medium'), dict(teacher_weighting='max'), dict(alpha=1.5),
                                    dict(tau=0.0)])
def test_bad_loss_settings(kwargs):
    with pytest.raises(ValueError):
        DistillationLoss(**kwargs)


def test_teacher_count_must_match_heads():
    out = _output([[0.0, 0.0]], [[[0.0, 0.0]]])
    with pytest.raises(ValueError, match='2 teachers for 1 distillation heads'):
        DistillationLoss()(out, torch.tensor([0]), [torch.zeros(1, 2)] * 2)
