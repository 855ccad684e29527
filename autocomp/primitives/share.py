"""Weight sharing (Deep Compression, Han et al. 2016): k-means of a layer's nonzero weights.

The 2**bits centroids start evenly spaced between the smallest and largest nonzero weight (the paper's
linear initialisation, which keeps the rare large weights represented), then Lloyd iterations run until
no assignment changes (at most 50). The weights become ``codebook[index]`` and the layer records a
:class:`~autocomp.packed.CodebookCoding`, so the packed format stores the codebook and b-bit indices.
Zeros (pruned positions) stay exactly zero and are not clustered; a nonzero weight never becomes zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from autocomp.layers import (
    compressible_parts,
    layer_kind,
    root_problem,
    stored_weight_problem,
    weight_name,
    weight_of,
)
from autocomp.packed import CodebookCoding
from autocomp.primitives.configs import Share
from autocomp.primitives.registry import CompressContext, handler, model_handler, supports

__all__ = ["kmeans_1d", "share_layer", "share_model", "share_weight", "tie_layers"]

MAX_ITERATIONS = 50


def kmeans_1d(values: np.ndarray, k: int, max_iterations: int = MAX_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """One-dimensional k-means with linear initialisation.

    With at most ``k`` distinct values the result is exact: the centroids are the distinct values
    (sorted). Otherwise k centroids start evenly spaced over [min, max] and Lloyd iterations run until
    the assignment stops changing. In 1-D each cluster is a contiguous run of the sorted values, cut at
    the midpoints between neighbouring centroids, so an iteration is a ``searchsorted`` of k - 1
    midpoints plus prefix sums: O(k log n) after one O(n log n) sort. An empty cluster keeps its
    centroid. Centroids stay sorted.

    A centroid that comes out exactly 0.0 while its cluster has members is replaced by the member of
    smallest magnitude, so clustering nonzero values never yields a zero (an empty cluster may keep a
    0.0 centroid: nothing is assigned to it).

    Args:
        values: 1-D array of finite numbers.
        k: number of centroids, >= 1.
        max_iterations: cap on Lloyd iterations.

    Returns:
        (centroids with the dtype of ``values`` (float64 for non-float input), shape (min(k, distinct),)
        when exact else (k,); assignment: int64 index of each value's centroid, shape of ``values``).
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"kmeans_1d takes a 1-D array, got shape {values.shape}")
    if k < 1 or max_iterations < 1:
        raise ValueError(f"kmeans_1d needs k >= 1 and max_iterations >= 1, got {k} and {max_iterations}")
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.dtype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("kmeans_1d takes finite values")
    if values.size == 0:
        return np.empty(0, dtype), np.empty(0, np.int64)
    order = np.argsort(values)
    ordered = values[order].astype(np.float64)
    first = np.concatenate([[True], np.diff(ordered) != 0])  # where each distinct value begins
    assignment = np.empty(values.size, np.int64)
    if np.count_nonzero(first) <= k:  # at most k distinct values: they are the centroids, exactly
        assignment[order] = np.cumsum(first) - 1
        return ordered[first].astype(dtype), assignment

    prefix = np.concatenate([[0.0], np.cumsum(ordered)])
    centroids = np.linspace(ordered[0], ordered[-1], k)
    cuts = None
    for _ in range(max_iterations):
        # cluster j holds ordered[bounds[j]:bounds[j + 1]]; a value on a midpoint goes to the upper one
        new_cuts = np.searchsorted(ordered, (centroids[:-1] + centroids[1:]) / 2)
        if cuts is not None and np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        bounds = np.concatenate([[0], cuts, [ordered.size]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)

    bounds = np.concatenate([[0], cuts, [ordered.size]])
    counts = np.diff(bounds)
    result = centroids.astype(dtype)
    for j in np.flatnonzero((result == 0) & (counts > 0)):
        members = ordered[bounds[j] : bounds[j + 1]]
        result[j] = members[np.argmin(np.abs(members))]
    assignment[order] = np.repeat(np.arange(k), counts)
    return result, assignment


def share_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, CodebookCoding]:
    """Clusters the nonzero weights into at most 2**bits centroids.

    Args:
        weight: float32 weight (any shape); zeros are pruned positions.
        bits: 1..8.

    Returns:
        (the shared float32 weight, equal to ``codebook[index]`` at every nonzero and 0 elsewhere; its
        coding). The coding's ``bits`` is the smallest index width for the codebook: ``bits`` unless
        the weight had fewer distinct nonzero values than 2**bits (then the codebook is exactly those
        values). An all-zero weight gets the codebook [0.0].
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"weight sharing takes 1..8 bits, got {bits}")
    flat = weight.detach().to("cpu", torch.float32).reshape(-1).numpy()
    nonzero = flat != 0
    if not nonzero.any():
        return weight.detach().to(torch.float32).clone(), CodebookCoding(bits=1, codebook=torch.zeros(1))
    centroids, assignment = kmeans_1d(flat[nonzero], 2**bits)
    shared = flat.copy()
    shared[nonzero] = centroids[assignment]
    width = max(1, int(centroids.size - 1).bit_length())
    coding = CodebookCoding(bits=width, codebook=torch.from_numpy(centroids.astype(np.float32)))
    return torch.from_numpy(shared).reshape(weight.shape), coding


@supports(Share)
def share_supports(module: nn.Module, name: str, model: nn.Module, example: object = None) -> str | None:
    """Refuses layers whose weight the packed file could not hold as a codebook (see `stored_weight_problem`)."""
    return root_problem(name) or stored_weight_problem(module)


@handler(Share)
def share_layer(layer: nn.Module, config: Share) -> nn.Module:
    """Replaces the layer's weight by its k-means shared version and sets ``layer.weight_coding``."""
    weight = weight_of(layer)
    shared, coding = share_weight(weight, config.bits)
    with torch.no_grad():
        weight.copy_(shared)
    layer.weight_coding = coding
    return layer


def tie_layers(layers: list[nn.Module]) -> None:
    """Make `layers` (same weight shape) use one weight Parameter: the mean of their weights.

    A position pruned in every layer stays zero; the biases stay each layer's own.
    """
    with torch.no_grad():
        mean = torch.stack([weight_of(m).detach() for m in layers]).mean(0)
    tied = nn.Parameter(mean, requires_grad=weight_of(layers[0]).requires_grad)
    for layer in layers:
        setattr(layer, weight_name(layer), tied)


@model_handler(Share)
def share_model(model: nn.Module, configs: Mapping[str, Share], context: CompressContext) -> nn.Module:
    """Ties the layers that ask for it (grouped by weight shape), then clusters each weight once."""
    groups: dict[tuple, list[nn.Module]] = {}
    for name, config in configs.items():
        layer = model.get_submodule(name)
        if config.tie and layer_kind(layer) is not None:
            groups.setdefault((type(layer), tuple(weight_of(layer).shape)), []).append(layer)
    for layers in groups.values():
        if len(layers) > 1:
            tie_layers(layers)
    done: dict[int, nn.Module] = {}  # a tied weight is clustered once (first config in name order) ...
    for name, config in configs.items():
        if config.bits >= 32:
            continue
        for layer in compressible_parts(model.get_submodule(name)):
            if id(weight_of(layer)) not in done:
                share_layer(layer, config)
                done[id(weight_of(layer))] = layer
    for layer in model.modules():  # ... and every layer holding that weight gets its coding
        if layer_kind(layer) is not None and id(weight_of(layer)) in done:
            layer.weight_coding = done[id(weight_of(layer))].weight_coding
    return model
