"""What `stdistill models` lists: the students this package registers or was made for, the
teachers its recipes use, and the input each expects (timm's pretrained cfg: size, channels,
mean/std). A teacher is someone else's model: its normalisation is what the run adapts the
student's batch to (teacher_input.py).
"""
from __future__ import annotations

from typing import List, NamedTuple, Tuple

from timm.models import get_pretrained_cfg

from .backbones import SMALL_STUDENTS
from .students import STUDENT_BASES

__all__ = ['ModelEntry', 'catalog', 'format_catalog', 'KNOWN_TEACHERS']

# The teachers of the paper's recipes (recipes/imagenet) and of the small-data ones
KNOWN_TEACHERS = ('resnet18', 'resnet50d', 'resnet101d', 'swin_base_patch4_window7_224', 'regnety_160',
                  'vit_base_patch16_224', 'convnext_tiny')


class ModelEntry(NamedTuple):
    role: str  # 'student (small images)', 'student (224 px)' or 'teacher'
    name: str  # the timm name to give as `model` (student) or `teachers.N.model`
    input_size: Tuple[int, int, int]  # channels, height, width the model is built for
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


def _entry(role: str, name: str) -> ModelEntry:
    cfg = get_pretrained_cfg(name)
    return ModelEntry(role, name, tuple(cfg.input_size), tuple(cfg.mean), tuple(cfg.std))


def catalog() -> List[ModelEntry]:
    """Small-image students, the paper's students (their base names) and the known teachers."""
    return ([_entry('student (small images)', n) for n in SMALL_STUDENTS]
            + [_entry('student (224 px)', n) for n in STUDENT_BASES.values()]
            + [_entry('teacher', n) for n in KNOWN_TEACHERS])


def format_catalog(entries: List[ModelEntry]) -> str:
    """The entries as an aligned text table."""
    def numbers(values: Tuple[float, ...]) -> str:
        return '(' + ', '.join(f'{v:.3f}' for v in values) + ')'
    rows = [('role', 'model', 'input', 'mean', 'std')]
    rows += [(e.role, e.name, 'x'.join(map(str, e.input_size)), numbers(e.mean), numbers(e.std)) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r[:4], widths)) + '  ' + r[4] for r in rows)
