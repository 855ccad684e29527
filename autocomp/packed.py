"""Packed (.acz) format: the honest, compact artifact whose exact length is a model's ``size_bytes``.

Layout (integers little-endian)::

    b"ACZ1" | u8 version | u32 header length | zlib(JSON header, level 9) | tensor payloads

The header is compact JSON ``{"meta": ..., "crc": crc32 of the payloads, "tensors": [row, ...]}``
with one row per ``state_dict`` entry, in ``state_dict`` order::

    [name, dtype, shape, position coding, k, entries, bits, payload bytes(, extensions)]

``extensions`` (version 2 only) is a non-empty dict: ``"cb"``: the weight is codebook-coded with that
many fp32 centroids; ``"s1"``: every output channel has the same scale (per-tensor quantization), stored
once; ``"al"``: the tensor is the very tensor of row ``al - 1`` (cross-layer tying), stored there
only; ``"hi"`` / ``"hv"``: the relative index stream / the code stream is Huffman-coded
and its section has that many bytes. :func:`pack` writes version 1 when no row needs extensions (such
files are byte-identical to what older autocomp wrote and reads), else version 2; both are read.

A tensor's payload is ``head | positions | values``, each section padded to a whole byte; their lengths
follow from the row, and the row's ``payload bytes`` is checked against them on read.

* head: for a weight with a :class:`WeightCoding`, its fp32 scales (one per output channel); for a
  :class:`CodebookCoding`, its fp32 codebook (up to ``2**bits`` centroids); else empty.
* positions: one of three codings, chosen per tensor by exact byte cost (ties go to the first):

  - ``dense``: none; every element's value is stored, zeros included.
  - ``bitmask``: 1 bit per element (``np.packbits``), then only the nonzeros' values.
  - ``relative``: Deep Compression's relative indices. Per entry, the number of zeros since the
    previous entry, in ``k`` bits (k = 1..16, the cheapest is taken). A run longer than 2**k - 1
    is split by filler entries (run 2**k - 1, value zero) that count in ``entries`` and in the
    cost.

  A zero can only be stored (dense zeros, fillers) where the value coding has a code for it: 1-bit
  codes have none, and a codebook has one only if it holds a 0.0 centroid. Without one, dense is ruled
  out when there are zeros, and relative widths that need fillers are ruled out. Only coded weights
  and floating tensors of rank >= 2 may use bitmask/relative; biases and buffers are always dense.
* values: for a WeightCoding, b-bit codes bit-packed MSB first in offset binary
  ``q + 2**(b-1) - 1`` (for b = 1 the sign bit, 1 for +1); for a CodebookCoding, b-bit codebook
  indices (a zero uses the first 0.0 centroid); otherwise the raw little-endian bytes of the dtype.

Entropy coding (``pack(..., entropy=True)``, Deep Compression's "+H"): each tensor's code stream (codes
or codebook indices) and relative index stream is stored as a canonical Huffman section (code table
included, see :mod:`autocomp.huffman`) instead, when that plus the row's extension text is strictly
smaller. The position coding and k are then chosen by that cost. Raw values and bitmasks are never
Huffman-coded. If the whole file still comes out larger (the zlib'd header is only estimated per
stream), pack returns the file without Huffman coding, so entropy=True is never larger.

Round trips are bit-exact, with one exception: a zero in a weight (floating, rank >= 2, or coded) is a
pruned position and comes back as +0.0 even if it was -0.0 (``w * mask`` makes those).

``entries`` is the number of stored values: every element (dense), the nonzeros (bitmask), or the
nonzeros plus fillers (relative). Truncated or corrupt data raises :class:`PackedFormatError`.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from autocomp import huffman
from autocomp.errors import PackedFormatError

__all__ = [
    "MAGIC",
    "VERSION",
    "CodebookCoding",
    "PackedFormatError",
    "WeightCoding",
    "dequantize",
    "load_into",
    "pack",
    "packed_size",
    "read_meta",
    "tensor_report",
    "unpack",
]

MAGIC = b"ACZ1"
VERSION = 2  # the newest version; version 1 (no row extensions) is still written and read
_VERSIONS = (1, 2)
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_MAX_K = 16
_POSITIONS = ("dense", "bitmask", "relative")
_EXTENSIONS = ("cb", "hi", "hv", "s1", "al")
_PLAIN_ROW = 8  # fields of a row without extensions
_DTYPES = {
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


# ----------------------------------------------------------------------------------------------
# Bit packing and cost model


def _pack_uint(values: np.ndarray, width: int) -> bytes:
    """Packs non-negative ints < 2**width (width <= 16), MSB first, into bytes."""
    wide = np.ascontiguousarray(values, dtype=">u2").view(np.uint8).reshape(-1, 2)
    bits = np.unpackbits(wide, axis=1)[:, 16 - width :]
    return np.packbits(bits).tobytes()


def _unpack_uint(buf: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`_pack_uint`: ``count`` ints of ``width`` bits, as int64."""
    bits = np.unpackbits(np.frombuffer(buf, np.uint8), count=count * width).reshape(count, width)
    wide = np.zeros((count, 16), np.uint8)
    wide[:, 16 - width :] = bits
    return np.packbits(wide, axis=1).view(">u2").reshape(count).astype(np.int64)


