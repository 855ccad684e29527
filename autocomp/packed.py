"""Packed (.acz) format: the honest, compact artifact whose exact length is a model's ``size_bytes``.

Layout (integers little-endian)::

    b"ACZ1" | u8 version | u32 header length | zlib(JSON header, level 9) | tensor payloads

The header is compact JSON ``{"meta": ..., "crc": crc32 of the payloads, "tensors": [row, ...]}``
with one row per ``state_dict`` entry, in ``state_dict`` order::

    [name, dtype, shape, position coding, k, entries, bits, payload bytes]

A tensor's payload is ``scales | positions | values``, each section padded to a whole byte; their
lengths follow from the row, and the row's ``payload bytes`` is checked against them on read.

* scales: fp32 per output channel, only for weights with a :class:`WeightCoding` (``bits`` > 0).
* positions: one of three codings, chosen per tensor by exact byte cost (ties go to the first):

  - ``dense``: none; every element's value is stored, zeros included.
  - ``bitmask``: 1 bit per element (``np.packbits``), then only the nonzeros' values.
  - ``relative``: Deep Compression's relative indices. Per entry, the number of zeros since the
    previous entry, in ``k`` bits (k = 1..16, the cheapest is taken). A run longer than 2**k - 1
    is split by filler entries (run 2**k - 1, value zero) that count in ``entries`` and in the
    cost. 1-bit codes have no zero, so for them only widths that need no filler are allowed.

  Only coded weights and floating tensors of rank >= 2 may use bitmask/relative; biases and
  buffers are always dense.
* values: for coded weights, b-bit codes bit-packed MSB first in offset binary
  ``q + 2**(b-1) - 1`` (for b = 1 the sign bit, 1 for +1); otherwise the raw little-endian bytes
  of the dtype. Round trips are bit-exact, with one exception: a zero in a weight (floating, rank
  >= 2) is a pruned position and comes back as +0.0 even if it was -0.0 (``w * mask`` makes those).

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

from autocomp.errors import PackedFormatError

__all__ = [
    "MAGIC",
    "VERSION",
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
VERSION = 1
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
_MAX_K = 16
_POSITIONS = ("dense", "bitmask", "relative")
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


def _relative_cost(runs: np.ndarray, k: int, bits: int = 0, itemsize: int = 4) -> int | None:
    """Exact bytes of relative coding with k-bit indices (fillers included).

    Args:
        runs: output of :func:`_zero_runs`.
        k: index width in bits.
        bits: code width of a WeightCoding, 0 for raw values.
        itemsize: bytes per raw value (unused when ``bits`` > 0).

    Returns:
        The byte count, or None when fillers are needed but 1-bit codes cannot store a zero.
    """
    fillers = int((runs >> k).sum())  # a run r needs r // 2**k fillers
    if fillers and bits == 1:
        return None
    entries = runs.size + fillers
    return (entries * k + 7) // 8 + _value_bytes(entries, bits, itemsize)


def _position_costs(nonzero: np.ndarray, bits: int = 0, itemsize: int = 4) -> dict[str, tuple[int, int]]:
    """Exact bytes (scales excluded) of each position coding that can represent the tensor.

    Args:
        nonzero: flat bool array, True where a value must be stored.
        bits: code width of a WeightCoding, 0 for raw values.
        itemsize: bytes per raw value (unused when ``bits`` > 0).

    Returns:
        ``{coding: (bytes, k)}`` in preference order; k is the cheapest relative index width
        (0 for the others). Dense is absent for 1-bit codes with zeros (no zero code).
    """
    numel, nnz = nonzero.size, int(np.count_nonzero(nonzero))
    costs: dict[str, tuple[int, int]] = {}
    if bits != 1 or nnz == numel:
        costs["dense"] = (_value_bytes(numel, bits, itemsize), 0)
    costs["bitmask"] = ((numel + 7) // 8 + _value_bytes(nnz, bits, itemsize), 0)
    runs = _zero_runs(nonzero)
    relative = [
        (c, k) for k in range(1, _MAX_K + 1) if (c := _relative_cost(runs, k, bits, itemsize)) is not None
    ]
    if relative:
        costs["relative"] = min(relative)  # smallest cost, then smallest k
    return costs


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


def _codes(name: str, weight: torch.Tensor, coding: WeightCoding) -> np.ndarray:
    """Recovers and verifies the integer codes of a coded weight (flat int64)."""
    bits, scale = coding.bits, coding.scale
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise PackedFormatError(f"'{name}': weight_coding.bits must be an int in 1..8, got {bits!r}")
    if weight.dtype != torch.float32 or weight.dim() < 1:
        raise PackedFormatError(f"'{name}': a coded weight must be float32 with rank >= 1")
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


def _encode(name: str, tensor: torch.Tensor, coding: WeightCoding | None) -> tuple[list, bytes]:
    """Encodes one tensor at its cheapest position coding; returns (header row, payload)."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise PackedFormatError(f"'{name}': unsupported dtype {tensor.dtype}")
    itemsize = tensor.element_size()
    if coding is not None:
        bits = coding.bits
        q = _codes(name, tensor, coding)
        nonzero = q != 0
        # Offset binary; for 1 bit the sign. Zero codes (only in dense/fillers) need bits >= 2.
        values = (q > 0).astype(np.int64) if bits == 1 else q + (2 ** (bits - 1) - 1)
        zero_value = 2 ** (bits - 1) - 1
        scales = coding.scale.detach().cpu().numpy().astype("<f4").tobytes()
    else:
        bits, values, zero_value, scales = 0, _raw_rows(tensor), 0, b""
        nonzero = np.ones(len(values), dtype=bool)
        if _is_weight(tensor):
            # A pruned weight is zero whatever its sign (w * mask leaves -0.0): store it as +0.0.
            nonzero = (tensor.detach().cpu() != 0).reshape(-1).numpy()
            values[~nonzero] = 0
    numel = nonzero.size

    if coding is not None or _is_weight(tensor):
        costs = _position_costs(nonzero, bits, itemsize)
    else:
        costs = {"dense": (_value_bytes(numel, bits, itemsize), 0)}
    position, (cost, k) = min(costs.items(), key=lambda item: item[1][0])

    if position == "dense":
        index, stored = b"", values
    elif position == "bitmask":
        index, stored = np.packbits(nonzero).tobytes(), values[nonzero]
    else:
        fields, real = _relative_fields(_zero_runs(nonzero), k)
        index = _pack_uint(fields, k)
        stored = np.full((fields.size, *values.shape[1:]), zero_value, dtype=values.dtype)
        stored[real] = values[nonzero]
    value_bytes = _pack_uint(stored, bits) if bits else stored.tobytes()
    assert len(index) + len(value_bytes) == cost, "cost model and encoder disagree"

    payload = scales + index + value_bytes
    row = [name, dtype, list(tensor.shape), position, k, len(stored), bits, len(payload)]
    return row, payload


