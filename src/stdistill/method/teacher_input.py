"""The teacher input contract: each teacher sees the image it was trained on.

The student's batch is normalised with the student's mean/std, at the student's size and
channel count. A teacher was trained on its own preprocessing (timm's `resnet50d` on
ImageNet mean/std, `mixer_s16_224` on 0.5/0.5, a ViT at 224 only, an RGB model on 3
channels). `TeacherInput` turns the student's batch into the teacher's input on the device,
once per step, in fp32:

    x_teacher = resize(x_student * std_s + mean_s, teacher size) - mean_t) / std_t

with a 1-channel batch repeated to 3 channels for an RGB teacher. Resizing (bilinear or
bicubic with antialiasing, as torchvision does on tensors) is linear with weights that sum to
one, so it commutes with the per-channel affine map: the teacher gets what its own
preprocessing gives from the same image (tested to 1e-5). When nothing differs, the batch
passes through untouched.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MAX_IMG_SIZE, MIN_STD, RESIZE_INTERPOLATIONS
from ..utils.errors import UserError

__all__ = ['InputContract', 'TeacherInput', 'RECORD_KEY', 'autocast_enabled', 'fp32_region', 'to_float']

# safetensors metadata key under which stdistill checkpoints record their input contract
RECORD_KEY = 'stdistill.input'


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type (False for types autocast does not know,
    such as 'meta', where shapes are traced without compute)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def fp32_region(device_type: str) -> contextlib.AbstractContextManager:
    """A region where autocast is off (a no-op for device types autocast does not know)."""
    return torch.autocast(device_type, enabled=False) if autocast_enabled(device_type) else contextlib.nullcontext()


def to_float(obj: Any) -> Any:
    """Floating tensors in `obj` (a tensor, or tuples / named tuples / lists of them) as fp32."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, tuple) and hasattr(obj, '_fields'):
        return type(obj)(*(to_float(o) for o in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float(o) for o in obj)
    return obj


@dataclass(frozen=True)
class InputContract:
    """What a model's input is: per-channel mean/std (of images in [0, 1]), channel count,
    spatial size (None: any size) and the interpolation to resize with."""
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    in_chans: int
    img_size: Optional[Tuple[int, int]] = None
    interpolation: str = 'bicubic'

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise UserError(f'mean and std need {self.in_chans} values (one per input channel), '
                            f'got {len(self.mean)} and {len(self.std)}')
        values = (*self.mean, *self.std)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise UserError(f'mean and std must be finite numbers, got {self.mean} and {self.std}')
        if any(s < MIN_STD for s in self.std):
            raise UserError(f'std must be at least {MIN_STD}, got {self.std}')
        if self.img_size is not None and not all(isinstance(v, int) and 1 <= v <= MAX_IMG_SIZE for v in self.img_size):
            raise UserError(f'image size must be whole numbers from 1 to {MAX_IMG_SIZE}, got {self.img_size}')
        if self.interpolation not in RESIZE_INTERPOLATIONS:
            raise UserError(f'interpolation must be one of {", ".join(RESIZE_INTERPOLATIONS)}, '
                            f'got {self.interpolation!r}')

    def to_json(self) -> str:
        """The contract as recorded in a checkpoint's metadata (timm's pretrained-cfg names)."""
        size = list(self.img_size) if self.img_size else None
        return json.dumps({'mean': list(self.mean), 'std': list(self.std), 'in_chans': self.in_chans,
                           'input_size': [self.in_chans, *size] if size else None,
                           'interpolation': self.interpolation})

    @staticmethod
    def from_record(text: str) -> Dict[str, Any]:
        """The fields a checkpoint recorded, checked by building an InputContract from them.
        Raises UserError for a record that is not one (malformed JSON, wrong types or sizes)."""
        try:
            doc = json.loads(text)
            size = doc.get('input_size')
            if size is not None and not (isinstance(size, list) and len(size) == 3):
                raise UserError(f'input_size must be [channels, height, width], got {size}')
            out = {'mean': tuple(doc['mean']), 'std': tuple(doc['std']), 'in_chans': doc['in_chans'],
                   'interpolation': doc.get('interpolation', 'bicubic')}
            if size:
                out['img_size'] = tuple(size[1:])
            if not isinstance(out['in_chans'], int) or isinstance(out['in_chans'], bool) or out['in_chans'] < 1:
                raise UserError(f'in_chans must be a positive whole number, got {out["in_chans"]!r}')
            InputContract(**out)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise UserError(f'not a valid input record ({type(e).__name__}: {e})') from None
        return out

    def describe(self) -> str:
        size = 'x'.join(map(str, self.img_size)) if self.img_size else 'any size'
        return (f'{self.in_chans} channel(s), {size}, mean {tuple(round(m, 4) for m in self.mean)}, '
                f'std {tuple(round(s, 4) for s in self.std)}')


class TeacherInput(nn.Module):
    """Student batch (B, C_s, H_s, W_s), normalised for the student -> the teacher's input
    (B, C_t, H_t, W_t), fp32, normalised for the teacher. See the module docstring.

    Raises UserError at construction for what cannot be adapted: a 3-channel batch for a
    1-channel teacher, or channel counts other than 1 -> 3 and equal.
    """

    def __init__(self, student: InputContract, teacher: InputContract) -> None:
        super().__init__()
        cs, ct = student.in_chans, teacher.in_chans
        if cs != ct and not (cs == 1 and ct == 3):
            raise UserError(f'the student\'s batch has {cs} channel(s) and the teacher takes {ct}: only equal '
                            f'counts and a 1-channel batch for an RGB teacher (repeated) can be adapted; train '
                            f'the student on {ct}-channel images (in_chans={ct}) or use a teacher that takes {cs}')
        self.student, self.teacher = student, teacher
        s_mean = torch.tensor(student.mean, dtype=torch.float64).repeat(ct // cs)
        s_std = torch.tensor(student.std, dtype=torch.float64).repeat(ct // cs)
        t_mean, t_std = torch.tensor(teacher.mean, dtype=torch.float64), torch.tensor(teacher.std, dtype=torch.float64)
        scale, shift = (s_std / t_std).float(), ((s_mean - t_mean) / t_std).float()
        if not (torch.isfinite(scale).all() and torch.isfinite(shift).all()):
            raise UserError(f'the student\'s normalisation ({student.describe()}) cannot be mapped to the '
                            f'teacher\'s ({teacher.describe()}) in fp32')
        self.register_buffer('scale', scale.view(1, ct, 1, 1), persistent=False)
        self.register_buffer('shift', shift.view(1, ct, 1, 1), persistent=False)
        self.repeat = ct // cs
        self.size = teacher.img_size if teacher.img_size and tuple(teacher.img_size) != tuple(student.img_size or ()) \
            else None
        self.identity = self.repeat == 1 and self.size is None and bool((scale == 1).all() and (shift == 0).all())

    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        """(B, C_t, H_t, W_t) for an input of `input_shape`."""
        b, c, h, w = input_shape
        size = self.size or (h, w)
        return (b, c * self.repeat, *size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        with fp32_region(x.device.type):
            x = x.float()
            if self.size is not None:  # resize before repeating channels: fewer pixels to resample
                mode = self.teacher.interpolation
                x = F.interpolate(x, size=self.size, mode=mode, antialias=mode != 'nearest',
                                  align_corners=False if mode != 'nearest' else None)
            if self.repeat > 1:
                x = x.expand(-1, self.repeat, -1, -1)
            return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return f'student: {self.student.describe()} -> teacher: {self.teacher.describe()}'