def _value_bytes(entries: int, bits: int, itemsize: int) -> int:
    """Bytes for ``entries`` values: bit-packed codes when ``bits`` > 0, else raw items."""
    return (entries * bits + 7) // 8 if bits else entries * itemsize


def _zero_runs(nonzero: np.ndarray) -> np.ndarray:
    """Number of zeros before each nonzero since the previous one (a relative index)."""
    return np.diff(np.flatnonzero(nonzero), prepend=-1) - 1


def _relative_cost(
    runs: np.ndarray, k: int, bits: int = 0, itemsize: int = 4, *, zero_code: bool | None = None
) -> int | None:
    """Exact bytes of relative coding with k-bit indices (fillers included), without entropy coding.

    Args:
        runs: output of :func:`_zero_runs`.
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
    return (entries * k + 7) // 8 + _value_bytes(entries, bits, itemsize)


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
    """A stream's bytes and Huffman code: Huffman only where its section (table included) plus what it
    adds to the header row is strictly smaller than the fixed-width stream."""
    if hist is not None:
        coded = huffman.encoded_size(hist)
        if coded is not None and coded[0] + _row_extra(coded[0]) < raw:
            return coded
    return raw, None


def _plans(
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
        return _cheaper(_value_bytes(entries, bits, itemsize), counts)

    plans = []
    if zero_code or nnz == numel:
        cost, code = values(numel, numel - nnz)
        plans.append(_Plan("dense", 0, 0, cost, None, code))
    if not sparse:
        return plans
    cost, code = values(nnz, 0)
    plans.append(_Plan("bitmask", 0, (numel + 7) // 8, cost, None, code))
    runs = _zero_runs(nonzero)
    best = None
    for k in range(1, _MAX_K + 1):
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
        (0 for the others). See :func:`_plans` for the arguments.
    """
    return {p.position: (p.cost, p.k) for p in _plans(nonzero, bits, itemsize, zero_code=zero_code)}