def _codings_by_key(model: nn.Module) -> dict[str, WeightCoding]:
    """Maps state_dict weight keys to the WeightCoding of their module."""
    codings = {}
    for name, module in model.named_modules(remove_duplicate=False):
        coding = getattr(module, "weight_coding", None)
        if coding is None:
            continue
        if not isinstance(coding, WeightCoding):
            raise PackedFormatError(f"'{name}': weight_coding is a {type(coding).__name__}, not WeightCoding")
        codings[f"{name}.weight" if name else "weight"] = coding
    return codings


def pack(model: nn.Module, *, meta: dict | None = None) -> bytes:
    """Encodes every ``state_dict`` entry of ``model`` into the packed format.

    Args:
        model: the (possibly pruned and quantized) fp32 model; quantized layers carry a
            ``weight_coding`` attribute.
        meta: small JSON-able dict stored in the header (e.g. zoo name and policy). JSON turns
            tuples into lists and dict keys into strings.

    Returns:
        The packed bytes; their length is the model's honest size.

    Raises:
        PackedFormatError: a weight_coding does not match its weights, a dtype is unsupported, or
            ``meta`` is not JSON-able.
    """
    state = model.state_dict()
    codings = _codings_by_key(model)
    for key in codings:
        if key not in state:
            raise PackedFormatError(f"'{key}': module has a weight_coding but no weight in the state_dict")
    rows, payloads = [], []
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise PackedFormatError(f"'{name}': state_dict entry is not a tensor")
        row, payload = _encode(name, tensor, codings.get(name))
        rows.append(row)
        payloads.append(payload)
    body = b"".join(payloads)
    try:
        text = json.dumps(
            {"meta": meta or {}, "crc": zlib.crc32(body), "tensors": rows}, separators=(",", ":")
        )
    except (TypeError, ValueError) as err:
        raise PackedFormatError(f"meta is not JSON-serialisable: {err}") from err
    header = zlib.compress(text.encode(), 9)
    return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + body


def packed_size(model: nn.Module, *, meta: dict | None = None) -> int:
    """Returns ``len(pack(model, meta=meta))``: the model's size in bytes."""
    return len(pack(model, meta=meta))


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

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def sections(self) -> tuple[int, int, int]:
        """Expected byte lengths of the (scales, positions, values) sections."""
        scales = 4 * self.shape[0] if self.bits else 0
        index = {"dense": 0, "bitmask": (self.numel + 7) // 8, "relative": (self.entries * self.k + 7) // 8}
        values = _value_bytes(self.entries, self.bits, _DTYPES[self.dtype].itemsize)
        return scales, index[self.position], values


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_row(row: Any) -> _Row:
    """Validates one header row; raises PackedFormatError naming what is wrong."""
    if not isinstance(row, list) or len(row) != len(_Row._fields):
        raise PackedFormatError(f"corrupt header: bad tensor row {row!r:.80}")
    name, dtype, shape, position, k, entries, bits, nbytes = row
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
    )
    if not ok:
        raise PackedFormatError(f"corrupt header: bad tensor row {row!r:.80}")
    parsed = _Row(name, dtype, tuple(shape), position, k, entries, bits, nbytes)
    if sum(parsed.sections()) != nbytes or (position == "dense" and entries != parsed.numel):
        raise PackedFormatError(f"corrupt header: sizes of '{name}' are inconsistent")
    return parsed


