"""Bit packing and the exact byte cost of each way to store a tensor (the encoder picks the cheapest)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from autocomp import huffman
from autocomp.packed.format import MAX_K


def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Packs non-negative ints < 2**width (width <= 16), MSB first, into bytes."""
    wide = np.ascontiguousarray(values, dtype=">u2").view(np.uint8).reshape(-1, 2)
    bits = np.unpackbits(wide, axis=1)[:, 16 - width :]
    return np.packbits(bits).tobytes()


def unpack_uint(buf: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`: ``count`` ints of ``width`` bits, as int64."""
    bits = np.unpackbits(np.frombuffer(buf, np.uint8), count=count * width).reshape(count, width)
    wide = np.zeros((count, 16), np.uint8)
    wide[:, 16 - width :] = bits
    return np.packbits(wide, axis=1).view(">u2").reshape(count).astype(np.int64)


def value_bytes(entries: int, bits: int, itemsize: int) -> int:
    """Bytes for ``entries`` values: bit-packed codes when ``bits`` > 0, else raw items."""
    return (entries * bits + 7) // 8 if bits else entries * itemsize


def zero_runs(nonzero: np.ndarray) -> np.ndarray:
    """Number of zeros before each nonzero since the previous one (a relative index)."""
    return np.diff(np.flatnonzero(nonzero), prepend=-1) - 1


def _relative_cost(
    runs: np.ndarray, k: int, bits: int = 0, itemsize: int = 4, *, zero_code: bool | None = None
) -> int | None:
    """Exact bytes of relative coding with k-bit indices (fillers included), without entropy coding.

    Args:
        runs: output of :func:`zero_runs`.
        k: index width in bits.
        bits: code width of a coded weight, 0 for raw values.
        itemsize: bytes per raw value (unused when ``bits`` > 0).
        zero_code: whether a zero value (a filler) can be stored; default: all but 1-bit codes.

    Returns:
        The byte count, or None when fillers are needed but no zero can be stored.
    """
    fillers = int((runs >> k).sum())  # a run r needs r // 2**k fillers
    if fillers and not (bits != 1 if zero_code is None else zero_code):
        return None
    entries = runs.size + fillers
    return (entries * k + 7) // 8 + value_bytes(entries, bits, itemsize)


def _row_extra(nbytes: int) -> int:
    """Header bytes (before zlib) a Huffman-coded section adds to its row: ``,{"hv":nbytes}``."""
    return 8 + len(str(nbytes))


class _Plan(NamedTuple):
    """One way to store a tensor's positions and values, with its exact cost."""

    position: str
    k: int  # relative index width, 0 otherwise
    index_bytes: int
    value_bytes: int
    index_code: np.ndarray | None  # Huffman code lengths of the relative index stream, if so coded
    value_code: np.ndarray | None  # Huffman code lengths of the code stream, if so coded

    @property
    def cost(self) -> int:
        """Exact bytes of the positions and values sections."""
        return self.index_bytes + self.value_bytes

    @property
    def score(self) -> int:
        """The cost plus what Huffman-coded sections add to the header row."""
        extra = sum(
            _row_extra(n)
            for n, c in ((self.index_bytes, self.index_code), (self.value_bytes, self.value_code))
            if c is not None
        )
        return self.cost + extra


def _cheaper(raw: int, hist: np.ndarray | None) -> tuple[int, np.ndarray | None]:
    """A stream's bytes and Huffman code, choosing Huffman only where it is strictly smaller.

    Huffman only where its section (table included) plus what it adds to the header row is strictly smaller
    than the fixed-width stream.
    """
    if hist is not None:
        coded = huffman.encoded_size(hist)
        if coded is not None and coded[0] + _row_extra(coded[0]) < raw:
            return coded
    return raw, None


def plans(
    nonzero: np.ndarray,
    bits: int = 0,
    itemsize: int = 4,
    *,
    zero_code: bool | None = None,
    sparse: bool = True,
    entropy: bool = False,
    hist: np.ndarray | None = None,
    zero_symbol: int = 0,
) -> list[_Plan]:
    """The cheapest layout of each position coding that can represent the tensor, in preference order.

    Args:
        nonzero: flat bool array, True where a value must be stored.
        bits: code width of a coded weight, 0 for raw values.
        itemsize: bytes per raw value (unused when ``bits`` > 0).
        zero_code: whether a zero can be stored as a value; default: all but 1-bit codes.
        sparse: whether bitmask and relative coding are allowed.
        entropy: whether streams may be Huffman-coded.
        hist: with ``entropy`` and ``bits``, the counts per code of the nonzeros' codes.
        zero_symbol: the code of a zero (dense zeros and fillers), when ``zero_code``.

    Returns:
        Dense (absent when zeros exist but cannot be stored), then bitmask and relative (at its best
        k, ties to the smallest) when ``sparse``.
    """
    zero_code = bits != 1 if zero_code is None else zero_code
    numel, nnz = nonzero.size, int(np.count_nonzero(nonzero))
    code_hist = hist if entropy and bits else None

    def values(entries: int, zeros: int) -> tuple[int, np.ndarray | None]:
        counts = None
        if code_hist is not None:
            counts = code_hist.copy()
            counts[zero_symbol] += zeros
        return _cheaper(value_bytes(entries, bits, itemsize), counts)

    plans = []
    if zero_code or nnz == numel:
        cost, code = values(numel, numel - nnz)
        plans.append(_Plan("dense", 0, 0, cost, None, code))
    if not sparse:
        return plans
    cost, code = values(nnz, 0)
    plans.append(_Plan("bitmask", 0, (numel + 7) // 8, cost, None, code))
    runs = zero_runs(nonzero)
    best = None
    for k in range(1, MAX_K + 1):
        fillers = int((runs >> k).sum())  # a run r needs r // 2**k fillers
        if fillers and not zero_code:
            continue
        entries = runs.size + fillers
        fields = None
        if entropy:
            fields = np.bincount(runs & ((1 << k) - 1), minlength=(1 << k) if fillers else 0)
            if fillers:
                fields[-1] += fillers  # the filler's field, 2**k - 1
        index_cost, index_code = _cheaper((entries * k + 7) // 8, fields)
        value_cost, value_code = values(entries, fillers)
        plan = _Plan("relative", k, index_cost, value_cost, index_code, value_code)
        if best is None or plan.score < best.score:
            best = plan
    if best is not None:
        plans.append(best)
    return plans


def _position_costs(
    nonzero: np.ndarray, bits: int = 0, itemsize: int = 4, *, zero_code: bool | None = None
) -> dict[str, tuple[int, int]]:
    """Exact bytes (head excluded, no entropy coding) of each position coding that can represent the tensor.

    Returns:
        ``{coding: (bytes, k)}`` in preference order; k is the cheapest relative index width
        (0 for the others). See :func:`plans` for the arguments.
    """
    return {p.position: (p.cost, p.k) for p in plans(nonzero, bits, itemsize, zero_code=zero_code)}


def relative_fields(runs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index fields of all relative entries, and where the real (non-filler) entries sit."""
    fill = runs >> k
    real = np.cumsum(fill + 1) - 1
    fields = np.full(int(real[-1]) + 1 if real.size else 0, (1 << k) - 1, dtype=np.int64)
    fields[real] = runs - (fill << k)
    return fields, real


def raw_rows(t: torch.Tensor) -> np.ndarray:
    """A copy of the tensor's bytes as an (numel, itemsize) uint8 array (any dtype, bit-exact)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().reshape(flat.numel(), flat.element_size()).copy()


def is_weight(t: torch.Tensor) -> bool:
    """Floating tensors of rank >= 2 are weights: they may be pruned and stored sparsely."""
    return t.is_floating_point() and t.dim() >= 2
