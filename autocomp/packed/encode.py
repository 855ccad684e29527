"""Encoding: a model's state_dict, with its layers' codings, as packed bytes."""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

from autocomp import huffman
from autocomp.errors import PackedFormatError
from autocomp.layers import weight_name
from autocomp.packed.cost import is_weight, pack_uint, plans, raw_rows, relative_fields, zero_runs
from autocomp.packed.format import (
    DTYPES,
    MAGIC,
    PLAIN_ROW,
    PREFIX,
    CodebookCoding,
    Coding,
    WeightCoding,
    dequantize,
    group_count,
    is_int,
    scale_map,
)


def _check_bits(name: str, weight: torch.Tensor, bits: Any) -> None:
    if not is_int(bits) or not 1 <= bits <= 8:
        raise PackedFormatError(f"'{name}': weight_coding.bits must be an int in 1..8, got {bits!r}")
    if weight.dtype != torch.float32 or weight.dim() < 1:
        raise PackedFormatError(f"'{name}': a coded weight must be float32 with rank >= 1")


def _codes(name: str, weight: torch.Tensor, coding: WeightCoding) -> np.ndarray:
    """Recovers and verifies the integer codes of a quantized weight (flat int64)."""
    bits, scale, group, axis = coding.bits, coding.scale, coding.group_size, coding.axis
    _check_bits(name, weight, bits)
    if not is_int(group) or group < 0 or axis not in ((0, 1) if group and weight.dim() >= 2 else (0,)):
        raise PackedFormatError(f"'{name}': weight_coding.group_size must be an int >= 0 and axis 0 (or 1 with "
                                f"groups on a weight of rank >= 2), got {group!r} and {axis!r}")
    expected = group_count(weight.shape, group, axis) if group else (weight.shape[0],)
    if not isinstance(scale, torch.Tensor) or tuple(scale.shape) != expected:
        raise PackedFormatError(f"'{name}': weight_coding.scale must have shape {expected}")
    scale = scale.detach().cpu()
    if scale.dtype != torch.float32 or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
        raise PackedFormatError(f"'{name}': weight_coding.scale must be finite positive float32")
    w = weight.detach().cpu()
    q = torch.round(w / scale_map(scale, w.shape, group, axis))
    top = max(2 ** (bits - 1) - 1, 1)
    if not bool((q.abs() <= top).all()) or not torch.equal(dequantize(q, scale, group, axis), w):
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
    if dtype not in DTYPES:
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
        scales = coding.scale.detach().cpu().numpy().astype("<f4").reshape(-1)  # groups: row by row
        if coding.group_size:
            extensions["g"] = coding.group_size
            if coding.axis:
                extensions["gx"] = coding.axis
        elif len(scales) > 1 and (scales == scales[0]).all():  # per-tensor: one scale, not one per channel
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
        bits, values, zero_symbol, head = 0, raw_rows(tensor), 0, b""
        nonzero = np.ones(len(values), dtype=bool)
        if is_weight(tensor):
            # A pruned weight is zero whatever its sign (w * mask leaves -0.0): store it as +0.0.
            nonzero = (tensor.detach().cpu() != 0).reshape(-1).numpy()
            values[~nonzero] = 0

    hist = np.bincount(values[nonzero], minlength=2**bits) if entropy and bits else None
    options = plans(
        nonzero,
        bits,
        itemsize,
        zero_code=zero_symbol is not None,
        sparse=coding is not None or is_weight(tensor),
        entropy=entropy,
        hist=hist,
        zero_symbol=zero_symbol or 0,
    )
    plan = min(options, key=lambda p: p.score)

    if plan.position == "dense":
        index, stored = b"", values
    elif plan.position == "bitmask":
        index, stored = np.packbits(nonzero).tobytes(), values[nonzero]
    else:
        fields, real = relative_fields(zero_runs(nonzero), plan.k)
        if plan.index_code is None:
            index = pack_uint(fields, plan.k)
        else:
            index = huffman.encode(fields, plan.index_code)
            extensions["hi"] = len(index)
        stored = np.full((fields.size, *values.shape[1:]), zero_symbol or 0, dtype=values.dtype)
        stored[real] = values[nonzero]
    if plan.value_code is not None:
        value_bytes = huffman.encode(stored, plan.value_code)
        extensions["hv"] = len(value_bytes)
    else:
        value_bytes = pack_uint(stored, bits) if bits else stored.tobytes()
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
        attr = weight_name(module)  # attention codes its in_proj_weight
        codings[f"{name}.{attr}" if name else attr] = coding
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
    extensions = [row[PLAIN_ROW] for row in rows if len(row) > PLAIN_ROW]
    coded = any("hi" in ext or "hv" in ext for ext in extensions)
    return PREFIX.pack(MAGIC, 2 if extensions else 1, len(header)) + header + body, coded


def packed_size(model: nn.Module, *, meta: dict | None = None, entropy: bool = False) -> int:
    """Returns ``len(pack(model, meta=meta, entropy=entropy))``: the model's size in bytes."""
    return len(pack(model, meta=meta, entropy=entropy))