def _decode_tensor(row: _Row, buf: bytes) -> tuple[torch.Tensor, WeightCoding | None]:
    """Decodes one tensor's payload (length already checked)."""
    n_scales, n_index, _ = row.sections()
    index, values_buf = buf[n_scales : n_scales + n_index], buf[n_scales + n_index :]
    numel = row.numel

    if row.position == "dense":
        positions = None
    elif row.position == "bitmask":
        mask = np.unpackbits(np.frombuffer(index, np.uint8), count=numel).astype(bool)
        if int(mask.sum()) != row.entries:
            raise PackedFormatError(f"corrupt data: bitmask of '{row.name}' does not match its entries")
        positions = np.flatnonzero(mask)
    else:
        positions = np.cumsum(_unpack_uint(index, row.k, row.entries) + 1) - 1
        if positions.size and positions[-1] >= numel:
            raise PackedFormatError(f"corrupt data: relative indices of '{row.name}' run past its end")

    if row.bits:
        scale = torch.from_numpy(np.frombuffer(buf[:n_scales], "<f4").astype(np.float32))
        if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
            raise PackedFormatError(f"corrupt data: scales of '{row.name}' are not finite and positive")
        codes = _unpack_uint(values_buf, row.bits, row.entries)
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

    itemsize = _DTYPES[row.dtype].itemsize
    stored = np.frombuffer(values_buf, np.uint8).reshape(row.entries, itemsize)
    full = stored.copy() if positions is None else np.zeros((numel, itemsize), np.uint8)
    if positions is not None:
        full[positions] = stored
    tensor = torch.from_numpy(full.reshape(-1)).view(_DTYPES[row.dtype]).reshape(row.shape)
    return tensor, None


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
    if version != VERSION:
        raise PackedFormatError(f"unsupported packed format version {version} (expected {VERSION})")
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
    rows = [_check_row(row) for row in header["tensors"]]
    if len({row.name for row in rows}) != len(rows):
        raise PackedFormatError("corrupt packed header: duplicate tensor names")
    return header["meta"], header["crc"], rows, start


def _decode(data: bytes) -> tuple[dict, list[_Row], dict[str, torch.Tensor], dict[str, WeightCoding]]:
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
        codings: dict[str, WeightCoding] = {}
        offset = 0
        for row in rows:
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


def unpack(data: bytes) -> tuple[dict, dict[str, torch.Tensor], dict[str, WeightCoding]]:
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
    """Loads packed tensors and codings into a model of the same architecture.

    Modules that are not coded in ``data`` lose any stale ``weight_coding`` attribute.

    Args:
        model: a model whose state_dict has exactly the packed names, shapes and dtypes.
        data: output of :func:`pack`.

    Returns:
        The same ``model``.

    Raises:
        PackedFormatError: corrupt data, or the first name/shape/dtype that does not match.
    """
    _, tensors, codings = unpack(data)
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
            raise PackedFormatError(
                f"tensor '{name}': packed dtype {got.dtype} != model dtype {target.dtype}"
            )
    for name in tensors:
        if name not in expected:
            raise PackedFormatError(f"tensor '{name}' in the packed data is not in the model")
    model.load_state_dict(tensors, strict=True)
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
        One dict per tensor: name, shape, numel, nonzeros, density, position, k (relative index
        bits, else None), fillers, value_bits, index_bits (per stored entry for relative, per
        element for bitmask), scale_bytes, index_bytes, value_bytes, bytes (their sum).
    """
    _, rows, tensors, _ = _decode(data)
    report = []
    for row in rows:
        tensor = tensors[row.name]
        nonzeros = int(tensor.count_nonzero())
        scale_bytes, index_bytes, value_bytes = row.sections()
        report.append(
            {
                "name": row.name,
                "shape": list(row.shape),
                "numel": row.numel,
                "nonzeros": nonzeros,
                "density": nonzeros / row.numel if row.numel else 0.0,
                "position": row.position,
                "k": row.k if row.position == "relative" else None,
                "fillers": row.entries - nonzeros if row.position == "relative" else 0,
                "value_bits": row.bits or 8 * _DTYPES[row.dtype].itemsize,
                "index_bits": {"dense": 0, "bitmask": 1, "relative": row.k}[row.position],
                "scale_bytes": scale_bytes,
                "index_bytes": index_bytes,
                "value_bytes": value_bytes,
                "bytes": row.nbytes,
            }
        )
    return report
