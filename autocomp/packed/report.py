"""Per-tensor report of a packed file (for benches: bytes, kept %, bits per layer)."""

from __future__ import annotations

from autocomp.packed.decode import decode
from autocomp.packed.format import DTYPES


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
    _, rows, tensors, _ = decode(data)
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
                "value_bits": row.bits or 8 * DTYPES[row.dtype].itemsize,
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
