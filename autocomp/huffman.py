"""Canonical Huffman coding of integer symbol streams, for the packed format's optional entropy coding.

A coded stream is one self-contained byte section::

    u8 L | u16 S - 1 (little-endian) | S code lengths, w = L.bit_length() bits each | codes | zero pad

L is the longest code length (1..16) and symbols 0..S-1 have a stored length (0 = unused). All fields
after the first three bytes are bit-packed MSB first, and the codes follow the table without padding.
Codes are canonical (ordered by length, then symbol), so the lengths are the whole table. A valid table
is a complete prefix code (Kraft sum exactly 1), except a single symbol with a 1-bit code.

Everything is vectorised with numpy: encoding builds the bit array at once; decoding looks up the code
at every bit position of a segment (one table lookup each), then follows the chain of symbol starts by
pointer jumping (32 symbols per step) with the symbols in between filled in as parallel lanes, so no
Python loop runs per symbol (about 0.1 us per symbol).
"""

from __future__ import annotations

import heapq

import numpy as np

from autocomp.errors import PackedFormatError

__all__ = ["MAX_LENGTH", "code_lengths", "decode", "encode", "encoded_size"]

MAX_LENGTH = 16  # longest code; limits the decode table to 2**16 entries
_HEAD = 3  # u8 L, u16 S - 1
_SEGMENT = 1 << 19  # bit positions looked up per decoding pass (bounds memory)
_JUMP = 5  # pointer-jumping stride: 2**5 = 32 symbols


def code_lengths(hist: np.ndarray) -> np.ndarray:
    """Huffman code lengths (at most :data:`MAX_LENGTH`) for a histogram of symbol counts.

    Ties are broken by symbol, so the result is deterministic. When the optimal code is too long, the
    counts are halved (rounding up, so none vanishes) until it fits: a common heuristic, near optimal
    for the rare skews that need it.

    Args:
        hist: counts per symbol (non-negative ints); at most 2**16 symbols may be used.

    Returns:
        int64 lengths, same shape as ``hist``; 0 for unused symbols, 1 for a lone used symbol.
    """
    hist = np.asarray(hist, dtype=np.int64)
    used = np.flatnonzero(hist)
    lengths = np.zeros(hist.size, np.int64)
    if used.size == 0:
        return lengths
    if used.size > 1 << MAX_LENGTH:
        raise ValueError(f"{used.size} symbols do not fit codes of at most {MAX_LENGTH} bits")
    freq = hist[used]
    while True:
        depth = _tree_depths([int(f) for f in freq])
        if max(depth) <= MAX_LENGTH:
            break
        freq = (freq + 1) >> 1
    lengths[used] = depth
    return lengths


def _tree_depths(freq: list[int]) -> list[int]:
    """Depth of each leaf in a Huffman tree over ``freq`` (a lone leaf gets depth 1)."""
    n = len(freq)
    if n == 1:
        return [1]
    heap = [(f, i) for i, f in enumerate(freq)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    node = n
    while len(heap) > 1:
        f1, a = heapq.heappop(heap)
        f2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (f1 + f2, node))
        node += 1
    depth = [0] * (2 * n - 1)  # the root, 2n - 2, has depth 0; parents are numbered above children
    for i in range(2 * n - 3, -1, -1):
        depth[i] = depth[parent[i]] + 1
    return depth[:n]


