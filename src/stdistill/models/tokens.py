"""Spatial and channel distillation tokens (docs/method.md section 2).

For features Z of P positions x N channels taken after a backbone block:

    T_S(k) = MLP_S(k)(LN([Z ; T_S(k-1)])) + T_S(k-1)    # one more position, (P+1) x N
    T_C(k) = MLP_C(k)(LN([Z , T_C(k-1)])) + T_C(k-1)    # one more channel,  P x (N+1)

MLP_S mixes the P+1 positions of each channel down to one value per channel; MLP_C mixes
the N+1 channels of each position down to one value per position. The layers read Z and
never write back: the backbone's next block sees exactly what it would without STD.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from timm.layers import Mlp, trunc_normal_

from .backbones import TokenDims
from ..utils.errors import UserError

__all__ = ['SpatialTokenLayer', 'ChannelTokenLayer', 'TokenPair', 'TokenPairOutput', 'TOKEN_KINDS']

TOKEN_KINDS = ('both', 'spatial', 'channel')


def _token_mlp(in_features: int, hidden: Optional[int]) -> nn.Module:
    """in -> hidden -> 1 with GELU, or a single in -> 1 linear map when hidden is None."""
    return Mlp(in_features, hidden, out_features=1) if hidden else nn.Linear(in_features, 1)


class SpatialTokenLayer(nn.Module):
    """One spatial token layer: the token is an extra position, mixed along positions."""

    def __init__(self, num_positions: int, num_channels: int, hidden: Optional[int] = None,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(num_channels, eps=eps)  # over channels, as the backbone normalises
        self.mlp = _token_mlp(num_positions + 1, hidden)

    def forward(self, z: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """z: (B, P, N), token: (B, N) -> new token (B, N)."""
        x = self.norm(torch.cat([z, token.unsqueeze(1)], dim=1))  # (B, P+1, N)
        return self.mlp(x.transpose(1, 2)).squeeze(-1) + token


class ChannelTokenLayer(nn.Module):
    """One channel token layer: the token is an extra channel, mixed along channels."""

    def __init__(self, num_positions: int, num_channels: int, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(num_channels + 1, eps=eps)
        self.mlp = _token_mlp(num_channels + 1, hidden)

    def forward(self, z: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """z: (B, P, N), token: (B, P) -> new token (B, P)."""
        x = self.norm(torch.cat([z, token.unsqueeze(-1)], dim=-1))  # (B, P, N+1)
        return self.mlp(x).squeeze(-1) + token


class TokenPairOutput(NamedTuple):
    logits: torch.Tensor
    spatial: Optional[torch.Tensor]  # (B, N), None for a channel-only pair
    channel: Optional[torch.Tensor]  # (B, P), None for a spatial-only pair


class TokenPair(nn.Module):
    """The tokens of one teacher: K stacked token layers and a head on [T_S, T_C].

    `tokens` selects both tokens (STD), or only one of them (the paper's ablation).
    """

    def __init__(self, dims: TokenDims, num_classes: int, depth: int = 1, tokens: str = 'both') -> None:
        super().__init__()
        if tokens not in TOKEN_KINDS:
            raise UserError(f'tokens must be one of {TOKEN_KINDS}, got {tokens!r}')
        if depth < 1:
            raise UserError(f'token depth must be >= 1, got {depth}')
        self.dims, self.tokens = dims, tokens
        P, N = dims.num_positions, dims.num_channels
        head_in = 0
        if tokens in ('both', 'spatial'):
            self.spatial_token = nn.Parameter(trunc_normal_(torch.zeros(1, N), std=.02))
            self.spatial_layers = nn.ModuleList(
                SpatialTokenLayer(P, N, dims.spatial_hidden) for _ in range(depth))
            head_in += N
        if tokens in ('both', 'channel'):
            self.channel_token = nn.Parameter(trunc_normal_(torch.zeros(1, P), std=.02))
            self.channel_layers = nn.ModuleList(
                ChannelTokenLayer(P, N, dims.channel_hidden) for _ in range(depth))
            head_in += P
        self.head_in = head_in
        self.reset_head(num_classes)

    def reset_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.head_in, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)

    def forward(self, z: torch.Tensor) -> TokenPairOutput:
        """z: features (B, P, N) after the attachment block."""
        spatial = channel = None
        parts = []
        if self.tokens in ('both', 'spatial'):
            # repeat, not expand: an expanded view of a parameter under no_grad claims
            # requires_grad without a grad_fn, which breaks torch's module hooks (flop counting).
            spatial = self.spatial_token.repeat(z.shape[0], 1)
            for layer in self.spatial_layers:
                spatial = layer(z, spatial)
            parts.append(spatial)
        if self.tokens in ('both', 'channel'):
            channel = self.channel_token.repeat(z.shape[0], 1)
            for layer in self.channel_layers:
                channel = layer(z, channel)
            parts.append(channel)
        return TokenPairOutput(self.head(torch.cat(parts, dim=-1)), spatial, channel)
