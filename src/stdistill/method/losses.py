"""Distillation losses (docs/method.md section 3).

    L = (1 - alpha) * base(class_logits, y) + alpha * sum_j w_j(x) * l_j
        [+ alpha * sum_j w_j(x) * tau^2 * KL(p_teacher_j || p_class_head)   with cls_distill]

l_j is the loss of teacher j's distillation head: hard, CE against the teacher's argmax
(DeiT's hard distillation, the paper's choice), or soft, tau^2 * KL(p_teacher || p_student)
at temperature tau. w_j(x) re-weights teachers per sample by confidence: the softmax over
teachers of minus the entropy of each teacher's prediction, so the confident (low-entropy)
teacher weighs more and the weights sum to 1; 'uniform' gives every teacher 1/M.

The base criterion is any timm/torch loss on the class head: CrossEntropy, timm's
LabelSmoothingCrossEntropy, or SoftTargetCrossEntropy for mixup/cutmix targets.

A teacher's output reaches the loss as its logits (B, classes) when the teacher runs in the
step, or as `TeacherTargets` read from a teacher-output store (store.py): for hard distillation
its argmax labels and prediction entropies, for soft distillation also its top-k logits and
log-sum-exp. Logits are reduced to the same fields first (`TeacherTargets.from_logits`), so
hard distillation computes the same numbers, bit for bit, either way. Soft distillation from
top-k keeps the teacher's probability mass outside its top k as one bucket, against the
student's mass outside the same k classes (exact for k = classes).

`LabelsTeacher` (`teachers: [{model: labels}]`) is the ground truth as a teacher: its targets are
a distribution `probs` (one-hot labels, or the mixed labels under mixup/cutmix), which hard
distillation takes as the cross-entropy target and soft distillation as p_teacher. It is the
control that trains the distillation heads on the true labels: what a real teacher adds beyond
it is the teacher's knowledge, not the extra heads and tokens.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LABELS_TEACHER  # noqa: F401 (re-exported: the losses' name for it)
from ..utils.errors import UserError
from ..models.students import STDOutput

__all__ = ['DistillationLoss', 'LossTerms', 'TeacherTargets', 'LabelsTeacher', 'teacher_weights', 'entropy_weights',
           'prediction_entropy', 'topk_soft_loss', 'DISTILL_MODES', 'TEACHER_WEIGHTINGS', 'LABELS_TEACHER']

DISTILL_MODES = ('hard', 'soft')
TEACHER_WEIGHTINGS = ('entropy', 'uniform')


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per sample, (B,)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def entropy_weights(entropy: torch.Tensor, mode: str = 'entropy') -> torch.Tensor:
    """Per-sample teacher weights (B, M), each row summing to 1, from the teachers' prediction
    entropies (B, M): softmax over teachers of minus the entropy, or 1/M each ('uniform')."""
    if mode not in TEACHER_WEIGHTINGS:
        raise UserError(f'teacher_weighting must be one of {TEACHER_WEIGHTINGS}, got {mode!r}')
    batch, count = entropy.shape
    if mode == 'uniform' or count == 1:
        return entropy.new_full((batch, count), 1.0 / count, dtype=torch.float32)
    return torch.softmax(-entropy, dim=1)


def teacher_weights(teacher_logits: List[torch.Tensor], mode: str = 'entropy') -> torch.Tensor:
    """Per-sample teacher weights, (B, M), each row summing to 1, from each teacher's logits (B, classes)."""
    return entropy_weights(torch.stack([prediction_entropy(t) for t in teacher_logits], dim=1), mode)


class TeacherTargets(NamedTuple):
    """What the distillation loss uses of one teacher's output for a batch of B images.

    labels (B,) int: argmax; entropy (B,) fp32: of softmax(logits), for the confidence weights.
    Soft distillation also needs either logits (B, classes), or topk_logits (B, k) fp32 with
    their class indices topk_index (B, k) and lse (B,) = logsumexp(logits / tau) over all classes.
    probs (B, classes) fp32, from `LabelsTeacher` only: a target distribution given as it is
    (not a softmax of logits, so no temperature), which both modes distil.
    """
    labels: torch.Tensor
    entropy: torch.Tensor
    logits: Optional[torch.Tensor] = None
    topk_logits: Optional[torch.Tensor] = None
    topk_index: Optional[torch.Tensor] = None
    lse: Optional[torch.Tensor] = None
    probs: Optional[torch.Tensor] = None

    @staticmethod
    def from_logits(logits: torch.Tensor) -> 'TeacherTargets':
        """The fields of fp32 logits (B, classes), computed as a store computes them."""
        logits = logits.float()
        return TeacherTargets(logits.argmax(dim=-1), prediction_entropy(logits), logits)