def encoded_size(hist: np.ndarray) -> tuple[int, np.ndarray] | None:
    """Exact bytes of the coded section (table included) for a stream with this histogram.

    Returns:
        (bytes, code lengths), or None for an empty stream.
    """
    hist = np.asarray(hist, dtype=np.int64)
    lengths = code_lengths(hist)
    if not lengths.any():
        return None
    symbols = int(np.flatnonzero(lengths)[-1]) + 1
    width = int(lengths.max()).bit_length()
    bits = symbols * width + int((hist * lengths).sum())
    return _HEAD + (bits + 7) // 8, lengths


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Canonical codes, left-aligned to L bits: (symbols in code order, their aligned codes, L).

    In code order (by length, then symbol) the left-aligned code of a symbol is the sum of
    2**(L - length) over the symbols before it, which is what makes the lengths a complete table.
    """
    used = np.flatnonzero(lengths)
    top = int(lengths.max())
    order = used[np.lexsort((used, lengths[used]))]
    span = np.left_shift(1, top - lengths[order])
    aligned = np.cumsum(span) - span
    return order, aligned, top


def _bits(values: np.ndarray, widths: np.ndarray | int) -> np.ndarray:
    """The MSB-first bits (uint8 0/1) of each value in its width (<= 16), concatenated."""
    values = np.asarray(values, dtype=np.int64)
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), values.shape)
    wide = np.ascontiguousarray(values << (16 - widths), dtype=">u2").view(np.uint8).reshape(-1, 2)
    matrix = np.unpackbits(wide, axis=1)
    return matrix[np.arange(16) < widths[:, None]]


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Encodes a stream with the code of :func:`code_lengths` (table first).

    Args:
        symbols: non-negative ints, each with a nonzero length in ``lengths``.
        lengths: code lengths per symbol, as returned by :func:`code_lengths` of the stream's histogram.

    Returns:
        The section; its length is what :func:`encoded_size` predicted.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    order, aligned, top = _canonical(lengths)
    count = int(np.flatnonzero(lengths)[-1]) + 1
    code = np.zeros(lengths.size, np.int64)
    code[order] = aligned >> (top - lengths[order])
    width = top.bit_length()
    table = _bits(lengths[:count], width)
    stream = _bits(code[symbols], lengths[symbols])
    head = bytes([top]) + (count - 1).to_bytes(2, "little")
    return head + np.packbits(np.concatenate([table, stream])).tobytes()


def decode(buf: bytes, count: int, alphabet: int) -> np.ndarray:
    """Decodes a section written by :func:`encode`.

    Args:
        buf: exactly the section (table, codes and padding; nothing after).
        count: number of symbols to decode.
        alphabet: symbols must lie below this.

    Returns:
        The ``count`` symbols as int64.

    Raises:
        PackedFormatError: the table is malformed, the codes are invalid, or the section is not exactly
            as long as the table plus ``count`` codes.
    """
    data = np.frombuffer(buf, np.uint8)
    if data.size < _HEAD:
        raise PackedFormatError("corrupt Huffman section: shorter than its header")
    top, symbols = int(data[0]), 1 + int(data[1]) + (int(data[2]) << 8)
    if not 1 <= top <= MAX_LENGTH or symbols > alphabet:
        raise PackedFormatError(f"corrupt Huffman table: longest code {top}, {symbols} symbols (of {alphabet})")
    body = data[_HEAD:]
    width = top.bit_length()
    if symbols * width > 8 * body.size:
        raise PackedFormatError("corrupt Huffman table: cut short")
    fields = np.unpackbits(body, count=symbols * width).reshape(symbols, width).astype(np.int64)
    lengths = fields @ (1 << np.arange(width - 1, -1, -1))
    used = lengths[lengths > 0]
    kraft = int(np.left_shift(1, top - used).sum()) if used.size else 0
    complete = kraft == 1 << top or (used.size == 1 and top == 1)
    if not used.size or lengths.max() != top or not complete or lengths[-1] == 0:
        raise PackedFormatError("corrupt Huffman table: code lengths do not form a complete prefix code")

    order, aligned, _ = _canonical(lengths)
    span = np.left_shift(1, top - lengths[order])
    table_symbol = np.zeros(1 << top, np.int64)
    table_length = np.zeros(1 << top, np.int32)  # 0: no code starts with these bits
    table_symbol[: int(span.sum())] = np.repeat(order, span)
    table_length[: int(span.sum())] = np.repeat(lengths[order], span)

    out, end = _decode_stream(body, symbols * width, count, table_symbol, table_length, top)
    if (end + 7) // 8 != body.size or (body.size and int(body[-1]) & ((1 << (8 * body.size - end)) - 1)):
        raise PackedFormatError("corrupt Huffman section: its length does not match its codes")
    return out


def _decode_stream(
    body: np.ndarray, start: int, count: int, table_symbol: np.ndarray, table_length: np.ndarray, top: int
) -> tuple[np.ndarray, int]:
    """Decodes ``count`` codes from bit ``start`` of ``body``; returns (symbols, bit after the last)."""
    padded = np.concatenate([body, np.zeros(4, np.uint8)]).astype(np.uint32)
    shifts = (32 - top - np.arange(8)).astype(np.uint32)
    local = np.arange(min(_SEGMENT, 8 * body.size) + 1, dtype=np.int32)
    out = np.empty(count, np.int64)
    done, p = 0, start
    while done < count:
        if p >= 8 * body.size:
            raise PackedFormatError("corrupt Huffman section: codes run past its end")
        # The code that would start at each bit of bytes first..first+size-1 (bit b of the segment is
        # local position b): the 32 bits from its byte on, shifted to its bit, then the table.
        first = p >> 3
        size = min(_SEGMENT >> 3, body.size - first)
        window = (
            (padded[first : first + size] << 24)
            | (padded[first + 1 : first + size + 1] << 16)
            | (padded[first + 2 : first + size + 2] << 8)
            | padded[first + 3 : first + size + 3]
        )
        peek = ((window[:, None] >> shifts) & ((1 << top) - 1)).reshape(-1)
        length = table_length[peek]
        n = 8 * size
        # Successor of each position (n = past this segment, a sink); an invalid code (length 0)
        # loops in place, which the length check below catches.
        succ = np.empty(n + 1, np.int32)
        np.minimum(local[:n] + length, n, out=succ[:n])
        succ[n] = n
        jump = succ
        for _ in range(_JUMP):
            jump = jump[jump]
        need = count - done
        lanes, q = [], p - 8 * first
        while q < n and len(lanes) << _JUMP < need:
            lanes.append(q)
            q = int(jump[q])
        chain = np.empty((len(lanes), 1 << _JUMP), np.int32)
        chain[:, 0] = lanes
        for step in range(1, 1 << _JUMP):
            chain[:, step] = succ[chain[:, step - 1]]
        chain = chain.reshape(-1)
        chain = chain[chain < n][:need]
        if not (length[chain] > 0).all():
            raise PackedFormatError("corrupt Huffman section: bits that are no code")
        out[done : done + chain.size] = table_symbol[peek[chain]]
        done += chain.size
        p = 8 * first + int(chain[-1]) + int(length[chain[-1]])
    return out, p
