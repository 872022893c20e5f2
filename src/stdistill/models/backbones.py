"""Student backbones: what STD needs to know about a vision MLP, and the models timm lacks.

A backbone is any timm model with `forward_intermediates(x, indices, output_fmt='NLC')`
and `forward_head`, whose blocks are one of the vision-MLP blocks below. `token_dims`
reads, for a block, the sizes a token pair attached after it must have.

ResMLP-B24 as the STD paper uses it (patch 16, dim 768, depth 24: 115.7M params) is not
timm's `resmlp_big_24_224` (patch 8); it is registered here as `resmlp_b24_224`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.mlp_mixer import Affine, MixerBlock, MlpMixer, ResBlock, SpatialGatingBlock
from timm.models.mlp_mixer import checkpoint_filter_fn as mixer_checkpoint_filter_fn

from .cyclemlp import CycleBlock, CycleMLP
from ..utils.errors import UserError

__all__ = ['TokenDims', 'num_blocks', 'token_dims', 'patch_grid', 'mixer_t4_28', 'mixer_t4_32', 'resmlp_t4_32',
           'mixer_t8_64', 'resmlp_t8_64', 'resmlp_b24_224', 'SMALL_STUDENTS']


@dataclass(frozen=True)
class TokenDims:
    """Sizes of the features Z(l) after one block, and the hidden sizes STD's token MLPs copy.

    `spatial_hidden` is None where the backbone mixes positions with a single linear layer
    (ResMLP, gMLP, CycleMLP): the spatial token MLP is then one linear map too.
    """
    num_positions: int
    num_channels: int
    spatial_hidden: Optional[int]
    channel_hidden: int


def _blocks(model: nn.Module) -> list:
    if isinstance(model, MlpMixer):
        return list(model.blocks)
    if isinstance(model, CycleMLP):
        return [block for stage in model.stages for block in stage.blocks]
    raise UserError(f'{type(model).__name__} is not a supported STD backbone '
                    '(supported: timm MlpMixer family (Mixer, ResMLP, gMLP) and CycleMLP)')


def num_blocks(model: nn.Module) -> int:
    """Number of blocks token pairs can attach after."""
    return len(_blocks(model))


def patch_grid(model: nn.Module, index: int) -> tuple:
    """(H, W) of the patch grid after block `index`."""
    if isinstance(model, CycleMLP):
        return model.block_grid_sizes[index]
    return tuple(model.stem.grid_size)


def token_dims(model: nn.Module, index: int) -> TokenDims:
    """The token-pair sizes for a pair attached after block `index` (already normalised)."""
    block = _blocks(model)[index]
    height, width = patch_grid(model, index)
    if not isinstance(block, (MixerBlock, ResBlock, SpatialGatingBlock, CycleBlock)):
        raise UserError(f'block type {type(block).__name__} is not a supported vision-MLP block')
    # Only Mixer's token mixing has a hidden layer; the others mix positions with one linear map.
    spatial = block.mlp_tokens.fc1.out_features if isinstance(block, MixerBlock) else None
    channel_mlp = block.mlp if isinstance(block, CycleBlock) else block.mlp_channels
    dim, channel = channel_mlp.fc1.in_features, channel_mlp.fc1.out_features
    return TokenDims(height * width, dim, spatial, channel)


def _mixer_cfg(**kwargs: Any) -> dict:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.proj', 'classifier': 'head', **kwargs,
    }


def _small_cfg(size: int = 28, chans: int = 1) -> dict:
    # 1 channel: Fashion-MNIST's statistics; 3 channels: ImageNet's, what a folder of photos is near
    mean, std = ((0.2860,), (0.3530,)) if chans == 1 else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return {'url': '', 'num_classes': 10, 'input_size': (chans, size, size), 'pool_size': None, 'crop_pct': 1.0,
            'interpolation': 'bilinear', 'mean': mean, 'std': std, 'first_conv': 'stem.proj',
            'classifier': 'head'}


default_cfgs = generate_default_cfgs({
    'resmlp_b24_224.untrained': _mixer_cfg(),
    'mixer_t4_28.untrained': _small_cfg(),
    'mixer_t4_32.untrained': _small_cfg(32, 3),
    'resmlp_t4_32.untrained': _small_cfg(32, 3),
    'mixer_t8_64.untrained': _small_cfg(64, 3),
    'resmlp_t8_64.untrained': _small_cfg(64, 3),
})


@register_model
def resmlp_b24_224(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """ResMLP-B24/16 as in the STD paper: 115.7M params, 23.0 GMACs at 224."""
    args = dict(patch_size=16, num_blocks=24, embed_dim=768, mlp_ratio=4,
                block_layer=partial(ResBlock, init_values=1e-6), norm_layer=Affine)
    return build_model_with_cfg(MlpMixer, 'resmlp_b24_224', pretrained,
                                pretrained_filter_fn=mixer_checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=3, feature_cls='getter'), **dict(args, **kwargs))


# --- small models for small data (Fashion-MNIST, 28x28) -----------------------------------------

@register_model
def mixer_t4_28(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """A tiny MLP-Mixer for 28x28 inputs: patch 4 (7x7 = 49 positions), dim 128, 6 blocks (~0.8M params).

    The quickstart's student: the same block as Mixer-S16, sized for Fashion-MNIST.
    """
    args = dict(img_size=28, in_chans=1, num_classes=10, patch_size=4, num_blocks=6, embed_dim=128)
    return build_model_with_cfg(MlpMixer, 'mixer_t4_28', pretrained,
                                feature_cfg=dict(out_indices=3, feature_cls='getter'), **dict(args, **kwargs))



def _small(name: str, pretrained: bool, args: dict, kwargs: dict) -> MlpMixer:
    return build_model_with_cfg(MlpMixer, name, pretrained, feature_cfg=dict(out_indices=3, feature_cls='getter'),
                                **dict(args, **kwargs))


_RESMLP = dict(mlp_ratio=4, block_layer=partial(ResBlock, init_values=1e-1), norm_layer=Affine)


@register_model
def mixer_t4_32(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """A small MLP-Mixer for 32x32 RGB images (CIFAR-sized): patch 4 (8x8 = 64 positions), dim 128,
    6 blocks (~0.85M params)."""
    return _small('mixer_t4_32', pretrained, dict(img_size=32, patch_size=4, num_blocks=6, embed_dim=128), kwargs)


@register_model
def resmlp_t4_32(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """A small ResMLP for 32x32 RGB images: patch 4 (64 positions), dim 128, 6 blocks (~0.83M params)."""
    return _small('resmlp_t4_32', pretrained,
                  dict(img_size=32, patch_size=4, num_blocks=6, embed_dim=128, **_RESMLP), kwargs)


@register_model
def mixer_t8_64(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """A small MLP-Mixer for 64x64 RGB images: patch 8 (8x8 = 64 positions), dim 192, 8 blocks (~2.5M params)."""
    return _small('mixer_t8_64', pretrained, dict(img_size=64, patch_size=8, num_blocks=8, embed_dim=192), kwargs)


@register_model
def resmlp_t8_64(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """A small ResMLP for 64x64 RGB images: patch 8 (64 positions), dim 192, 8 blocks (~2.4M params)."""
    return _small('resmlp_t8_64', pretrained,
                  dict(img_size=64, patch_size=8, num_blocks=8, embed_dim=192, **_RESMLP), kwargs)


# The students for small images (and the input each is built for), listed by `stdistill models`
SMALL_STUDENTS = {'mixer_t4_28': '1x28x28', 'mixer_t4_32': '3x32x32', 'resmlp_t4_32': '3x32x32',
                  'mixer_t8_64': '3x64x64', 'resmlp_t8_64': '3x64x64'}
