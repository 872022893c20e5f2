"""Parameter and MAC counts, and the paper's Params/FLOPs table beside ours.

MACs (multiply-accumulates, what the paper and timm call FLOPs) come from
`torch.utils.flop_counter.FlopCounterMode`, which counts matrix products and convolutions
(the cycle FC is a linear map, so it is counted). Models are built and run on the meta
device: nothing is allocated or computed, so even ResMLP-B24 profiles in about a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import torch
from timm.models import get_pretrained_cfg_value
from torch.utils.flop_counter import FlopCounterMode

from ..models.deit import DEIT_MODELS
from ..utils.errors import UserError, first_line
from ..models.students import STD_MODELS, check_model_name, create_student

__all__ = ['Profile', 'profile_model', 'count_macs', 'PaperRow', 'PAPER_ROWS', 'paper_comparison']


@dataclass(frozen=True)
class Profile:
    name: str
    params: int
    macs: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def count_macs(model: torch.nn.Module, input_size: tuple) -> int:
    """MACs of one eval-mode forward pass of a single image of `input_size` (C, H, W)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_size, device=device))
    return counter.get_total_flops() // 2  # the counter counts a multiply-add as 2 FLOPs


def profile_model(name: str, img_size: int = 224, in_chans: int = 3, num_teachers: Optional[int] = None,
                  **kwargs: Any) -> Profile:
    """Params and MACs of a registered model at an input size (and, for STD students, teacher count)."""
    check_model_name(name)
    if name in STD_MODELS:
        kwargs['num_teachers'] = 1 if num_teachers is None else num_teachers
    elif num_teachers is not None:
        raise UserError(f'--num-teachers applies to STD students (std_*), not {name}')
    try:
        fixed = name in STD_MODELS or name in DEIT_MODELS or get_pretrained_cfg_value(name, 'fixed_input_size')
    except RuntimeError:  # registered without a pretrained cfg: assume it takes any size
        fixed = False
    if fixed:
        kwargs['img_size'] = img_size  # isotropic MLPs are built for one resolution
    if in_chans != 3:
        kwargs['in_chans'] = in_chans
    try:
        with torch.device('meta'):
            model = create_student(name, **kwargs).eval()
    except TypeError as e:  # an argument the model does not take (token positions on a plain model)
        raise UserError(f'{name} does not take these options ({first_line(e)}): --num-teachers and '
                        f'--token-positions apply to STD students (std_*)') from None
    params = sum(p.numel() for p in model.parameters())
    try:
        macs = count_macs(model, (in_chans, img_size, img_size))
    except (AssertionError, RuntimeError) as e:  # a model built for one input size, or smaller than its stem
        raise UserError(f'{name} cannot take a {in_chans}x{img_size}x{img_size} input ({first_line(e)}): give the '
                        f'--img-size and --in-chans it is built for') from None
    return Profile(name, params, macs)


@dataclass(frozen=True)
class PaperRow:
    label: str
    model: str
    num_teachers: Optional[int]
    params_m: float   # the paper's figure
    gmacs: float      # the paper's figure


# ImageNet, 224x224, 1000 classes; "+STD" rows with two token pairs (two teachers), K = 1.
PAPER_ROWS: List[PaperRow] = [
    PaperRow('Mixer-S16', 'mixer_s16_224', None, 18.5, 3.8),
    PaperRow('Mixer-S16 + STD', 'std_mixer_s16_224', 2, 22.2, 4.3),
    PaperRow('Mixer-B16', 'mixer_b16_224', None, 59.9, 12.7),
    PaperRow('Mixer-B16 + STD', 'std_mixer_b16_224', 2, 66.7, 13.7),
    PaperRow('ResMLP-S24', 'resmlp_24_224', None, 30.0, 6.0),
    PaperRow('ResMLP-S24 + STD', 'std_resmlp_s24_224', 2, 32.5, 6.2),
    PaperRow('ResMLP-B24', 'resmlp_b24_224', None, 115.7, 23.0),
    PaperRow('ResMLP-B24 + STD', 'std_resmlp_b24_224', 2, 122.6, 24.1),
    PaperRow('CycleMLP-B1', 'cyclemlp_b1', None, 15.2, 2.1),
    PaperRow('CycleMLP-B1 + STD', 'std_cyclemlp_b1', 2, 18.4, 2.2),
    PaperRow('CycleMLP-B2', 'cyclemlp_b2', None, 26.8, 3.9),
    PaperRow('CycleMLP-B2 + STD', 'std_cyclemlp_b2', 2, 30.1, 4.0),
    # The paper's ResNet figures (25.58M / 4.36G, 44.57M / 8.09G) are those of the ResNet-D
    # variants: timm's plain resnet50 is 25.56M / 4.09G, 6% under the paper's GMACs.
    PaperRow('ResNet-50 (teacher)', 'resnet50d', None, 25.58, 4.36),
    PaperRow('ResNet-101 (teacher)', 'resnet101d', None, 44.57, 8.09),
    PaperRow('Swin-B/224 (teacher)', 'swin_base_patch4_window7_224', None, 87.77, 15.14),
]

PARAMS_TOLERANCE = 0.01
GMACS_TOLERANCE = 0.03


@dataclass(frozen=True)
class PaperComparison:
    row: PaperRow
    ours: Profile

    @property
    def params_diff(self) -> float:
        return self.ours.params_m / self.row.params_m - 1

    @property
    def gmacs_diff(self) -> float:
        return self.ours.gmacs / self.row.gmacs - 1

    @property
    def within_tolerance(self) -> bool:
        return abs(self.params_diff) <= PARAMS_TOLERANCE and abs(self.gmacs_diff) <= GMACS_TOLERANCE


def paper_comparison() -> List[PaperComparison]:
    return [PaperComparison(row, profile_model(row.model, num_teachers=row.num_teachers)) for row in PAPER_ROWS]
