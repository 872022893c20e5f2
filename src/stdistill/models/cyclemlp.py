"""CycleMLP (Chen et al., ICLR 2022), written in timm's style.

CycleMLP is not in timm. This is our own implementation; its parameter names follow the
reference (ShoufaChen/CycleMLP) inside each block, so the official checkpoints load through
`checkpoint_filter_fn`.

The cycle fully-connected layer is written as a per-channel shift followed by a 1x1 linear
map. The reference computes the same thing with `torchvision.ops.deform_conv2d` and integer
offsets; the shift form is cheaper, and `torch.utils.flop_counter` counts its linear map
(it cannot count deform_conv2d). `tests/test_cyclemlp.py` checks the two agree.

Features inside the network are channels-last, (B, H, W, C).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..utils.errors import UserError


__all__ = ['CycleFC', 'CycleBlock', 'CycleMLP', 'cycle_offsets', 'cycle_shift']


def cycle_offsets(num_channels: int, kernel_size: int = 3) -> torch.Tensor:
    """Offset of each channel along the cycle axis: 0, 1, -1, 0, 1, -1, ... for kernel 3.

    Same staircase as the reference: channel i reads position (i + k // 2) % k - k // 2.
    """
    start = kernel_size // 2
    return torch.tensor([(c + start) % kernel_size - start for c in range(num_channels)])


def cycle_shift(x: torch.Tensor, offsets: torch.Tensor, dim: int, pad: int) -> torch.Tensor:
    """out[..., i, ..., c] = x[..., i + offsets[c], ..., c] along `dim`, zero outside the map.

    x is channels-last; `dim` is the spatial axis (1 for H, 2 for W in B, H, W, C);
    `pad` >= max |offset| (passed in, so no data-dependent sync under compile or meta).
    """
    length = x.shape[dim]
    pad_spec = [0, 0] * (x.ndim - 1 - dim) + [pad, pad]  # F.pad lists the last dim first
    padded = F.pad(x, pad_spec)
    index = torch.arange(length, device=x.device)[:, None] + pad + offsets.to(x.device)[None, :]
    view = [1] * x.ndim
    view[dim], view[-1] = length, x.shape[-1]
    return padded.gather(dim, index.view(view).expand(x.shape))


class CycleFC(nn.Module):
    """Cycle fully-connected layer: shift every channel by its cycle offset, then mix channels."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, axis: str = 'h',
                 bias: bool = True) -> None:
        super().__init__()
        if axis not in ('h', 'w'):
            raise UserError(f"CycleFC axis must be 'h' or 'w', got {axis!r}")
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size, self.axis = kernel_size, axis
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer('offsets', cycle_offsets(in_features, kernel_size), persistent=False)
        trunc_normal_(self.weight, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = cycle_shift(x, self.offsets, 1 if self.axis == 'h' else 2, self.kernel_size // 2)
        return F.linear(shifted, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f'{self.in_features}, {self.out_features}, kernel_size={self.kernel_size}, axis={self.axis}'


class CycleMixing(nn.Module):
    """Spatial mixing of a CycleMLP block: two cycle FCs and a channel FC, re-weighted."""

    def __init__(self, dim: int, proj_drop: float = 0.) -> None:
        super().__init__()
        self.mlp_c = nn.Linear(dim, dim, bias=False)
        # Names as in the reference: `sfc_h` has a 1x3 kernel (cycles along W), `sfc_w` a 3x1 (along H).
        self.sfc_h = CycleFC(dim, dim, axis='w')
        self.sfc_w = CycleFC(dim, dim, axis='h')
        self.reweight = Mlp(dim, dim // 4, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        h, w, c = self.sfc_h(x), self.sfc_w(x), self.mlp_c(x)
        a = (h + w + c).mean(dim=(1, 2))
        a = self.reweight(a).reshape(B, C, 3).permute(2, 0, 1).softmax(dim=0)[:, :, None, None, :]
        x = h * a[0] + w * a[1] + c * a[2]
        return self.proj_drop(self.proj(x))


class CycleBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float = 4., drop: float = 0., drop_path: float = 0.,
                 norm_layer: type = nn.LayerNorm) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = CycleMixing(dim, proj_drop=drop)  # `attn` keeps the reference's name
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class Downsample(nn.Module):
    """3x3 stride-2 convolution between stages, channels-last in and out."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class CycleStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, mlp_ratio: float, drop_path: Sequence[float],
                 downsample: bool, norm_layer: type = nn.LayerNorm) -> None:
        super().__init__()
        self.downsample = Downsample(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            CycleBlock(dim, mlp_ratio=mlp_ratio, drop_path=drop_path[i], norm_layer=norm_layer)
            for i in range(depth)])


class CycleMLP(nn.Module):
    """CycleMLP: a 7x7/4 overlapping patch embedding, four stages of CycleBlocks, mean pool, head.

    Blocks are numbered across all stages (0 .. sum(layers) - 1); `forward_intermediates`
    takes those block indices, so distillation tokens can attach after any block.
    """

    def __init__(
            self,
            layers: Sequence[int] = (2, 2, 4, 2),
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            mlp_ratios: Sequence[float] = (4, 4, 4, 4),
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer: type = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if global_pool not in ('', 'avg'):
            raise UserError(f"CycleMLP supports global_pool 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.img_size = to_2tuple(img_size)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dims[0], kernel_size=7, stride=4, padding=2)

        total = sum(layers)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # stochastic depth, linear
        self.stages = nn.ModuleList()
        self.feature_info: List[Dict[str, Any]] = []
        self.block_grid_sizes: List[Tuple[int, int]] = []
        grid = tuple((s + 2 * 2 - 7) // 4 + 1 for s in self.img_size)
        reduction, start = 4, 0
        for i, depth in enumerate(layers):
            if i > 0:
                grid = tuple((g + 2 - 3) // 2 + 1 for g in grid)
                reduction *= 2
            self.stages.append(CycleStage(
                embed_dims[max(i - 1, 0)], embed_dims[i], depth, mlp_ratios[i], dpr[start:start + depth],
                downsample=i > 0, norm_layer=norm_layer))
            for j in range(depth):
                self.feature_info.append(dict(
                    module=f'stages.{i}.blocks.{j}', num_chs=embed_dims[i], reduction=reduction, stage=i))
                self.block_grid_sizes.append(grid)
            start += depth

        self.norm = norm_layer(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _blocks(self) -> List[Tuple[nn.Module, nn.Module]]:
        """(transition, block) per block: the stage's downsample runs before its first block."""
        out = []
        for stage in self.stages:
            for j, block in enumerate(stage.blocks):
                out.append((stage.downsample if j == 0 else nn.Identity(), block))
        return out

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Final features (B, L, C) and the outputs of the blocks named in `indices`.

        Same contract as timm's MlpMixer.forward_intermediates, with indices counting blocks
        across all stages (an int n takes the last n blocks).
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise UserError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        blocks = self._blocks()
        if indices is None:
            take = list(range(len(blocks)))
        elif isinstance(indices, int):
            take = list(range(len(blocks) - indices, len(blocks)))
        else:
            take = [i % len(blocks) for i in indices]
        if norm and any(self.feature_info[i]['num_chs'] != self.num_features for i in take):
            raise UserError('norm=True needs every intermediate to be in the last stage')
        x = self.forward_stem(x)
        intermediates = []
        last = max(take) if (stop_early and take) else len(blocks) - 1
        for i, (transition, block) in enumerate(blocks[:last + 1]):
            x = self._run_block(block, transition(x))
            if i in take:
                y = self.norm(x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y.flatten(1, 2))
        if intermediates_only:
            return intermediates
        return self.norm(x.flatten(1, 2)), intermediates

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed.proj(x).permute(0, 2, 3, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage.downsample(x)
            for block in stage.blocks:
                x = self._run_block(block, x)
        return self.norm(x.flatten(1, 2))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: CycleMLP) -> Dict[str, torch.Tensor]:
    """Map a reference (ShoufaChen/CycleMLP) checkpoint onto this implementation.

    The reference keeps stages and downsamples in one list, `network.{0,1,...}`, and stores
    cycle FC weights as 1x1 convolution kernels.
    """
    state_dict = state_dict.get('model', state_dict)
    if not any(k.startswith('network.') for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        if k.endswith('.offset'):
            continue  # the reference's deform_conv2d offsets; ours are a derived buffer
        if k.startswith('network.'):
            _, idx, rest = k.split('.', 2)
            idx = int(idx)
            stage = (idx + 1) // 2
            k = f'stages.{stage}.downsample.{rest}' if idx % 2 else f'stages.{stage}.blocks.{rest}'
        if ('.sfc_h.' in k or '.sfc_w.' in k) and k.endswith('.weight') and v.ndim == 4:
            v = v.flatten(1)
        out[k] = v
    return out


def _create_cyclemlp(variant: str, pretrained: bool = False, **kwargs: Any) -> CycleMLP:
    if kwargs.pop('features_only', False):
        raise UserError('CycleMLP does not support features_only; use forward_intermediates')
    return build_model_with_cfg(CycleMLP, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head', **kwargs,
    }


_RELEASES = 'https://github.com/ShoufaChen/CycleMLP/releases/download/v0.1'
default_cfgs = generate_default_cfgs({
    'cyclemlp_b1.in1k': _cfg(url=f'{_RELEASES}/CycleMLP_B1.pth'),
    'cyclemlp_b2.in1k': _cfg(url=f'{_RELEASES}/CycleMLP_B2.pth'),
})


@register_model
def cyclemlp_b1(pretrained: bool = False, **kwargs: Any) -> CycleMLP:
    """CycleMLP-B1: 15.2M params, 2.1 GMACs at 224."""
    args = dict(layers=(2, 2, 4, 2), embed_dims=(64, 128, 320, 512), mlp_ratios=(4, 4, 4, 4))
    return _create_cyclemlp('cyclemlp_b1', pretrained, **dict(args, **kwargs))


@register_model
def cyclemlp_b2(pretrained: bool = False, **kwargs: Any) -> CycleMLP:
    """CycleMLP-B2: 26.8M params, 3.9 GMACs at 224."""
    args = dict(layers=(2, 3, 10, 3), embed_dims=(64, 128, 320, 512), mlp_ratios=(4, 4, 4, 4))
    return _create_cyclemlp('cyclemlp_b2', pretrained, **dict(args, **kwargs))
