"""Unstructured magnitude pruning (Han et al. 2015): zero the smallest-magnitude weights of a layer."""

from __future__ import annotations

import torch
from torch import nn

from autocomp.primitives.configs import Prune
from autocomp.primitives.registry import handler


def magnitude_mask(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask keeping all but the round(ratio * n) smallest |w| (ties broken by position)."""
    n_zero = int(round(ratio * weight.numel()))
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    if n_zero > 0:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        keep[order[:n_zero]] = False
    return keep.view_as(weight)


@handler(Prune)
def prune_layer(layer: nn.Module, config: Prune) -> nn.Module:
    with torch.no_grad():  # torch.where, not a multiply: pruned weights become +0.0, never -0.0
        layer.weight.copy_(torch.where(magnitude_mask(layer.weight, config.ratio), layer.weight, 0.0))
    return layer
