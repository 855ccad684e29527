"""The packed format's constants and weight codings (what a quantized or shared weight is, exactly)."""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from typing import Any

import torch

MAGIC = b"ACZ1"
VERSION = 2  # the newest version; version 1 (no row extensions) is still written and read
VERSIONS = (1, 2)
PREFIX = struct.Struct("<4sBI")  # magic, version, header length
MAX_K = 16
POSITIONS = ("dense", "bitmask", "relative")
EXTENSIONS = ("cb", "hi", "hv", "s1", "al", "g", "gx")
PLAIN_ROW = 8  # fields of a row without extensions
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    )
}

# Raw values are written as the host's bytes; the format is little-endian.
assert sys.byteorder == "little", "autocomp.packed assumes a little-endian host"


@dataclass(frozen=True, eq=False)
class WeightCoding:
    """How a layer's weight is quantized: ``weight == dequantize(q, scale, group_size, axis)`` exactly.

    Attributes:
        bits: code width, 1..8. Codes q lie in [-(2**(bits-1) - 1), 2**(bits-1) - 1]; for
            ``bits == 1`` they are signs {-1, +1} and zeros exist only as pruned positions.
        scale: float32, > 0. Without groups, shape (out_channels,): per output channel (dim 0 of the
            weight). With groups, shape (rows, ceil(row_length / group_size)): see `group_size`.
        group_size: 0 for one scale per dim-0 channel; else group-wise scales: the weight's row ``r`` is
            its slice ``r`` along ``axis`` (an output channel), flattened in memory order (the input
            dimension, a convolution's fan-in), and each run of ``group_size`` consecutive weights of a row
            has its own scale (the last run may be shorter).
        axis: the output dim whose slices are the rows: 0, or 1 for weights stored (in, out, ...)
            (`transformers`' Conv1D, ConvTranspose2d). Used only with groups.
    """

    bits: int
    scale: torch.Tensor
    group_size: int = 0
    axis: int = 0

    def scales(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Each weight's scale, as a tensor that broadcasts to `shape` (see :func:`scale_map`)."""
        return scale_map(self.scale, shape, self.group_size, self.axis)

    def __eq__(self, other: object) -> bool:
        # Tensors have no truth value, so the generated __eq__ would raise; compare exactly instead.
        if not isinstance(other, WeightCoding):
            return NotImplemented
        return (
            self.bits == other.bits
            and (self.group_size, self.axis) == (other.group_size, other.axis)
            and self.scale.shape == other.scale.shape
            and torch.equal(self.scale.detach().cpu(), other.scale.detach().cpu())
        )

    def __hash__(self) -> int:
        return hash((self.bits, tuple(self.scale.shape), self.group_size, self.axis))


@dataclass(frozen=True, eq=False)
class CodebookCoding:
    """How a layer's weight is shared: every nonzero weight equals ``codebook[i]`` exactly.

    Zeros are pruned positions (stored by the position coding, not as indices); a 0.0 centroid is
    allowed but not needed.

    Attributes:
        bits: index width, 1..8.
        codebook: float32, shape (m,) with 1 <= m <= 2**bits, finite; duplicates are allowed (a
            weight is stored as the first index that matches it).
    """

    bits: int
    codebook: torch.Tensor

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CodebookCoding):
            return NotImplemented
        return (
            self.bits == other.bits
            and self.codebook.shape == other.codebook.shape
            and torch.equal(self.codebook.detach().cpu(), other.codebook.detach().cpu())
        )

    def __hash__(self) -> int:
        return hash((self.bits, tuple(self.codebook.shape)))


Coding = WeightCoding | CodebookCoding


def group_count(shape: tuple[int, ...] | torch.Size, group_size: int, axis: int = 0) -> tuple[int, int]:
    """(rows, groups per row) of a weight of `shape` quantized in groups of `group_size` (see WeightCoding)."""
    rows = shape[axis]
    length = math.prod(shape[:axis]) * math.prod(shape[axis + 1 :])
    return rows, -(-length // group_size)


def scale_map(scale: torch.Tensor, shape: tuple[int, ...] | torch.Size, group_size: int = 0,
              axis: int = 0) -> torch.Tensor:
    """Each weight's scale, broadcastable to `shape`, in float32.

    Args:
        scale: per-channel scales (out_channels,) when `group_size` is 0, else (rows, groups per row).
        shape: the weight's shape.
        group_size: 0 (per dim-0 channel) or the group length along each row (see WeightCoding).
        axis: the output dim whose slices are the rows (groups only).

    Returns:
        Per channel, a view of shape (out_channels, 1, ...); with groups, a tensor of `shape` itself.
    """
    scale = scale.to(torch.float32)
    if not group_size:
        return scale.view(-1, *[1] * (len(shape) - 1))
    if not math.prod(shape):
        return scale.new_zeros(shape)
    rows_first = (shape[axis], *shape[:axis], *shape[axis + 1 :])  # the weight with its rows first
    length = math.prod(rows_first[1:])
    full = scale.reshape(shape[axis], -1).repeat_interleave(group_size, dim=1)[:, :length]
    return full.reshape(rows_first).movedim(0, axis)


def dequantize(q: torch.Tensor, scale: torch.Tensor, group_size: int = 0, axis: int = 0) -> torch.Tensor:
    """The one definition of a quantized weight: ``q * scale`` of its channel or group, in float32.

    Args:
        q: integer codes, shape (out_channels, ...).
        scale: per-output-channel scales, shape (out_channels,); with `group_size`, group scales of shape
            (rows, groups per row) (see WeightCoding).
        group_size: 0 for per-channel scales, else the length of a group.
        axis: the output dim whose slices hold the groups (0, or 1 for (in, out, ...) weights).

    Returns:
        The float32 weight.
    """
    view = scale_map(scale.to(device=q.device), q.shape, group_size, axis)
    return q.to(torch.float32) * view


def is_int(x: Any) -> bool:
    """Whether `x` is an int and not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)
