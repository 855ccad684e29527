"""The packed format's constants and weight codings (what a quantized or shared weight is, exactly)."""

from __future__ import annotations

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
EXTENSIONS = ("cb", "hi", "hv", "s1", "al")
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
    """How a layer's weight is quantized: ``weight == dequantize(q, scale)`` exactly.

    Attributes:
        bits: code width, 1..8. Codes q lie in [-(2**(bits-1) - 1), 2**(bits-1) - 1]; for
            ``bits == 1`` they are signs {-1, +1} and zeros exist only as pruned positions.
        scale: float32, shape (out_channels,), > 0; per output channel (dim 0 of the weight).
    """

    bits: int
    scale: torch.Tensor

    def __eq__(self, other: object) -> bool:
        # Tensors have no truth value, so the generated __eq__ would raise; compare exactly instead.
        if not isinstance(other, WeightCoding):
            return NotImplemented
        return (
            self.bits == other.bits
            and self.scale.shape == other.scale.shape
            and torch.equal(self.scale.detach().cpu(), other.scale.detach().cpu())
        )

    def __hash__(self) -> int:
        return hash((self.bits, tuple(self.scale.shape)))


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


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The one definition of a quantized weight: ``q * scale[c]`` in float32, c = dim 0.

    Args:
        q: integer codes, shape (out_channels, ...).
        scale: per-output-channel scales, shape (out_channels,).

    Returns:
        The float32 weight.
    """
    view = scale.to(device=q.device, dtype=torch.float32).view(-1, *[1] * (q.dim() - 1))
    return q.to(torch.float32) * view


def is_int(x: Any) -> bool:
    """Whether `x` is an int and not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)
