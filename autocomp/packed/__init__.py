"""Packed (.acz) format: the honest, compact artifact whose exact length is a model's ``size_bytes``.

Layout (integers little-endian)::

    b"ACZ1" | u8 version | u32 header length | zlib(JSON header, level 9) | tensor payloads

The header is compact JSON ``{"meta": ..., "crc": crc32 of the payloads, "tensors": [row, ...]}``
with one row per ``state_dict`` entry, in ``state_dict`` order::

    [name, dtype, shape, position coding, k, entries, bits, payload bytes(, extensions)]

``extensions`` (version 2 only) is a non-empty dict: ``"cb"``: the weight is codebook-coded with that
many fp32 centroids; ``"s1"``: every output channel has the same scale (per-tensor quantization), stored
once; ``"g"``: group-wise quantization, one scale per ``g`` consecutive weights of each row (see
:class:`WeightCoding`), the rows being the slices along dim 0, or along dim 1 where ``"gx"`` is 1 (weights
stored (in, out, ...)); ``"al"``: the tensor is the very tensor of row ``al - 1`` (cross-layer tying),
stored there only; ``"hi"`` / ``"hv"``: the relative index stream / the code stream is Huffman-coded
and its section has that many bytes. :func:`pack` writes version 1 when no row needs extensions (such
files are byte-identical to what older autocomp wrote and reads), else version 2; both are read.

A tensor's payload is ``head | positions | values``, each section padded to a whole byte; their lengths
follow from the row, and the row's ``payload bytes`` is checked against them on read.

* head: for a weight with a :class:`WeightCoding`, its fp32 scales (one per output channel, or with
  ``"g"`` one per group, row after row); for a
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

from autocomp.packed.decode import read_meta, unpack
from autocomp.packed.encode import pack, packed_size
from autocomp.packed.format import MAGIC, VERSION, CodebookCoding, Coding, WeightCoding, dequantize
from autocomp.packed.load import load_into
from autocomp.packed.report import tensor_report

__all__ = ["MAGIC", "VERSION", "CodebookCoding", "Coding", "WeightCoding", "dequantize", "load_into", "pack",
           "packed_size", "read_meta", "tensor_report", "unpack"]