class LabelsTeacher:
    """The ground truth as a teacher (`teachers: [{model: labels}]`; the read-out control).

    Its output for a batch is the batch's own targets as a distribution: one-hot labels, or
    under mixup/cutmix the mixed labels. timm's Mixup folds label smoothing into the targets it
    returns, (1 - s) * mix + s / classes; that is taken out again, so the distillation heads get
    the labels themselves while the class head keeps the recipe's smoothing. No weights, no
    input adapter, nothing to store (a teacher-output store refuses it).
    """
    name = LABELS_TEACHER

    def __init__(self, num_classes: int, mixup_smoothing: float = 0.0) -> None:
        """mixup_smoothing: the `label_smoothing` of the run's Mixup (0 without mixup)."""
        if not 0.0 <= mixup_smoothing < 1.0:
            raise UserError(f'label smoothing must be in [0, 1), got {mixup_smoothing}')
        self.num_classes, self.mixup_smoothing = num_classes, mixup_smoothing

    def __call__(self, targets: torch.Tensor) -> TeacherTargets:
        """targets: (B,) class indices, or (B, classes) mixed targets as timm's Mixup returns
        them. Returns TeacherTargets with labels (B,) = the argmax, probs (B, classes) fp32
        and entropy (B,) of probs (0 for one-hot). Raises UserError for another class count."""
        if targets.ndim == 1:
            probs = F.one_hot(targets.long(), self.num_classes).float()
        else:
            if targets.shape[1] != self.num_classes:
                raise UserError(f'targets of {targets.shape[1]} classes for a labels teacher of {self.num_classes}')
            s = self.mixup_smoothing
            probs = ((targets.float() - s / self.num_classes) / (1 - s)).clamp_min(0) if s else targets.float()
        entropy = torch.special.entr(probs).sum(-1)
        labels = targets.long() if targets.ndim == 1 else probs.argmax(dim=-1)
        return TeacherTargets(labels, entropy, probs=probs)


def topk_soft_loss(student_logits: torch.Tensor, teacher: TeacherTargets, tau: float) -> torch.Tensor:
    """tau^2 * KL(p_teacher || p_student) per sample (B,), from the teacher's top-k logits: the k
    classes each, and the rest as one bucket (the teacher's remaining mass against the student's
    mass on the same classes). Equals the full KL when k is the class count."""
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_t = teacher.topk_logits.float() / tau - teacher.lse[:, None]  # (B, k)
    p_t = log_p_t.exp()
    kl = (p_t * (log_p_t - log_p_s.gather(1, teacher.topk_index.long()))).sum(-1)
    if teacher.topk_index.shape[1] < student_logits.shape[1]:
        outside = torch.ones_like(log_p_s, dtype=torch.bool).scatter(1, teacher.topk_index.long(), False)
        log_tail_s = torch.logsumexp(log_p_s.masked_fill(~outside, float('-inf')), dim=-1)
        tail_t = (1 - p_t.sum(-1)).clamp_min(0)
        # 0 * log 0 = 0: a teacher with all its mass in the top k adds nothing for the bucket
        kl = kl + torch.where(tail_t > 0, tail_t * (tail_t.clamp_min(1e-30).log() - log_tail_s),
                              torch.zeros_like(tail_t))
    return (tau ** 2) * kl


class LossTerms(NamedTuple):
    total: torch.Tensor
    terms: Dict[str, torch.Tensor]  # detached scalars for logging


