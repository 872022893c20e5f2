"""Distillation losses (docs/method.md section 3).

    L = (1 - alpha) * base(class_logits, y) + alpha * sum_j w_j(x) * l_j

l_j is the loss of teacher j's distillation head: hard, CE against the teacher's argmax
(DeiT's hard distillation, the paper's choice), or soft, tau^2 * KL(p_teacher || p_student)
at temperature tau. w_j(x) re-weights teachers per sample by confidence: the softmax over
teachers of minus the entropy of each teacher's prediction, so the confident (low-entropy)
teacher weighs more and the weights sum to 1; 'uniform' gives every teacher 1/M.

The base criterion is any timm/torch loss on the class head: CrossEntropy, timm's
LabelSmoothingCrossEntropy, or SoftTargetCrossEntropy for mixup/cutmix targets.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .students import STDOutput

__all__ = ['DistillationLoss', 'LossTerms', 'teacher_weights', 'prediction_entropy', 'DISTILL_MODES',
           'TEACHER_WEIGHTINGS']

DISTILL_MODES = ('hard', 'soft')
TEACHER_WEIGHTINGS = ('entropy', 'uniform')


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per sample, (B,)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def teacher_weights(teacher_logits: List[torch.Tensor], mode: str = 'entropy') -> torch.Tensor:
    """Per-sample teacher weights, (B, M), each row summing to 1."""
    if mode not in TEACHER_WEIGHTINGS:
        raise ValueError(f'teacher_weighting must be one of {TEACHER_WEIGHTINGS}, got {mode!r}')
    batch, count = teacher_logits[0].shape[0], len(teacher_logits)
    if mode == 'uniform' or count == 1:
        return teacher_logits[0].new_full((batch, count), 1.0 / count, dtype=torch.float32)
    entropy = torch.stack([prediction_entropy(t) for t in teacher_logits], dim=1)
    return torch.softmax(-entropy, dim=1)


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
    ) -> None:
        super().__init__()
        if distill not in DISTILL_MODES:
            raise ValueError(f'distill must be one of {DISTILL_MODES}, got {distill!r}')
        if teacher_weighting not in TEACHER_WEIGHTINGS:
            raise ValueError(f'teacher_weighting must be one of {TEACHER_WEIGHTINGS}, got {teacher_weighting!r}')
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'alpha must be in [0, 1], got {alpha}')
        if tau <= 0:
            raise ValueError(f'tau must be > 0, got {tau}')
        self.base_criterion = base_criterion if base_criterion is not None else nn.CrossEntropyLoss()
        self.alpha, self.tau = alpha, tau
        self.distill, self.teacher_weighting = distill, teacher_weighting

    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """l_j for every sample, (B,)."""
        if self.distill == 'hard':
            return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1), reduction='none')
        log_p_s = F.log_softmax(student_logits / self.tau, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / self.tau, dim=-1)
        return (self.tau ** 2) * F.kl_div(log_p_s, log_p_t, reduction='none', log_target=True).sum(-1)

    def forward(self, outputs: STDOutput, targets: torch.Tensor, teacher_logits: List[torch.Tensor]) -> LossTerms:
        if len(teacher_logits) != len(outputs.dist_logits):
            raise ValueError(f'{len(teacher_logits)} teachers for {len(outputs.dist_logits)} distillation heads')
        base = self.base_criterion(outputs.logits, targets)
        weights = teacher_weights(teacher_logits, self.teacher_weighting)  # (B, M), no gradient
        per_teacher = torch.stack(
            [self.per_sample(s, t) for s, t in zip(outputs.dist_logits, teacher_logits)], dim=1)  # (B, M)
        dist = (weights * per_teacher).sum(1).mean()
        total = (1 - self.alpha) * base + self.alpha * dist
        terms = {'loss_cls': base.detach(), 'loss_dist': dist.detach()}
        for j in range(per_teacher.shape[1]):
            terms[f'loss_dist_{j}'] = per_teacher[:, j].mean().detach()
            terms[f'teacher_weight_{j}'] = weights[:, j].mean().detach()
        return LossTerms(total, terms)
