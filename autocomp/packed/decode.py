"""Decoding: packed bytes back to the header, the tensors and their codings, every field checked."""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any, NamedTuple

import numpy as np
import torch

from autocomp import huffman
from autocomp.errors import PackedFormatError
from autocomp.packed.cost import unpack_uint, value_bytes
from autocomp.packed.format import (
    DTYPES,
    EXTENSIONS,
    MAGIC,
    MAX_K,
    PLAIN_ROW,
    POSITIONS,
    PREFIX,
    VERSIONS,
    CodebookCoding,
    Coding,
    WeightCoding,
    dequantize,
    group_count,
    is_int,
)


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
    group_size: int = 0  # group-wise scales: the length of a group (0: one scale per dim-0 channel)
    group_axis: int = 0  # with groups, the output dim whose slices are the rows

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def scale_count(self) -> int:
        """How many fp32 scales a quantized row's head holds."""
        if self.one_scale:
            return 1
        if self.group_size:
            rows, groups = group_count(self.shape, self.group_size, self.group_axis)
            return rows * groups
        return self.shape[0]

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
            head = 4 * self.scale_count() if self.bits else 0
        index = {"dense": 0, "bitmask": (self.numel + 7) // 8, "relative": (self.entries * self.k + 7) // 8}
        values = value_bytes(self.entries, self.bits, DTYPES[self.dtype].itemsize)
        return head, index[self.position], values

    def sections(self) -> tuple[int, int, int]:
        """Expected byte lengths of the (head, positions, values) sections."""
        head, index, values = self.raw_sections()
        index = index if self.index_huffman is None else self.index_huffman
        values = values if self.value_huffman is None else self.value_huffman
        return head, index, values




def _check_row(row: Any, version: int) -> _Row:
    """Validates one header row; raises PackedFormatError naming what is wrong."""
    bad = PackedFormatError(f"corrupt header: bad tensor row {row!r:.80}")
    lengths = (PLAIN_ROW, PLAIN_ROW + 1) if version >= 2 else (PLAIN_ROW,)
    if not isinstance(row, list) or len(row) not in lengths:
        raise bad
    name, dtype, shape, position, k, entries, bits, nbytes = row[:PLAIN_ROW]
    ext = row[PLAIN_ROW] if len(row) > PLAIN_ROW else {}
    if len(row) > PLAIN_ROW and (
        not isinstance(ext, dict)
        or not ext
        or not set(ext) <= set(EXTENSIONS)
        or not all(is_int(v) and v > 0 for v in ext.values())
    ):
        raise bad
    codebook, index_huffman, value_huffman = ext.get("cb", 0), ext.get("hi"), ext.get("hv")
    ok = (
        isinstance(name, str)
        and dtype in DTYPES
        and isinstance(shape, list)
        and all(is_int(d) and d >= 0 for d in shape)
        and position in POSITIONS
        and is_int(k)
        and (1 <= k <= MAX_K if position == "relative" else k == 0)
        and is_int(entries)
        and entries >= 0
        and is_int(bits)
        and 0 <= bits <= 8
        and (bits == 0 or (dtype == "float32" and len(shape) >= 1))
        and is_int(nbytes)
        and (not codebook or (bits and codebook <= 2**bits))
        and (index_huffman is None or position == "relative")
        and (value_huffman is None or bits)
        and (not ext.get("s1") or (ext["s1"] == 1 and bits and not codebook))
        and (not ext.get("al") or (len(ext) == 1 and position == "dense" and entries == bits == nbytes == 0))
        and (not ext.get("g") or (bits and not codebook and not ext.get("s1")))
        and (not ext.get("gx") or (ext["gx"] == 1 and ext.get("g") and len(shape) >= 2))
    )
    if not ok:
        raise bad
    parsed = _Row(name, dtype, tuple(shape), position, k, entries, bits, nbytes, codebook, index_huffman,
                  value_huffman, bool(ext.get("s1")), ext.get("al", 0), ext.get("g", 0), ext.get("gx", 0))
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
            fields = unpack_uint(index, row.k, row.entries)
        else:
            fields = _huffman_decode(row, index, 1 << row.k)
        positions = np.cumsum(fields + 1) - 1
        if positions.size and positions[-1] >= numel:
            raise PackedFormatError(f"corrupt data: relative indices of '{row.name}' run past its end")

    if not row.bits:
        itemsize = DTYPES[row.dtype].itemsize
        stored = np.frombuffer(values_buf, np.uint8).reshape(row.entries, itemsize)
        full = stored.copy() if positions is None else np.zeros((numel, itemsize), np.uint8)
        if positions is not None:
            full[positions] = stored
        return torch.from_numpy(full.reshape(-1)).view(DTYPES[row.dtype]).reshape(row.shape), None

    if row.value_huffman is None:
        codes = unpack_uint(values_buf, row.bits, row.entries)
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
    if row.group_size:
        scale = scale.reshape(group_count(row.shape, row.group_size, row.group_axis))
    elif row.one_scale:
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
    weight = dequantize(torch.from_numpy(full).reshape(row.shape), scale, row.group_size, row.group_axis)
    return weight, WeightCoding(row.bits, scale, row.group_size, row.group_axis)


def _parse_header(data: bytes) -> tuple[dict, int, list[_Row], int]:
    """Returns (meta, crc, rows, payload offset) after validating prefix and header."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PackedFormatError(f"packed data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < PREFIX.size:
        raise PackedFormatError(f"truncated packed data ({len(data)} bytes)")
    magic, version, header_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise PackedFormatError(f"not packed autocomp data (magic {magic!r}, expected {MAGIC!r})")
    if version not in VERSIONS:
        raise PackedFormatError(f"unsupported packed format version {version} (expected one of {VERSIONS})")
    start = PREFIX.size + header_len
    if start > len(data):
        raise PackedFormatError("truncated packed data: header is cut short")
    try:
        header = json.loads(zlib.decompress(data[PREFIX.size : start]))
    except (zlib.error, ValueError) as err:
        raise PackedFormatError(f"corrupt packed header: {err}") from err
    if (
        not isinstance(header, dict)
        or not isinstance(header.get("meta"), dict)
        or not is_int(header.get("crc"))
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


def decode(data: bytes) -> tuple[dict, list[_Row], dict[str, torch.Tensor], dict[str, Coding]]:
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
                coding = codings.get(source.rpartition(".")[0])
            else:
                tensor, coding = _decode_tensor(row, body[offset : offset + row.nbytes])
            offset += row.nbytes
            tensors[row.name] = tensor
            if coding is not None:
                # the coded tensor's module: "fc.weight" -> "fc", attention's "attn.in_proj_weight" -> "attn"
                codings[row.name.rpartition(".")[0]] = coding
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
    meta, _, tensors, codings = decode(data)
    return meta, tensors, codings


def read_meta(data: bytes) -> dict:
    """Returns the ``meta`` dict stored in the header, without decoding the tensors."""
    return _parse_header(data)[0]