class DistillationLoss(nn.Module):
    def __init__(
            self,
            base_criterion: Optional[nn.Module] = None,
            alpha: float = 0.5,
            tau: float = 1.0,
            distill: str = 'hard',
            teacher_weighting: str = 'entropy',
            cls_distill: bool = False,
    ) -> None:
        """alpha: weight of the distillation terms (1 - alpha on the labels); tau: soft temperature;
        distill: the distillation heads' target, 'hard' or 'soft'; cls_distill: the class head also
        learns each teacher's softened output (Hinton's KD at tau, weight alpha, confidence weighted)
        beside the distillation heads, so that the class head alone carries the teachers' knowledge."""
        super().__init__()
        if distill not in DISTILL_MODES:
            raise UserError(f'distill must be one of {DISTILL_MODES}, got {distill!r}')
        if teacher_weighting not in TEACHER_WEIGHTINGS:
            raise UserError(f'teacher_weighting must be one of {TEACHER_WEIGHTINGS}, got {teacher_weighting!r}')
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f'alpha must be in [0, 1], got {alpha}')
        if tau <= 0:
            raise UserError(f'tau must be > 0, got {tau}')
        self.base_criterion = base_criterion if base_criterion is not None else nn.CrossEntropyLoss()
        self.alpha, self.tau = alpha, tau
        self.distill, self.teacher_weighting = distill, teacher_weighting
        self.cls_distill = cls_distill

    def per_sample(self, student_logits: torch.Tensor, teacher: TeacherTargets,
                   mode: Optional[str] = None) -> torch.Tensor:
        """l_j for every sample, (B,), in `mode` ('hard' or 'soft'; None: self.distill). Raises
        UserError for soft distillation from hard labels."""
        mode = mode or self.distill
        if teacher.probs is not None:  # a labels teacher: its distribution is the target in both modes
            if mode == 'hard':
                return -(teacher.probs * F.log_softmax(student_logits, dim=-1)).sum(-1)
            log_p_s = F.log_softmax(student_logits / self.tau, dim=-1)
            return (self.tau ** 2) * (torch.xlogy(teacher.probs, teacher.probs) - teacher.probs * log_p_s).sum(-1)
        if mode == 'hard':
            return F.cross_entropy(student_logits, teacher.labels, reduction='none')
        if teacher.logits is None:
            if teacher.topk_logits is None:
                raise UserError('soft distillation needs the teachers\' logits or top-k logits; the teacher outputs '
                                'given hold hard labels only (make the store with distill=soft)')
            return topk_soft_loss(student_logits, teacher, self.tau)
        log_p_s = F.log_softmax(student_logits / self.tau, dim=-1)
        log_p_t = F.log_softmax(teacher.logits.float() / self.tau, dim=-1)
        return (self.tau ** 2) * F.kl_div(log_p_s, log_p_t, reduction='none', log_target=True).sum(-1)

    def forward(self, outputs: STDOutput, targets: torch.Tensor,
                teacher_outputs: List[Union[torch.Tensor, TeacherTargets]]) -> LossTerms:
        """The loss and its logged terms. teacher_outputs: per teacher, its logits (B, classes) or
        its TeacherTargets (from a store), in the order of the distillation heads."""
        if len(teacher_outputs) != len(outputs.dist_logits):
            raise UserError(f'{len(teacher_outputs)} teachers for {len(outputs.dist_logits)} distillation heads')
        teachers = [t if isinstance(t, TeacherTargets) else TeacherTargets.from_logits(t) for t in teacher_outputs]
        base = self.base_criterion(outputs.logits, targets)
        weights = entropy_weights(torch.stack([t.entropy for t in teachers], dim=1),
                                  self.teacher_weighting)  # (B, M), no gradient
        per_teacher = torch.stack(
            [self.per_sample(s, t) for s, t in zip(outputs.dist_logits, teachers)], dim=1)  # (B, M)
        dist = (weights * per_teacher).sum(1).mean()
        total = (1 - self.alpha) * base + self.alpha * dist
        terms = {'loss_cls': base.detach(), 'loss_dist': dist.detach()}
        if self.cls_distill:  # KD on the class head too, with the same per-sample teacher weights
            on_cls = torch.stack([self.per_sample(outputs.logits, t, 'soft') for t in teachers], dim=1)  # (B, M)
            cls_kd = (weights * on_cls).sum(1).mean()
            total = total + self.alpha * cls_kd
            terms['loss_cls_kd'] = cls_kd.detach()
        for j in range(per_teacher.shape[1]):
            terms[f'loss_dist_{j}'] = per_teacher[:, j].mean().detach()
            terms[f'teacher_weight_{j}'] = weights[:, j].mean().detach()
        return LossTerms(total, terms)