def _relative_fields(runs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index fields of all relative entries, and where the real (non-filler) entries sit."""
    fill = runs >> k
    real = np.cumsum(fill + 1) - 1
    fields = np.full(int(real[-1]) + 1 if real.size else 0, (1 << k) - 1, dtype=np.int64)
    fields[real] = runs - (fill << k)
    return fields, real


def _raw_rows(t: torch.Tensor) -> np.ndarray:
    """A copy of the tensor's bytes as an (numel, itemsize) uint8 array (any dtype, bit-exact)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().reshape(flat.numel(), flat.element_size()).copy()


def _is_weight(t: torch.Tensor) -> bool:
    """Floating tensors of rank >= 2 are weights: they may be pruned and stored sparsely."""
    return t.is_floating_point() and t.dim() >= 2


# ----------------------------------------------------------------------------------------------
# Encoding


def _check_bits(name: str, weight: torch.Tensor, bits: Any) -> None:
    if not _is_int(bits) or not 1 <= bits <= 8:
        raise PackedFormatError(f"'{name}': weight_coding.bits must be an int in 1..8, got {bits!r}")
    if weight.dtype != torch.float32 or weight.dim() < 1:
        raise PackedFormatError(f"'{name}': a coded weight must be float32 with rank >= 1")


def _codes(name: str, weight: torch.Tensor, coding: WeightCoding) -> np.ndarray:
    """Recovers and verifies the integer codes of a quantized weight (flat int64)."""
    bits, scale = coding.bits, coding.scale
    _check_bits(name, weight, bits)
    if not isinstance(scale, torch.Tensor) or tuple(scale.shape) != (weight.shape[0],):
        raise PackedFormatError(f"'{name}': weight_coding.scale must have shape ({weight.shape[0]},)")
    scale = scale.detach().cpu()
    if scale.dtype != torch.float32 or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
        raise PackedFormatError(f"'{name}': weight_coding.scale must be finite positive float32")
    w = weight.detach().cpu()
    q = torch.round(w / scale.view(-1, *[1] * (w.dim() - 1)))
    top = max(2 ** (bits - 1) - 1, 1)
    if not bool((q.abs() <= top).all()) or not torch.equal(dequantize(q, scale), w):
        raise PackedFormatError(f"'{name}': weights are not {bits}-bit codes times weight_coding.scale")
    return q.to(torch.int64).reshape(-1).numpy()


def _indices(name: str, weight: torch.Tensor, coding: CodebookCoding) -> tuple[np.ndarray, int | None]:
    """Recovers and verifies the codebook indices of a shared weight.

    Returns:
        (flat int64 indices, the index of the first 0.0 centroid or None). A zero weight gets that
        index (0 if there is none; it is then never stored).
    """
    bits, book = coding.bits, coding.codebook
    _check_bits(name, weight, bits)
    if (
        not isinstance(book, torch.Tensor)
        or book.dtype != torch.float32
        or book.dim() != 1
        or not 1 <= book.numel() <= 2**bits
    ):
        raise PackedFormatError(f"'{name}': weight_coding.codebook must be float32 of shape (1..{2**bits},)")
    book = book.detach().cpu().numpy()
    if not np.isfinite(book).all():
        raise PackedFormatError(f"'{name}': weight_coding.codebook must be finite")
    w = weight.detach().cpu().reshape(-1).numpy()
    order = np.argsort(book, kind="stable")  # equal centroids: the first index wins
    idx = order[np.minimum(np.searchsorted(book[order], w), book.size - 1)].astype(np.int64)
    nonzero = w != 0
    if not np.array_equal(book[idx[nonzero]], w[nonzero]):
        raise PackedFormatError(f"'{name}': weights are not values of weight_coding.codebook")
    zeros = np.flatnonzero(book == 0)
    zero_index = int(zeros[0]) if zeros.size else None
    idx[~nonzero] = zero_index or 0
    return idx, zero_index


def _encode(name: str, tensor: torch.Tensor, coding: Coding | None, entropy: bool) -> tuple[list, bytes]:
    """Encodes one tensor at its cheapest layout; returns (header row, payload)."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise PackedFormatError(f"'{name}': unsupported dtype {tensor.dtype}")
    itemsize = tensor.element_size()
    extensions: dict[str, int] = {}
    if isinstance(coding, WeightCoding):
        bits = coding.bits
        q = _codes(name, tensor, coding)
        nonzero = q != 0
        # Offset binary; for 1 bit the sign, which has no zero code.
        values = (q > 0).astype(np.int64) if bits == 1 else q + (2 ** (bits - 1) - 1)
        zero_symbol = None if bits == 1 else 2 ** (bits - 1) - 1
        scales = coding.scale.detach().cpu().numpy().astype("<f4")
        if len(scales) > 1 and (scales == scales[0]).all():  # per-tensor: one scale, not one per channel
            scales = scales[:1]
            extensions["s1"] = 1
        head = scales.tobytes()
    elif isinstance(coding, CodebookCoding):
        bits = coding.bits
        values, zero_symbol = _indices(name, tensor, coding)
        nonzero = (tensor.detach().cpu() != 0).reshape(-1).numpy()
        head = coding.codebook.detach().cpu().numpy().astype("<f4").tobytes()
        extensions["cb"] = coding.codebook.numel()
    else:
        bits, values, zero_symbol, head = 0, _raw_rows(tensor), 0, b""
        nonzero = np.ones(len(values), dtype=bool)
        if _is_weight(tensor):
            # A pruned weight is zero whatever its sign (w * mask leaves -0.0): store it as +0.0.
            nonzero = (tensor.detach().cpu() != 0).reshape(-1).numpy()
            values[~nonzero] = 0

    hist = np.bincount(values[nonzero], minlength=2**bits) if entropy and bits else None
    plans = _plans(
        nonzero,
        bits,
        itemsize,
        zero_code=zero_symbol is not None,
        sparse=coding is not None or _is_weight(tensor),
        entropy=entropy,
        hist=hist,
        zero_symbol=zero_symbol or 0,
    )
    plan = min(plans, key=lambda p: p.score)

    if plan.position == "dense":
        index, stored = b"", values
    elif plan.position == "bitmask":
        index, stored = np.packbits(nonzero).tobytes(), values[nonzero]
    else:
        fields, real = _relative_fields(_zero_runs(nonzero), plan.k)
        if plan.index_code is None:
            index = _pack_uint(fields, plan.k)
        else:
            index = huffman.encode(fields, plan.index_code)
            extensions["hi"] = len(index)
        stored = np.full((fields.size, *values.shape[1:]), zero_symbol or 0, dtype=values.dtype)
        stored[real] = values[nonzero]
    if plan.value_code is not None:
        value_bytes = huffman.encode(stored, plan.value_code)
        extensions["hv"] = len(value_bytes)
    else:
        value_bytes = _pack_uint(stored, bits) if bits else stored.tobytes()
    assert len(index) + len(value_bytes) == plan.cost, "cost model and encoder disagree"

    payload = head + index + value_bytes
    row = [name, dtype, list(tensor.shape), plan.position, plan.k, len(stored), bits, len(payload)]
    return row + ([extensions] if extensions else []), payload


def _codings_by_key(model: nn.Module) -> dict[str, Coding]:
    """Maps state_dict weight keys to the WeightCoding or CodebookCoding of their module."""
    codings = {}
    for name, module in model.named_modules(remove_duplicate=False):
        coding = getattr(module, "weight_coding", None)
        if coding is None:
            continue
        if not isinstance(coding, (WeightCoding, CodebookCoding)):
            raise PackedFormatError(
                f"'{name}': weight_coding is a {type(coding).__name__}, not WeightCoding or CodebookCoding"
            )
        codings[f"{name}.weight" if name else "weight"] = coding
    return codings


def pack(model: nn.Module, *, meta: dict | None = None, entropy: bool = False) -> bytes:
    """Encodes every ``state_dict`` entry of ``model`` into the packed format.

    Args:
        model: the (possibly pruned, shared or quantized) fp32 model; quantized and shared layers
            carry a ``weight_coding`` attribute (:class:`WeightCoding` or :class:`CodebookCoding`).
        meta: small JSON-able dict stored in the header (e.g. zoo name and policy). JSON turns
            tuples into lists and dict keys into strings.
        entropy: Huffman-code each tensor's code stream and relative index stream where that is
            smaller, counting its code table and header row. Should the whole file still come out
            larger (the header is zlib-compressed, so its cost is only estimated per stream), the
            file without Huffman coding is returned: never larger than ``entropy=False``.

    Returns:
        The packed bytes; their length is the model's honest size.

    Raises:
        PackedFormatError: a weight_coding does not match its weights, a dtype is unsupported, or
            ``meta`` is not JSON-able.
    """
    data, coded = _pack(model, meta, entropy)
    if coded:
        plain, _ = _pack(model, meta, False)
        return plain if len(plain) <= len(data) else data
    return data


def _pack(model: nn.Module, meta: dict | None, entropy: bool) -> tuple[bytes, bool]:
    """The packed bytes, and whether any stream is Huffman-coded."""
    state = model.state_dict()
    codings = _codings_by_key(model)
    for key in codings:
        if key not in state:
            raise PackedFormatError(f"'{key}': module has a weight_coding but no weight in the state_dict")
    rows, payloads = [], []
    first: dict[tuple, int] = {}  # a tensor tied across layers is stored once; later uses alias it
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise PackedFormatError(f"'{name}': state_dict entry is not a tensor")
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tuple(tensor.stride()))
        if tensor.numel() and key in first and codings.get(name) == codings.get(rows[first[key]][0]):
            dtype = str(tensor.dtype).removeprefix("torch.")
            row, payload = [name, dtype, list(tensor.shape), "dense", 0, 0, 0, 0, {"al": first[key] + 1}], b""
        else:
            first.setdefault(key, len(rows))
            row, payload = _encode(name, tensor, codings.get(name), entropy)
        rows.append(row)
        payloads.append(payload)
    body = b"".join(payloads)
    try:
        text = json.dumps({"meta": meta or {}, "crc": zlib.crc32(body), "tensors": rows}, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise PackedFormatError(f"meta is not JSON-serialisable: {err}") from err
    header = zlib.compress(text.encode(), 9)
    extensions = [row[_PLAIN_ROW] for row in rows if len(row) > _PLAIN_ROW]
    coded = any("hi" in ext or "hv" in ext for ext in extensions)
    return _PREFIX.pack(MAGIC, 2 if extensions else 1, len(header)) + header + body, coded


def packed_size(model: nn.Module, *, meta: dict | None = None, entropy: bool = False) -> int:
    """Returns ``len(pack(model, meta=meta, entropy=entropy))``: the model's size in bytes."""
    return len(pack(model, meta=meta, entropy=entropy))


# ----------------------------------------------------------------------------------------------
# Decoding


class _Row(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    position: str
    k: int
    entries: int
    bits: int
    nbytes: int
    codebook: int = 0  # centroids of a CodebookCoding, 0 for none
    index_huffman: int | None = None  # bytes of the Huffman-coded relative index section
    value_huffman: int | None = None  # bytes of the Huffman-coded code section
    one_scale: bool = False  # one scale for every channel (per-tensor quantization)
    alias: int = 0  # 1 + the index of the row holding this very tensor (cross-layer tying), 0 for none

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def coding(self) -> str:
        return "codebook" if self.codebook else "quantized" if self.bits else "raw"

    def raw_sections(self) -> tuple[int, int, int]:
        """Byte lengths of the (head, positions, values) sections, as if no stream were Huffman-coded."""
        if self.alias:
            return 0, 0, 0
        if self.codebook:
            head = 4 * self.codebook
        else:
            head = 4 * (1 if self.one_scale else self.shape[0]) if self.bits else 0
        index = {"dense": 0, "bitmask": (self.numel + 7) // 8, "relative": (self.entries * self.k + 7) // 8}
        values = _value_bytes(self.entries, self.bits, _DTYPES[self.dtype].itemsize)
        return head, index[self.position], values

    def sections(self) -> tuple[int, int, int]:
        """Expected byte lengths of the (head, positions, values) sections."""
        head, index, values = self.raw_sections()
        index = index if self.index_huffman is None else self.index_huffman
        values = values if self.value_huffman is None else self.value_huffman
        return head, index, values


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_row(row: Any, version: int) -> _Row:
    """Validates one header row; raises PackedFormatError naming what is wrong."""
    bad = PackedFormatError(f"corrupt header: bad tensor row {row!r:.80}")
    lengths = (_PLAIN_ROW, _PLAIN_ROW + 1) if version >= 2 else (_PLAIN_ROW,)
    if not isinstance(row, list) or len(row) not in lengths:
        raise bad
    name, dtype, shape, position, k, entries, bits, nbytes = row[:_PLAIN_ROW]
    ext = row[_PLAIN_ROW] if len(row) > _PLAIN_ROW else {}
    if len(row) > _PLAIN_ROW and (
        not isinstance(ext, dict)
        or not ext
        or not set(ext) <= set(_EXTENSIONS)
        or not all(_is_int(v) and v > 0 for v in ext.values())
    ):
        raise bad
    codebook, index_huffman, value_huffman = ext.get("cb", 0), ext.get("hi"), ext.get("hv")
    ok = (
        isinstance(name, str)
        and dtype in _DTYPES
        and isinstance(shape, list)
        and all(_is_int(d) and d >= 0 for d in shape)
        and position in _POSITIONS
        and _is_int(k)
        and (1 <= k <= _MAX_K if position == "relative" else k == 0)
        and _is_int(entries)
        and entries >= 0
        and _is_int(bits)
        and 0 <= bits <= 8
        and (bits == 0 or (dtype == "float32" and len(shape) >= 1))
        and _is_int(nbytes)
        and (not codebook or (bits and codebook <= 2**bits))
        and (index_huffman is None or position == "relative")
        and (value_huffman is None or bits)
        and (not ext.get("s1") or (ext["s1"] == 1 and bits and not codebook))
        and (not ext.get("al") or (len(ext) == 1 and position == "dense" and entries == bits == nbytes == 0))
    )
    if not ok:
        raise bad
    parsed = _Row(name, dtype, tuple(shape), position, k, entries, bits, nbytes, codebook, index_huffman,
                  value_huffman, bool(ext.get("s1")), ext.get("al", 0))
    if parsed.alias:
        return parsed  # its tensor is checked against the row it names in _parse_header
    if sum(parsed.sections()) != nbytes or (position == "dense" and entries != parsed.numel):
        raise PackedFormatError(f"corrupt header: sizes of '{name}' are inconsistent")
    return parsed


def _huffman_decode(row: _Row, buf: bytes, alphabet: int) -> np.ndarray:
    """Decodes a Huffman-coded stream of ``row.entries`` symbols; errors name the tensor."""
    try:
        return huffman.decode(buf, row.entries, alphabet)
    except PackedFormatError as err:
        raise PackedFormatError(f"'{row.name}': {err}") from err


def _decode_tensor(row: _Row, buf: bytes) -> tuple[torch.Tensor, Coding | None]:
    """Decodes one tensor's payload (length already checked)."""
    n_head, n_index, _ = row.sections()
    head, index, values_buf = buf[:n_head], buf[n_head : n_head + n_index], buf[n_head + n_index :]
    numel = row.numel

    if row.position == "dense":
        positions = None
    elif row.position == "bitmask":
        mask = np.unpackbits(np.frombuffer(index, np.uint8), count=numel).astype(bool)
        if int(mask.sum()) != row.entries:
            raise PackedFormatError(f"corrupt data: bitmask of '{row.name}' does not match its entries")
        positions = np.flatnonzero(mask)
    else:
        if row.index_huffman is None:
            fields = _unpack_uint(index, row.k, row.entries)
        else:
            fields = _huffman_decode(row, index, 1 << row.k)
        positions = np.cumsum(fields + 1) - 1
        if positions.size and positions[-1] >= numel:
            raise PackedFormatError(f"corrupt data: relative indices of '{row.name}' run past its end")

    if not row.bits:
        itemsize = _DTYPES[row.dtype].itemsize
        stored = np.frombuffer(values_buf, np.uint8).reshape(row.entries, itemsize)
        full = stored.copy() if positions is None else np.zeros((numel, itemsize), np.uint8)
        if positions is not None:
            full[positions] = stored
        return torch.from_numpy(full.reshape(-1)).view(_DTYPES[row.dtype]).reshape(row.shape), None

    if row.value_huffman is None:
        codes = _unpack_uint(values_buf, row.bits, row.entries)
    else:
        codes = _huffman_decode(row, values_buf, 1 << row.bits)
    coding: Coding
    if row.codebook:
        book = np.frombuffer(head, "<f4").astype(np.float32)
        if not np.isfinite(book).all():
            raise PackedFormatError(f"corrupt data: codebook of '{row.name}' is not finite")
        if codes.size and codes.max() >= row.codebook:
            raise PackedFormatError(f"corrupt data: codebook index out of range in '{row.name}'")
        stored = book[codes] + np.float32(0)  # a -0.0 centroid stores a zero: +0.0, like any pruned zero
        full = stored if positions is None else np.zeros(numel, np.float32)
        if positions is not None:
            full[positions] = stored
        weight = torch.from_numpy(full).reshape(row.shape)
        coding = CodebookCoding(row.bits, torch.from_numpy(book))
        return weight, coding

    scale = torch.from_numpy(np.frombuffer(head, "<f4").astype(np.float32))
    if row.one_scale:
        scale = scale.expand(row.shape[0]).contiguous()
    if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
        raise PackedFormatError(f"corrupt data: scales of '{row.name}' are not finite and positive")
    if row.bits == 1:
        q = 2 * codes - 1
    else:
        if codes.size and codes.max() > 2**row.bits - 2:
            raise PackedFormatError(f"corrupt data: code out of range in '{row.name}'")
        q = codes - (2 ** (row.bits - 1) - 1)
    full = q if positions is None else np.zeros(numel, np.int64)
    if positions is not None:
        full[positions] = q
    weight = dequantize(torch.from_numpy(full).reshape(row.shape), scale)
    return weight, WeightCoding(row.bits, scale)


def _parse_header(data: bytes) -> tuple[dict, int, list[_Row], int]:
    """Returns (meta, crc, rows, payload offset) after validating prefix and header."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PackedFormatError(f"packed data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise PackedFormatError(f"truncated packed data ({len(data)} bytes)")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise PackedFormatError(f"not packed autocomp data (magic {magic!r}, expected {MAGIC!r})")
    if version not in _VERSIONS:
        raise PackedFormatError(f"unsupported packed format version {version} (expected one of {_VERSIONS})")
    start = _PREFIX.size + header_len
    if start > len(data):
        raise PackedFormatError("truncated packed data: header is cut short")
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size : start]))
    except (zlib.error, ValueError) as err:
        raise PackedFormatError(f"corrupt packed header: {err}") from err
    if (
        not isinstance(header, dict)
        or not isinstance(header.get("meta"), dict)
        or not _is_int(header.get("crc"))
        or not isinstance(header.get("tensors"), list)
    ):
        raise PackedFormatError("corrupt packed header: missing meta, crc or tensor table")
    rows = [_check_row(row, version) for row in header["tensors"]]
    if len({row.name for row in rows}) != len(rows):
        raise PackedFormatError("corrupt packed header: duplicate tensor names")
    for i, row in enumerate(rows):
        if row.alias and not (row.alias - 1 < i and not rows[row.alias - 1].alias
                              and (rows[row.alias - 1].dtype, rows[row.alias - 1].shape) == (row.dtype, row.shape)):
            raise PackedFormatError(f"corrupt packed header: '{row.name}' aliases a row it cannot")
    return header["meta"], header["crc"], rows, start


def _decode(data: bytes) -> tuple[dict, list[_Row], dict[str, torch.Tensor], dict[str, Coding]]:
    """Full decode: (meta, header rows, state_dict, codings by module name)."""
    try:
        meta, crc, rows, start = _parse_header(data)
        body = bytes(data[start:])
        expected = sum(row.nbytes for row in rows)
        if len(body) != expected:
            raise PackedFormatError(f"payload length mismatch: {len(body)} bytes, header says {expected}")
        if zlib.crc32(body) != crc:
            raise PackedFormatError("corrupt payload: checksum mismatch")
        tensors: dict[str, torch.Tensor] = {}
        codings: dict[str, Coding] = {}
        offset = 0
        for row in rows:
            if row.alias:
                source = rows[row.alias - 1].name
                tensor = tensors[source]
                coding = codings.get(source.removesuffix("weight").removesuffix("."))
            else:
                tensor, coding = _decode_tensor(row, body[offset : offset + row.nbytes])
            offset += row.nbytes
            tensors[row.name] = tensor
            if coding is not None:
                codings[row.name.removesuffix("weight").removesuffix(".")] = coding
        return meta, rows, tensors, codings
    except PackedFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError, struct.error) as err:
        # Safety net: whatever slipped past the explicit checks is still corrupt input.
        raise PackedFormatError(f"corrupt packed data: {err}") from err


def unpack(data: bytes) -> tuple[dict, dict[str, torch.Tensor], dict[str, Coding]]:
    """Decodes packed bytes.

    Args:
        data: output of :func:`pack`.

    Returns:
        (meta, state_dict in the original order and dtypes, codings keyed by module name).

    Raises:
        PackedFormatError: the data is truncated or corrupt.
    """
    meta, _, tensors, codings = _decode(data)
    return meta, tensors, codings


def read_meta(data: bytes) -> dict:
    """Returns the ``meta`` dict stored in the header, without decoding the tensors."""
    return _parse_header(data)[0]


def load_into(model: nn.Module, data: bytes) -> nn.Module:
    """Loads packed tensors and codings (WeightCoding or CodebookCoding) into a model of the same architecture.

    Modules that are not coded in ``data`` lose any stale ``weight_coding`` attribute.

    Args:
        model: a model whose state_dict has exactly the packed names, shapes and dtypes.
        data: output of :func:`pack`.

    Returns:
        The same ``model``.

    Raises:
        PackedFormatError: corrupt data, or the first name/shape/dtype that does not match.
    """
    _, rows, tensors, codings = _decode(data)
    expected = model.state_dict()
    for name, target in expected.items():
        if name not in tensors:
            raise PackedFormatError(f"tensor '{name}' of the model is missing from the packed data")
        got = tensors[name]
        if got.shape != target.shape:
            raise PackedFormatError(
                f"tensor '{name}': packed shape {list(got.shape)} != model shape {list(target.shape)}"
            )
        if got.dtype != target.dtype:
            raise PackedFormatError(f"tensor '{name}': packed dtype {got.dtype} != model dtype {target.dtype}")
    for name in tensors:
        if name not in expected:
            raise PackedFormatError(f"tensor '{name}' in the packed data is not in the model")
    model.load_state_dict(tensors, strict=True)
    for row in rows:  # tied tensors become one parameter again, as in the model that was packed
        if row.alias:
            owner, _, attr = row.name.rpartition(".")
            source_owner, _, source_attr = rows[row.alias - 1].name.rpartition(".")
            source = getattr(model.get_submodule(source_owner), source_attr)
            if isinstance(source, nn.Parameter):
                setattr(model.get_submodule(owner), attr, source)
    for name, module in model.named_modules(remove_duplicate=False):
        if name in codings:
            module.weight_coding = codings[name]
        elif "weight_coding" in vars(module):
            del module.weight_coding
    return model


def tensor_report(data: bytes) -> list[dict]:
    """Per-tensor breakdown of a packed file (for Deep Compression-style tables).

    ``len(data) - sum(r["bytes"])`` is the prefix plus header.

    Returns:
        One dict per tensor: name, shape, numel, nonzeros, density, coding (raw, quantized or
        codebook), position, k (relative index bits, else None), fillers, value_bits, index_bits
        (per stored entry for relative, per element for bitmask; both before Huffman coding),
        scale_bytes, codebook_bytes, index_bytes, value_bytes, bytes (the sum of the last four),
        index_huffman and value_huffman (whether that stream is Huffman-coded) and huffman_saved
        (bytes that Huffman coding saves over storing the same streams fixed-width).
    """
    _, rows, tensors, _ = _decode(data)
    report = []
    for row in rows:
        tensor = tensors[row.name]
        nonzeros = int(tensor.count_nonzero())
        head_bytes, index_bytes, value_bytes = row.sections()
        report.append(
            {
                "name": row.name,
                "shape": list(row.shape),
                "numel": row.numel,
                "nonzeros": nonzeros,
                "density": nonzeros / row.numel if row.numel else 0.0,
                "coding": row.coding,
                "position": row.position,
                "k": row.k if row.position == "relative" else None,
                "fillers": row.entries - nonzeros if row.position == "relative" else 0,
                "value_bits": row.bits or 8 * _DTYPES[row.dtype].itemsize,
                "index_bits": {"dense": 0, "bitmask": 1, "relative": row.k}[row.position],
                "scale_bytes": 0 if row.codebook else head_bytes,
                "codebook_bytes": head_bytes if row.codebook else 0,
                "index_bytes": index_bytes,
                "value_bytes": value_bytes,
                "bytes": row.nbytes,
                "index_huffman": row.index_huffman is not None,
                "value_huffman": row.value_huffman is not None,
                "huffman_saved": sum(row.raw_sections()) - row.nbytes,
            }
        )
    return report
