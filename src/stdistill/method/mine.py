"""Mutual information regularisation with MINE (docs/method.md section 4; Belghazi et al., 2018).

    I(T_S; T_C) >= E_joint[psi(T_S, T_C)] - log E_marginal[exp(psi(T_S, T_C'))]

psi is a statistics network on [T_S, T_C]. Joint pairs are the two tokens of the same image;
marginal pairs put T_S of image i with T_C of image pi(i), pi a random derangement of the batch.

One backward pass trains both sides, through two terms of one loss: psi ascends the bound
on detached tokens (a better estimate), and the tokens descend lambda * I through a frozen
copy of psi's weights, only while the estimate is positive (see forward). The gradient of
psi's log term uses MINE's moving-average correction: its denominator E[exp(psi)] is
replaced by a running average, which removes the bias that a mini-batch estimate of that
denominator puts into the gradient. Under torchrun the average is over the global batch (one
all-gather of two numbers per step), so every process holds the same average and a checkpoint's
copy is every process's.

A warm-up (`mine_warmup_epochs`, not in the paper) trains psi alone for a while: early in
training psi's estimate is poor, and a penalty through it pushes the tokens in directions that
say little about their mutual information.

MINE always runs in fp32, also inside a bf16 autocast region: exp and log-sum-exp of psi are
where low precision hurts first.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.func import functional_call

from ..utils.errors import UserError


__all__ = ['MINE', 'MINEOutput', 'MIRegularizer', 'StatisticsNetwork', 'random_derangement']


def random_derangement(n: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2)."""
    if n < 2:
        raise UserError(f'a derangement needs at least 2 samples, got a batch of {n}')
    while True:  # about e tries on average
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == torch.arange(n)).any()):
            return perm.to(device)


def global_log_mean_exp(log_mean_exp: torch.Tensor, count: int) -> torch.Tensor:
    """log of the mean of exp(psi) over every process's batch, from each process's log-mean-exp
    over its own `count` samples (each process must call it); the value itself in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return log_mean_exp
    mine = torch.stack([log_mean_exp.detach().double(), torch.tensor(float(count), dtype=torch.float64,
                                                                     device=log_mean_exp.device)])
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    lme, counts = torch.stack(parts).unbind(1)
    return (torch.logsumexp(lme + counts.log(), 0) - counts.sum().log()).to(log_mean_exp.dtype)


class StatisticsNetwork(nn.Module):
    """psi: 3 linear layers with GELU, hidden 512, one output."""

    def __init__(self, in_features: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, y], dim=-1)).squeeze(-1)


class MINEOutput(NamedTuple):
    loss: torch.Tensor      # backpropagate this: psi ascends, the tokens descend lambda * I
    estimate: torch.Tensor  # the MINE lower bound on I(T_S; T_C), in nats, detached, for logging


class MINE(nn.Module):
    def __init__(self, x_dim: int, y_dim: int, hidden: int = 512, weight: float = 0.1,
                 ma_rate: float = 0.01) -> None:
        """weight is lambda; ma_rate the update rate of the moving average of E[exp(psi)]."""
        super().__init__()
        if weight < 0:
            raise UserError(f'MINE weight (lambda) must be >= 0, got {weight}')
        self.statistics = StatisticsNetwork(x_dim + y_dim, hidden)
        self.weight, self.ma_rate = weight, ma_rate
        self.penalty = True  # False during a warm-up: psi learns the bound, the tokens get no penalty yet
        # log of the moving average of E_marginal[exp(psi)]; nan until the first step
        self.register_buffer('log_ma', torch.tensor(float('nan')))

    def _bound_terms(self, x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, params=None):
        """Mean psi on joint pairs and log E[exp(psi)] on marginal pairs (with psi's weights
        replaced by `params` when given)."""
        def psi(a, b):
            return self.statistics(a, b) if params is None else functional_call(self.statistics, params, (a, b))
        joint = psi(x, y).mean()
        marginal = psi(x, y[perm])
        return joint, torch.logsumexp(marginal, dim=0) - math.log(marginal.shape[0])

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> MINEOutput:
        """x (B, Dx), y (B, Dy): the two tokens of each image; B >= 2 (a derangement needs two)."""
        with torch.autocast(x.device.type, enabled=False):
            return self._forward(x.float(), y.float(), generator)

    def _forward(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]) -> MINEOutput:
        perm = random_derangement(x.shape[0], generator, x.device)
        # psi's part: ascend the bound on detached tokens
        joint, log_mean_exp = self._bound_terms(x.detach(), y.detach(), perm)
        estimate = (joint - log_mean_exp).detach()
        if self.training:
            with torch.no_grad():
                current = global_log_mean_exp(log_mean_exp.detach(), x.shape[0])
                if torch.isnan(self.log_ma):
                    self.log_ma.copy_(current)
                else:  # log((1 - r) * ma + r * current)
                    self.log_ma.copy_(torch.logaddexp(self.log_ma + math.log1p(-self.ma_rate),
                                                      current + math.log(self.ma_rate)))
        # Surrogate whose gradient is grad E[exp(psi)] / moving average (MINE's bias correction);
        # its value equals log_mean_exp's first-order term and is not the estimate.
        log_ma = log_mean_exp.detach() if torch.isnan(self.log_ma) else self.log_ma
        psi_loss = -(joint - torch.exp(log_mean_exp - log_ma))
        # the student's part: descend lambda * I through a frozen psi, and only while the estimate
        # is positive. MI >= 0, so a negative estimate says psi is off, not that the tokens share
        # information; rewarding the student for pushing it lower lets it fool psi without bound.
        if self.weight == 0 or not self.penalty or not bool(estimate > 0):
            return MINEOutput(psi_loss, estimate)
        frozen = {name: p.detach() for name, p in self.statistics.named_parameters()}
        joint_s, log_mean_exp_s = self._bound_terms(x, y, perm, frozen)
        return MINEOutput(psi_loss + self.weight * (joint_s - log_mean_exp_s), estimate)


class MIRegularizer(nn.Module):
    """One MINE per token pair of a student (pairs with both tokens), summed.

    Lives beside the student, not inside it: psi is a training-time network and must be in
    the optimizer, but never in the exported model.
    """

    def __init__(self, student: nn.Module, weight: float = 0.1, hidden: int = 512, ma_rate: float = 0.01) -> None:
        super().__init__()
        pairs = [p for p in student.token_pairs if p.tokens == 'both']
        if not pairs:
            raise UserError('the MI regulariser needs token pairs with both a spatial and a channel token')
        self.pair_index = [i for i, p in enumerate(student.token_pairs) if p.tokens == 'both']
        self.mines = nn.ModuleList(
            MINE(p.dims.num_channels, p.dims.num_positions, hidden, weight, ma_rate) for p in pairs)

    def set_penalty(self, on: bool) -> None:
        """Whether the tokens get the penalty (off during a warm-up of the statistics networks)."""
        for mine in self.mines:
            mine.penalty = on

    def forward(self, spatial_tokens: list, channel_tokens: list) -> MINEOutput:
        outs = [mine(spatial_tokens[i], channel_tokens[i]) for mine, i in zip(self.mines, self.pair_index)]
        return MINEOutput(sum(o.loss for o in outs), torch.stack([o.estimate for o in outs]).mean())
