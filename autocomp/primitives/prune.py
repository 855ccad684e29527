"""Unstructured pruning (Han et al. 2015): zero the lowest-scoring weights, per layer or over a pool.

Scores: magnitude |w|, or LAMP (Lee et al. 2021) |w|^2 / sum of the squares of the layer's weights at
least as large. Within one layer both rank weights identically; pooled across layers (scope global), LAMP
makes the scores comparable, so the per-layer amounts follow from one global threshold. A pattern N:M
(semi-structured sparsity) keeps the N largest of every M consecutive weights along the input dimension.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from autocomp.layers import compressible_parts, input_dim, root_problem, weight_of
from autocomp.primitives.configs import Prune
from autocomp.primitives.registry import CompressContext, model_handler, supports


def magnitude_mask(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask keeping all but the round(ratio * n) smallest |w| (ties broken by position)."""
    return _mask_from_scores(weight.detach().abs(), ratio)


def n_m_mask(weight: torch.Tensor, n: int, m: int, dim: int) -> torch.Tensor:
    """Boolean mask keeping the n largest |w| of every m consecutive weights along `dim` (ties: the first).

    A last run shorter than m (the dim not a multiple of m) keeps min(n, its length).
    """
    scores = weight.detach().abs().movedim(dim, -1)
    length = scores.shape[-1]
    pad = (-length) % m
    rows = scores.reshape(-1, length)
    if pad:  # below every |w|: a padded slot is only ever "kept" where the run has fewer than n weights
        rows = torch.nn.functional.pad(rows, (0, pad), value=-1.0)
    runs = rows.reshape(rows.shape[0], -1, m)
    order = torch.argsort(-runs, dim=-1, stable=True)[..., :n]
    keep = torch.zeros_like(runs, dtype=torch.bool).scatter_(-1, order, True)
    keep = keep.reshape(rows.shape)[:, :length].reshape(scores.shape)
    return keep.movedim(-1, dim).contiguous()


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of each weight: w_u^2 / sum over v with |w_v| >= |w_u| of w_v^2 (ties by position)."""
    squares = weight.detach().double().flatten().pow(2)
    order = torch.argsort(squares, stable=True)
    sorted_sq = squares[order]
    tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])  # sum of this and all larger
    scores = torch.empty_like(squares)
    scores[order] = torch.where(tail > 0, sorted_sq / tail, torch.zeros_like(tail))
    return scores.view_as(weight)


def _mask_from_scores(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    n_zero = int(round(ratio * scores.numel()))
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if n_zero > 0:
        keep[torch.argsort(scores.flatten(), stable=True)[:n_zero]] = False
    return keep.view_as(scores)


def _apply(layer: nn.Module, keep: torch.Tensor) -> None:
    weight = weight_of(layer)
    with torch.no_grad():  # torch.where, not a multiply: pruned weights become +0.0, never -0.0
        weight.copy_(torch.where(keep, weight, 0.0))
    layer.keep_mask = keep.clone()  # what fine-tuning must keep at zero (a quantized code may be 0 too)


def _parts(model: nn.Module, name: str) -> list[nn.Module]:
    """The compressible layers a policy's layer name stands for (two or three after a factorisation)."""
    return compressible_parts(model.get_submodule(name))


@supports(Prune)
def prune_supports(module: nn.Module, name: str, model: nn.Module, example: object = None) -> str | None:
    """Refuses only the model itself (a top-level module holding parameters of its own)."""
    return root_problem(name)


@model_handler(Prune)
def prune_model(model: nn.Module, configs: Mapping[str, Prune], context: CompressContext) -> nn.Module:
    """Zero each configured layer's lowest-scored weights: per layer, or by one threshold per global pool."""
    pools: dict[tuple[float, str], list[nn.Module]] = {}
    for name, config in configs.items():
        for layer in _parts(model, name):
            pattern = config.n_m()
            if pattern is not None:
                _apply(layer, n_m_mask(weight_of(layer), *pattern, input_dim(layer)))
            elif config.scope == "global":  # layers sharing (ratio, score) are pruned by one threshold
                pools.setdefault((config.ratio, config.score), []).append(layer)
            else:
                _apply(layer, magnitude_mask(weight_of(layer), config.ratio))
    for (ratio, score), layers in pools.items():
        per_layer = [lamp_scores(weight_of(m)) if score == "lamp" else weight_of(m).detach().abs().double()
                     for m in layers]
        keep = _mask_from_scores(torch.cat([s.flatten() for s in per_layer]), ratio)
        start = 0
        for layer, scores in zip(layers, per_layer):
            _apply(layer, keep[start : start + scores.numel()].view_as(weight_of(layer)))
            start += scores.numel()
    return model
