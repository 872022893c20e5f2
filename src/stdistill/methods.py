"""What each training method needs, in one table: `stdistill train`'s `method` key.

    none   the backbone alone, trained on the labels
    kd     Hinton et al. 2015: every teacher's softened output supervises the class head itself
    deit   Touvron et al. 2021: one teacher, a distillation token and head beside the class head
    std    Li et al., ICML 2022: per teacher a spatial and a channel token pair (and MINE)

Every rule that depends on the method (which student is built and recorded, how many teachers,
soft or hard targets, where tokens read, whether MINE applies, the batch size MINE needs) is a
field or function here, so that config, builders, task, loaders, the store and export agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ['Method', 'METHODS', 'METHOD_NAMES', 'method_of', 'uses_mine', 'min_batch_size']


@dataclass(frozen=True)
class Method:
    """One method's needs.

    student: the network trained and recorded in checkpoints: 'none' (the backbone alone),
        'deit' (DeiTTokenStudent) or 'std' (STDStudent).
    max_teachers: 0 (no teachers), 1, or None (any number, confidence re-weighted).
    distill: the default target of the teachers' outputs: 'soft' (distribution at temperature
        tau) or 'hard' (argmax); the config key `distill` overrides it.
    distils_class_head: the teachers supervise the class head itself (KD), not a head of their own.
    token_positions: each teacher's tokens read a chosen block (`teachers.N.token_position`).
    """
    name: str
    student: str
    max_teachers: Optional[int]
    distill: str
    distils_class_head: bool = False
    token_positions: bool = False

    @property
    def needs_teachers(self) -> bool:
        return self.max_teachers != 0

    @property
    def has_distillation_heads(self) -> bool:
        """The student has heads beside its class head (and `inference_head` chooses among them)."""
        return self.student != 'none'


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method('none', student='none', max_teachers=0, distill='hard'),
    Method('kd', student='none', max_teachers=None, distill='soft', distils_class_head=True),
    Method('deit', student='deit', max_teachers=1, distill='hard'),
    Method('std', student='std', max_teachers=None, distill='hard', token_positions=True),
)}
METHOD_NAMES = tuple(METHODS)


def method_of(name: str) -> Method:
    """The Method called `name`; KeyError for another name (config.py refuses those first)."""
    return METHODS[name]


def uses_mine(method: str, mine: bool, tokens: str) -> bool:
    """MINE's mutual-information penalty applies to STD with both tokens of a pair, when asked."""
    return method_of(method).student == 'std' and mine and tokens == 'both'


def min_batch_size(method: str, mine: bool, tokens: str) -> int:
    """The smallest per-process batch the method can train on: MINE pairs one image's tokens with
    another's (a derangement), so it needs 2."""
    return 2 if uses_mine(method, mine, tokens) else 1
