"""DeiT-style distillation for isotropic vision MLPs: the paper's "+ DeiT distillation" rows.

One distillation token is appended as an extra spatial position before the first block and
propagates through every block, so each block's token-mixing weights grow from P to P+1
positions. The class head reads the mean of the P patch positions; a second head reads the
distillation position. Unlike STD, the token writes into the patches through the token
mixing. Train mode returns an `STDOutput` with one distillation head; eval mode returns the
average of the two heads, as DeiT does.
"""
from __future__ import annotations

from typing import Any, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.mlp_mixer import MixerBlock, MlpMixer, ResBlock, SpatialGatingBlock

from ..utils.errors import UserError
from .students import (INFERENCE_HEADS, STDOutput, check_input_size, combine_heads, create_token_student,
                       TOKEN_STUDENTS, register_wrapper, token_model_cfg, token_student_cfg)

__all__ = ['DeiTTokenStudent', 'grow_linear', 'grow_token_mixing', 'deit_model_name', 'DEIT_BASES', 'DEIT_MODELS']


def grow_linear(linear: nn.Linear, extra_in: int, extra_out: int) -> nn.Linear:
    """A copy of `linear` with more inputs and/or outputs; old weights kept, new ones small.

    Keeping the old weights means a pretrained backbone still computes nearly what it did.
    """
    out = nn.Linear(linear.in_features + extra_in, linear.out_features + extra_out,
                    bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        trunc_normal_(out.weight, std=.02)
        out.weight[:linear.out_features, :linear.in_features] = linear.weight
        if linear.bias is not None:
            out.bias.zero_()
            out.bias[:linear.out_features] = linear.bias
    return out


def grow_token_mixing(block: nn.Module) -> None:
    """Make a block's spatial (token) mixing take one more position, in place."""
    if isinstance(block, MixerBlock):
        block.mlp_tokens.fc1 = grow_linear(block.mlp_tokens.fc1, 1, 0)
        block.mlp_tokens.fc2 = grow_linear(block.mlp_tokens.fc2, 0, 1)
    elif isinstance(block, ResBlock):
        block.linear_tokens = grow_linear(block.linear_tokens, 1, 1)
    elif isinstance(block, SpatialGatingBlock):
        block.mlp_channels.gate.proj = grow_linear(block.mlp_channels.gate.proj, 1, 1)
    else:
        raise UserError(f'DeiT-style token needs an isotropic MLP block (Mixer, ResMLP, gMLP), '
                        f'got {type(block).__name__}')


class DeiTTokenStudent(nn.Module):
    def __init__(self, backbone: MlpMixer, inference_head: str = 'avg') -> None:
        super().__init__()
        if not isinstance(backbone, MlpMixer):
            raise UserError(f'DeiT-style distillation supports timm MlpMixer backbones, got {type(backbone).__name__}')
        if inference_head not in INFERENCE_HEADS:
            raise UserError(f'inference_head must be one of {INFERENCE_HEADS}, got {inference_head!r}')
        self.backbone = backbone
        for block in backbone.blocks:
            grow_token_mixing(block)
        self.num_classes = backbone.num_classes
        self.num_features = self.head_hidden_size = backbone.num_features  # what timm's save_for_hf records
        self.num_teachers = 1
        self.inference_head = inference_head
        self.in_chans = backbone.in_chans
        self.img_size = tuple(backbone.stem.img_size)
        self.pretrained_cfg = token_model_cfg(backbone, deit_model_name)
        self.dist_token = nn.Parameter(trunc_normal_(torch.zeros(1, 1, backbone.embed_dim), std=.02))
        self.head_dist = nn.Linear(backbone.embed_dim, self.num_classes)
        trunc_normal_(self.head_dist.weight, std=.02)
        nn.init.zeros_(self.head_dist.bias)
        self.distilled_training = False

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'dist_token'}

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """As timm's distilled DeiT: in training, forward returns (class logits, distillation logits),
        the pair timm.task.TokenDistillationTask trains (STDTask takes either form)."""
        self.distilled_training = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.in_chans, self.img_size, type(self).__name__)
        x = self.backbone.stem(x)
        x = torch.cat([x, self.dist_token.repeat(x.shape[0], 1, 1)], dim=1)
        return self.backbone.norm(self.backbone.blocks(x))

    def forward_head(self, x: torch.Tensor) -> STDOutput:
        logits = self.backbone.forward_head(x[:, :-1])
        return STDOutput(logits, [self.head_dist(x[:, -1])], [None], [None])

    def forward(self, x: torch.Tensor) -> Union[STDOutput, Tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        out = self.forward_head(self.forward_features(x))
        if not self.training:
            return combine_heads(out, self.inference_head)
        return (out.logits, out.dist_logits[0]) if self.distilled_training else out


def deit_model_name(base: str) -> str:
    """The registered name of the DeiT-token student on timm's `base` model: deit_<base>."""
    return f'deit_{base}'


# the paper's names, and deit_<base> for every isotropic vision MLP (CycleMLP is not one)
DEIT_BASES = {
    'deit_mixer_s16_224': 'mixer_s16_224',
    'deit_mixer_b16_224': 'mixer_b16_224',
    'deit_resmlp_s24_224': 'resmlp_24_224',
    'deit_resmlp_b24_224': 'resmlp_b24_224',
    'deit_gmlp_s16_224': 'gmlp_s16_224',
}
DEIT_MODELS = {**{deit_model_name(b): b for b in timm.list_models(['mixer_*', 'resmlp_*', 'gmlp_*'])}, **DEIT_BASES}


def _create_deit(name: str, pretrained: bool, inference_head: str = 'avg', **kwargs: Any) -> DeiTTokenStudent:
    # The base weights load before the token mixing grows; the extra position starts small.
    return create_token_student(name, DEIT_MODELS[name], DeiTTokenStudent, pretrained,
                                token_args={'inference_head': inference_head}, **kwargs)


TOKEN_STUDENTS.update(DEIT_MODELS)
default_cfgs: dict = {}
for _name, _base in DEIT_MODELS.items():
    globals()[_name] = register_wrapper(
        _name, _create_deit, f'DeiT-style distillation token on timm `{_base}`: takes inference_head (avg, cls, '
        f'dist) and any argument of the backbone.', __name__, token_student_cfg(_name, _base))
