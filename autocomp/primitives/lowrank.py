"""Truncated SVD of a Linear layer into two smaller Linear layers (Denton et al. 2014)."""

from __future__ import annotations

import math

import torch
from torch import nn

from autocomp.primitives.configs import LowRank
from autocomp.primitives.registry import handler


def svd_rank(layer: nn.Linear, rank_ratio: float) -> int:
    return max(1, math.ceil(rank_ratio * min(layer.in_features, layer.out_features)))


def shrinks(layer: nn.Linear, rank: int) -> bool:
    """True if the two factors hold fewer weights than the layer."""
    return rank * (layer.in_features + layer.out_features) < layer.in_features * layer.out_features


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """W ~= B @ A with A = sqrt(S) V^T (rank x in, no bias) and B = U sqrt(S) (out x rank, with W's bias).

    The singular values are split evenly between the factors so neither has a much wider range than
    the other, which keeps both quantization-friendly.
    """
    weight = layer.weight.detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).to(torch.float32))
        second.weight.copy_((u[:, :rank] * root[None, :]).to(torch.float32))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


@handler(LowRank)
def lowrank_layer(layer: nn.Module, config: LowRank) -> nn.Module:
    if not isinstance(layer, nn.Linear):
        return layer  # the space binder rejects other types; this guards direct use
    rank = svd_rank(layer, config.rank_ratio)
    return factorize_linear(layer, rank) if shrinks(layer, rank) else layer
