"""Tests for the packed (.acz) format: bit-exact round trips, exact-cost coding choice, robustness."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from autocomp import huffman, packed
from autocomp.errors import PackedFormatError
from autocomp.packed import (
    CodebookCoding,
    WeightCoding,
    cost,
    decode,
    dequantize,
    load_into,
    pack,
    packed_size,
    read_meta,
    unpack,
)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def _prune(layer: nn.Module, density: float, seed: int = 0) -> None:
    """Keeps a random ``density`` fraction of the weight (masks are nested across densities)."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.randperm(layer.weight.numel(), generator=g).reshape(layer.weight.shape)
    with torch.no_grad():
        layer.weight.mul_((rank < round(density * layer.weight.numel())).float())


def _quantize(layer: nn.Module, bits: int, density: float = 1.0, seed: int = 0) -> WeightCoding:
    """Replaces the layer's weight by ``bits``-bit codes times per-channel scales; sets weight_coding."""
    g = torch.Generator().manual_seed(seed)
    w = layer.weight.detach()
    top = max(2 ** (bits - 1) - 1, 1)
    scale = (w.abs().flatten(1).amax(dim=1) / top).clamp_min(1e-6)
    q = torch.round(w / scale.view(-1, *[1] * (w.dim() - 1))).clamp(-top, top)
    if bits == 1:
        q = torch.where(w >= 0, 1.0, -1.0)
    rank = torch.randperm(w.numel(), generator=g).reshape(w.shape)
    q = q * (rank < round(density * w.numel()))
    with torch.no_grad():
        layer.weight.copy_(dequantize(q.to(torch.int64), scale))
    layer.weight_coding = WeightCoding(bits, scale)
    return layer.weight_coding


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor, for bit-exact comparison."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_same_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(tensors) == list(state)
    for name, want in state.items():
        got = tensors[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if want.is_floating_point() and want.dim() >= 2:
            want = want + 0.0  # a pruned weight's -0.0 comes back as +0.0 (documented)
        assert torch.equal(_bits(got), _bits(want)), name


def _weight_report(data: bytes, name: str) -> dict:
    return next(r for r in packed.tensor_report(data) if r["name"] == name)


@pytest.mark.parametrize("density", [1.0, 0.5, 0.08, 0.01, 0.0])
def test_roundtrip_unquantized_mlp(density: float) -> None:
    model = _mlp()
    for i, layer in enumerate(m for m in model if isinstance(m, nn.Linear)):
        _prune(layer, density, seed=i)
    meta = {"zoo": "mlp", "policy": {"0": [density, None]}}
    data = pack(model, meta=meta)
    assert unpack(data)[0] == meta
    _, tensors, codings = unpack(data)
    assert codings == {}
    _assert_same_state(model, tensors)
    assert len(data) == packed_size(model, meta=meta) > packed_size(model)


def test_raw_weights_keep_odd_bit_patterns() -> None:
    layer = nn.Linear(40, 30)
    _prune(layer, 0.05)
    with torch.no_grad():
        layer.weight[0, :3] = torch.tensor([float("nan"), -float("inf"), 1e-45])
        layer.weight[1, 0] = -0.0
    _, tensors, _ = unpack(pack(layer))
    _assert_same_state(layer, tensors)


@pytest.mark.parametrize("bits", range(1, 9))
def test_roundtrip_quantized(bits: int) -> None:
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    coding = _quantize(model[0], bits, density=0.4, seed=bits)
    _, tensors, codings = unpack(pack(model))
    assert codings == {"0": coding}
    assert codings["0"].scale.dtype == torch.float32
    _assert_same_state(model, tensors)


def test_roundtrip_one_bit_dense() -> None:
    layer = nn.Linear(50, 20)
    coding = _quantize(layer, 1)
    data = pack(layer)
    assert _weight_report(data, "weight")["position"] == "dense"
    _, tensors, codings = unpack(data)
    assert codings == {"": coding}
    _assert_same_state(layer, tensors)


def test_roundtrip_conv_bn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    model(torch.randn(2, 3, 10, 10))  # updates running stats and num_batches_tracked
    _prune(model[0], 0.3)
    _quantize(model[3], 4, density=0.5)
    _, tensors, codings = unpack(pack(model))
    assert tensors["1.num_batches_tracked"].dtype == torch.int64
    assert int(tensors["1.num_batches_tracked"]) == 1
    assert set(codings) == {"3"}
    _assert_same_state(model, tensors)


@pytest.mark.parametrize(
    ("density", "bits", "expected"),
    [
        (1.0, 0, "dense"),
        (0.4, 0, "bitmask"),
        (0.01, 0, "relative"),
        (1.0, 4, "dense"),
        (0.35, 4, "bitmask"),
        (0.01, 4, "relative"),
    ],
)
def test_chosen_position_coding_is_cheapest(density: float, bits: int, expected: str) -> None:
    layer = nn.Linear(784, 300, bias=False)
    if bits:
        _quantize(layer, bits, density=density)
    else:
        _prune(layer, density)
    nonzero = (layer.weight.detach() != 0).reshape(-1).numpy()
    costs = cost._position_costs(nonzero, bits, 4)
    assert set(costs) == {"dense", "bitmask", "relative"}

    data = pack(layer)
    report = _weight_report(data, "weight")
    header = len(data) - report["bytes"]
    assert report["position"] == expected
    assert report["bytes"] == min(c for c, _ in costs.values()) + report["scale_bytes"]
    assert len(data) == header + report["scale_bytes"] + costs[expected][0]
    assert header < 120


def test_size_never_grows_as_weights_are_pruned() -> None:
    raw, coded = nn.Linear(300, 200), nn.Linear(300, 200)
    sizes_raw, sizes_coded = [], []
    for density in [1.0, 0.9, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001, 0.0]:
        _prune(raw, density)  # nested masks: same ranking every time
        sizes_raw.append(packed_size(raw))
        _quantize(coded, 5, density=density)
        sizes_coded.append(packed_size(coded))
    for sizes in (sizes_raw, sizes_coded):
        assert all(a >= b for a, b in zip(sizes[:-1], sizes[1:], strict=True)), sizes
    assert sizes_raw[-1] < 1000  # an all-zero weight costs no payload


def test_size_never_grows_as_bits_shrink() -> None:
    for density in (1.0, 0.3, 0.05):
        sizes = []
        for bits in range(8, 1, -1):
            layer = nn.Linear(300, 100)
            torch.manual_seed(0)
            nn.init.normal_(layer.weight)
            _quantize(layer, bits, density=density)
            sizes.append(packed_size(layer))
        assert all(a > b for a, b in zip(sizes[:-1], sizes[1:], strict=True)), (density, sizes)


def test_best_relative_width_beats_fixed_k5() -> None:
    layer = nn.Linear(784, 300, bias=False)
    _prune(layer, 0.08)
    nonzero = (layer.weight.detach() != 0).reshape(-1).numpy()
    runs = cost.zero_runs(nonzero)
    best, k = cost._position_costs(nonzero)["relative"]
    assert k != 5
    assert best < cost._relative_cost(runs, 5)
    report = _weight_report(pack(layer), "weight")
    assert report["position"] == "relative" and report["k"] == k and report["bytes"] == best
    fillers = int((runs >> k).sum())
    assert report["fillers"] == fillers and report["nonzeros"] == int(nonzero.sum())


def test_relative_fillers_roundtrip() -> None:
    # Long zero runs force fillers at any small k; positions and values must still come back.
    layer = nn.Linear(1000, 20, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight.view(-1)[[0, 1, 999, 5000, 19999]] = torch.tensor([1.0, -2.0, 3.0, 4.0, 5.0])
    data = pack(layer)
    report = _weight_report(data, "weight")
    assert report["position"] == "relative"
    _, tensors, _ = unpack(data)
    _assert_same_state(layer, tensors)

    # 1-bit codes cannot store a filler: a width without fillers (or another coding) is used.
    coded = nn.Linear(1000, 20, bias=False)
    _quantize(coded, 1, density=0.002)
    data = pack(coded)
    report = _weight_report(data, "weight")
    assert report["fillers"] == 0
    _, tensors, codings = unpack(data)
    _assert_same_state(coded, tensors)
    assert codings[""] == coded.weight_coding


def test_load_into_restores_codings_and_outputs() -> None:
    model = _mlp(0)
    _quantize(model[0], 4, density=0.1)
    _prune(model[2], 0.2)
    _quantize(model[4], 2)
    data = pack(model, meta={"zoo": "mlp"})
    assert read_meta(data) == {"zoo": "mlp"}

    fresh = _mlp(1)
    fresh[2].weight_coding = WeightCoding(8, torch.ones(100))  # stale: must be removed
    assert load_into(fresh, data) is fresh
    assert fresh[0].weight_coding == model[0].weight_coding
    assert fresh[4].weight_coding == model[4].weight_coding
    assert not hasattr(fresh[2], "weight_coding")
    x = torch.randn(16, 784)
    assert torch.equal(fresh(x), model(x))
    assert pack(fresh, meta={"zoo": "mlp"}) == data


def test_load_into_rejects_other_architectures() -> None:
    data = pack(_mlp())
    wider = nn.Sequential(nn.Linear(784, 301), nn.ReLU(), nn.Linear(301, 100), nn.ReLU(), nn.Linear(100, 10))
    with pytest.raises(PackedFormatError, match=r"'0\.weight'"):
        load_into(wider, data)
    shorter = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100))
    with pytest.raises(PackedFormatError, match=r"'4\.weight'"):
        load_into(shorter, data)
    double = _mlp().double()
    with pytest.raises(PackedFormatError, match=r"'0\.weight'.*dtype"):
        load_into(double, data)


def _small_packed() -> bytes:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    _prune(model[0], 0.3)
    _quantize(model[2], 3)
    return pack(model, meta={"zoo": "tiny"})


def test_corrupt_or_truncated_data_raises() -> None:
    data = _small_packed()
    for cut in range(len(data)):
        with pytest.raises(PackedFormatError):
            unpack(data[:cut])
    for i in range(len(data)):
        broken = bytearray(data)
        broken[i] ^= 0x41
        with pytest.raises(PackedFormatError):
            unpack(bytes(broken))
    with pytest.raises(PackedFormatError, match="magic"):
        unpack(b"PK\x03\x04" + data[4:])
    with pytest.raises(PackedFormatError, match="version"):
        unpack(data[:4] + b"\x09" + data[5:])
    with pytest.raises(PackedFormatError, match="length"):
        unpack(data + b"\x00")
    not_json = zlib.compress(b"{not json")
    with pytest.raises(PackedFormatError, match="header"):
        unpack(struct.pack("<4sBI", b"ACZ1", 1, len(not_json)) + not_json)
    with pytest.raises(PackedFormatError):
        read_meta(b"ACZ")


def test_lying_weight_coding_raises() -> None:
    layer = nn.Linear(20, 10)
    coding = _quantize(layer, 4)
    with torch.no_grad():
        layer.weight[3, 3] += 1e-3
    with pytest.raises(PackedFormatError, match="weight"):
        pack(layer)
    layer = nn.Linear(20, 10)
    _quantize(layer, 4)
    layer.weight_coding = WeightCoding(3, coding.scale)  # codes up to 7 do not fit in 3 bits
    with pytest.raises(PackedFormatError):
        pack(layer)
    layer.weight_coding = WeightCoding(4, coding.scale[:5])
    with pytest.raises(PackedFormatError, match="shape"):
        pack(layer)


def test_bit_packing_roundtrip() -> None:
    rng = np.random.default_rng(0)
    for width in (1, 3, 8, 11, 16):
        values = rng.integers(0, 2**width, size=1001)
        buf = cost.pack_uint(values, width)
        assert len(buf) == (1001 * width + 7) // 8
        assert np.array_equal(cost.unpack_uint(buf, width, 1001), values)


# ----------------------------------------------------------------------------------------------
# Codebook (weight sharing) coding


def _share(
    layer: nn.Module,
    bits: int,
    density: float = 1.0,
    seed: int = 0,
    size: int | None = None,
    book: torch.Tensor | None = None,
) -> CodebookCoding:
    """Replaces the layer's weight by random entries of a codebook (``size`` random centroids, or
    ``book``), then prunes it to ``density``; sets weight_coding."""
    g = torch.Generator().manual_seed(seed)
    if book is None:
        book = torch.randn(size or 2**bits, generator=g) * 0.1
    idx = torch.randint(0, book.numel(), layer.weight.shape, generator=g)
    rank = torch.randperm(layer.weight.numel(), generator=g).reshape(layer.weight.shape)
    with torch.no_grad():
        layer.weight.copy_(book[idx] * (rank < round(density * layer.weight.numel())))
    layer.weight_coding = CodebookCoding(bits, book)
    return layer.weight_coding


@pytest.mark.parametrize("entropy", [False, True])
@pytest.mark.parametrize("density", [1.0, 0.3, 0.05])
@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_roundtrip_codebook(bits: int, density: float, entropy: bool) -> None:
    model = nn.Sequential(nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    coding = _share(model[0], bits, density, seed=bits)
    data = pack(model, entropy=entropy)
    assert data[4] == 2  # codebooks need version 2 rows
    _, tensors, codings = unpack(data)
    assert codings == {"0": coding}
    assert codings["0"].codebook.dtype == torch.float32
    _assert_same_state(model, tensors)
    report = _weight_report(data, "0.weight")
    assert report["coding"] == "codebook" and report["codebook_bytes"] == 4 * 2**bits
    assert report["scale_bytes"] == 0 and report["value_bits"] == bits
    if density < 1.0:
        assert report["position"] != "dense"  # no 0.0 centroid: zeros are positions only
    if report["position"] == "relative":
        assert report["fillers"] == 0
    fresh = nn.Sequential(nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    load_into(fresh, data)
    assert fresh[0].weight_coding == coding and not hasattr(fresh[2], "weight_coding")
    x = torch.randn(8, 300)
    assert torch.equal(fresh(x), model(x))


def test_codebook_cost_is_exact() -> None:
    layer = nn.Linear(784, 300, bias=False)
    _share(layer, 5, density=0.3)
    nonzero = (layer.weight.detach() != 0).reshape(-1).numpy()
    costs = cost._position_costs(nonzero, 5, 4, zero_code=False)
    assert set(costs) == {"bitmask", "relative"}
    report = _weight_report(pack(layer), "weight")
    assert report["bytes"] == min(c for c, _ in costs.values()) + 4 * 32


def test_codebook_with_a_zero_centroid_stores_zeros() -> None:
    # A 0.0 (or -0.0) centroid is a code for zero: dense and relative fillers become possible, and a
    # zero still comes back as +0.0.
    for zero in (0.0, -0.0):
        book = torch.tensor([-0.5, zero, 0.25, 1.0])
        layer = nn.Linear(100, 10, bias=False)
        coding = _share(layer, 2, density=0.9, book=book)
        nonzero = (layer.weight.detach() != 0).reshape(-1).numpy()
        assert "dense" in cost._position_costs(nonzero, 2, 4, zero_code=True)
        data = pack(layer)
        assert _weight_report(data, "weight")["position"] == "dense"
        _, tensors, codings = unpack(data)
        _assert_same_state(layer, tensors)
        assert codings[""] == coding
        assert torch.equal(_bits(codings[""].codebook), _bits(book))  # the centroid's sign is kept

        sparse = nn.Linear(1000, 20, bias=False)
        _share(sparse, 2, density=0.15, book=book)
        with torch.no_grad():
            sparse.weight.view(-1)[5000:15000] = 0.0  # one long run: fillers beat wider indices
        data = pack(sparse)
        report = _weight_report(data, "weight")
        assert report["position"] == "relative" and report["fillers"] > 0
        _assert_same_state(sparse, unpack(data)[1])


def test_codebook_smaller_than_its_width_and_duplicates() -> None:
    layer = nn.Linear(50, 20)
    coding = _share(layer, 6, density=0.5, book=torch.tensor([0.5, -0.25, 0.5, 2.0, -0.25]))
    for entropy in (False, True):
        data = pack(layer, entropy=entropy)
        _, tensors, codings = unpack(data)
        _assert_same_state(layer, tensors)
        assert codings[""] == coding
        assert _weight_report(data, "weight")["codebook_bytes"] == 20


def test_lying_codebook_raises() -> None:
    layer = nn.Linear(20, 10)
    coding = _share(layer, 3)
    with torch.no_grad():
        layer.weight[2, 2] = float(coding.codebook[0]) + 1e-3
    with pytest.raises(PackedFormatError, match="codebook"):
        pack(layer)
    for bad in (
        CodebookCoding(3, coding.codebook.double()),
        CodebookCoding(2, coding.codebook),  # 8 centroids do not fit 2-bit indices
        CodebookCoding(3, coding.codebook.reshape(2, 4)),
        CodebookCoding(3, torch.tensor([float("nan")] * 8)),
        CodebookCoding(0, coding.codebook),
        CodebookCoding(3, torch.zeros(0)),
    ):
        _share(layer, 3)
        layer.weight_coding = bad
        with pytest.raises(PackedFormatError):
            pack(layer)
    layer.weight_coding = "k-means"
    with pytest.raises(PackedFormatError, match="CodebookCoding"):
        pack(layer)


def test_codebook_coding_equality() -> None:
    a = CodebookCoding(2, torch.tensor([1.0, 2.0]))
    assert a == CodebookCoding(2, torch.tensor([1.0, 2.0]))
    assert a != CodebookCoding(3, torch.tensor([1.0, 2.0]))
    assert a != CodebookCoding(2, torch.tensor([1.0, 2.5]))
    assert a != CodebookCoding(2, torch.tensor([1.0, 2.0, 3.0]))
    assert a != WeightCoding(2, torch.tensor([1.0, 2.0]))
    assert hash(a) == hash(CodebookCoding(2, torch.tensor([1.0, 2.0])))


def test_plain_files_keep_version_1() -> None:
    assert _small_packed()[4] == 1
    layer = nn.Linear(30, 3)
    assert pack(layer, entropy=True) == pack(layer)  # nothing worth Huffman-coding: the same bytes


# ----------------------------------------------------------------------------------------------
# Huffman (entropy) coding


def _clustered_prune(layer: nn.Module, seed: int = 0) -> None:
    """Keeps weights in clumps: 60% of zero runs are empty, the rest 1..149 long (not geometric, so
    Huffman-coded gaps beat fixed-width ones)."""
    rng = np.random.default_rng(seed)
    n = layer.weight.numel()
    runs = np.where(rng.random(n) < 0.6, 0, rng.integers(1, 150, n))
    positions = np.cumsum(runs + 1) - 1
    mask = torch.zeros(n)
    mask[positions[positions < n]] = 1.0
    with torch.no_grad():
        layer.weight.mul_(mask.reshape(layer.weight.shape))


def _skewed_model() -> nn.Sequential:
    """Gaussian weights quantized to 5 bits (codes crowd the middle), a sparse raw layer (relative)
    and a codebook layer with skewed index frequencies."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    nn.init.normal_(model[0].weight)
    _quantize(model[0], 5, density=0.5)
    _clustered_prune(model[2])
    book = torch.linspace(-1, 1, 16)
    g = torch.Generator().manual_seed(1)
    idx = torch.multinomial(torch.linspace(1, 30, 16) ** 2, 1000, replacement=True, generator=g)
    with torch.no_grad():
        model[4].weight.copy_(book[idx].reshape(10, 100))
    model[4].weight_coding = CodebookCoding(4, book)
    return model


def test_entropy_roundtrip_and_savings() -> None:
    model = _skewed_model()
    plain, coded = pack(model), pack(model, entropy=True)
    assert len(coded) < len(plain)
    _, tensors, codings = unpack(coded)
    _assert_same_state(model, tensors)
    assert codings == {"0": model[0].weight_coding, "4": model[4].weight_coding}
    reports = {r["name"]: r for r in packed.tensor_report(coded)}
    assert reports["0.weight"]["value_huffman"] and reports["0.weight"]["huffman_saved"] > 0
    assert reports["2.weight"]["position"] == "relative" and reports["2.weight"]["index_huffman"]
    assert not reports["2.weight"]["value_huffman"]  # raw fp32 values are never Huffman-coded
    assert reports["4.weight"]["value_huffman"]
    assert not any(r["index_huffman"] or r["value_huffman"] for n, r in reports.items() if "bias" in n)
    plain_reports = {r["name"]: r for r in packed.tensor_report(plain)}
    assert not any(r["index_huffman"] or r["value_huffman"] or r["huffman_saved"] for r in plain_reports.values())
    for name, r in reports.items():
        assert r["bytes"] == r["scale_bytes"] + r["codebook_bytes"] + r["index_bytes"] + r["value_bytes"]
        assert r["bytes"] <= plain_reports[name]["bytes"], name
    fresh = _skewed_model()
    fresh[2].weight_coding = WeightCoding(8, torch.ones(100))  # stale: removed on load
    load_into(fresh, coded)
    assert not hasattr(fresh[2], "weight_coding")
    x = torch.randn(4, 784)
    assert torch.equal(fresh(x), model(x))
    assert pack(fresh, entropy=True) == coded  # deterministic


def test_entropy_on_skewed_quantized_codes_is_strictly_smaller() -> None:
    layer = nn.Linear(784, 300)
    torch.manual_seed(0)
    nn.init.normal_(layer.weight)
    _quantize(layer, 5)
    plain, coded = packed_size(layer), packed_size(layer, entropy=True)
    assert coded < plain
    report = _weight_report(pack(layer, entropy=True), "weight")
    assert report["value_huffman"] and report["position"] == "dense"
    assert 0 < plain - coded <= report["huffman_saved"]  # the header row grows a little


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("density", [1.0, 0.4, 0.05, 0.002, 0.0])
def test_entropy_roundtrip_quantized(bits: int, density: float) -> None:
    layer = nn.Linear(300, 80)
    torch.manual_seed(bits)
    nn.init.normal_(layer.weight)
    coding = _quantize(layer, bits, density=density, seed=bits)
    data = pack(layer, entropy=True)
    _, tensors, codings = unpack(data)
    assert codings == {"": coding}
    _assert_same_state(layer, tensors)
    assert len(data) <= packed_size(layer)


@pytest.mark.parametrize("density", [1.0, 0.5, 0.08, 0.01, 0.001, 0.0])
def test_entropy_never_larger(density: float) -> None:
    model = _mlp()
    for i, layer in enumerate(m for m in model if isinstance(m, nn.Linear)):
        _prune(layer, density, seed=i)
    _quantize(model[2], 3, density=density)
    _share(model[4], 2, density=density)
    data = pack(model, entropy=True)
    assert len(data) <= packed_size(model)
    _assert_same_state(model, unpack(data)[1])


def test_entropy_relative_positions_roundtrip() -> None:
    # Clumped weights: Huffman-coded gaps, with fillers for the run too long for any index width.
    for coder in ("raw", "quantized", "codebook"):
        layer = nn.Linear(1000, 300, bias=False)
        torch.manual_seed(0)
        if coder == "quantized":
            _quantize(layer, 4)
        elif coder == "codebook":  # a 0.0 centroid makes fillers possible (else no width fits)
            _share(layer, 3, book=torch.tensor([-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4]))
        _clustered_prune(layer)
        with torch.no_grad():
            layer.weight.view(-1)[:150000] = 0.0
        data = pack(layer, entropy=True)
        report = _weight_report(data, "weight")
        assert report["position"] == "relative" and report["index_huffman"], coder
        _assert_same_state(layer, unpack(data)[1])
        assert len(data) < packed_size(layer)


def test_huffman_coder_roundtrip() -> None:
    rng = np.random.default_rng(0)
    streams = [
        np.array([3] * 17),  # one symbol: a 1-bit code
        np.array([0, 1]),
        rng.integers(0, 256, 5000),  # flat: no gain, but correct
        rng.geometric(0.001, 20000) - 1,  # a large alphabet
        np.minimum(rng.geometric(0.5, 5000) - 1, 40),  # code lengths past 16 get limited
        np.clip(np.round(rng.normal(15, 3, 700_000)), 0, 30).astype(np.int64),  # several decoding segments
    ]
    for symbols in streams:
        hist = np.bincount(symbols)
        size, lengths = huffman.encoded_size(hist)
        assert lengths.max() <= huffman.MAX_LENGTH
        buf = huffman.encode(symbols, lengths)
        assert len(buf) == size
        assert np.array_equal(huffman.decode(buf, symbols.size, 1 << 16), symbols)
    assert huffman.encoded_size(np.zeros(4, np.int64)) is None
    fibonacci = [1, 1]
    for _ in range(30):
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    lengths = huffman.code_lengths(np.array(fibonacci))
    assert lengths.max() == huffman.MAX_LENGTH and (2.0 ** -lengths.astype(float)).sum() == 1.0


def test_corrupt_huffman_sections_raise() -> None:
    rng = np.random.default_rng(0)
    symbols = np.clip(np.round(rng.normal(8, 2, 3001)), 0, 15).astype(np.int64)
    _, lengths = huffman.encoded_size(np.bincount(symbols))
    top, width = int(lengths.max()), int(lengths.max()).bit_length()
    table_bits = 24 + (int(np.flatnonzero(lengths)[-1]) + 1) * width
    if (table_bits + lengths[symbols].sum()) % 8 == 0:
        symbols = symbols[:-1]  # then the last byte has padding bits to corrupt
    good = huffman.encode(symbols, lengths)
    assert 8 * len(good) - table_bits - lengths[symbols].sum() > 0
    assert np.array_equal(huffman.decode(good, symbols.size, 16), symbols)
    broken = {
        "short": good[:2],
        "cut": good[:-1],
        "longer": good + b"\x00",
        "too many symbols": good[:1] + (40).to_bytes(2, "little") + good[3:],
        "no such code length": bytes([0]) + good[1:],
        "code length over 16": bytes([17]) + good[1:],
        "longest code shorter than stated": bytes([top + 1]) + good[1:],
        "table not a prefix code": good[:3] + bytes([good[3] ^ 0x10]) + good[4:],
        "padding bits set": good[:-1] + bytes([good[-1] | 1]),
    }
    for what, buf in broken.items():
        try:
            huffman.decode(buf, symbols.size, 16)
        except PackedFormatError:
            continue
        pytest.fail(f"no PackedFormatError for a section with {what}")
    with pytest.raises(PackedFormatError, match="symbols"):
        huffman.decode(good, symbols.size, 8)  # symbols beyond the alphabet
    with pytest.raises(PackedFormatError):
        huffman.decode(good, symbols.size + 10, 16)  # codes run past the end
    with pytest.raises(PackedFormatError):
        huffman.decode(good, symbols.size - 10, 16)  # codes left over
    # a lone symbol has a 1-bit code "0": a 1 bit is no code
    lone = huffman.encode(np.zeros(10, np.int64), np.array([1]))
    with pytest.raises(PackedFormatError, match="no code"):
        huffman.decode(lone[:3] + bytes([lone[3] | 0x08]) + lone[4:], 10, 2)


def _rewrite(data: bytes, edit) -> bytes:
    """Applies ``edit(rows, body) -> body`` to a packed file and re-seals it with a valid checksum."""
    magic, version, length = struct.unpack_from("<4sBI", data)
    header = json.loads(zlib.decompress(data[9 : 9 + length]))
    body = edit(header["tensors"], bytearray(data[9 + length :]))
    header["crc"] = zlib.crc32(bytes(body))
    text = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    return struct.pack("<4sBI", magic, version, len(text)) + text + bytes(body)


def _huffman_section(rows: list, name: str, key: str) -> tuple[list, int, int]:
    """(row, start offset in the body, length) of a tensor's Huffman-coded section."""
    offset = 0
    for row in rows:
        parsed = decode._check_row(row, 2)
        head, index, _ = parsed.sections()
        if row[0] == name:
            start = offset + head + (index if key == "hv" else 0)
            return row, start, row[8][key]
        offset += parsed.nbytes
    raise KeyError(name)


def test_corrupt_huffman_data_in_a_file_raises() -> None:
    data = pack(_skewed_model(), entropy=True)
    spots = [*range(300), *range(300, len(data), 1009)]  # all of the prefix and header, some payload
    for cut in spots:
        with pytest.raises(PackedFormatError):
            unpack(data[:cut])
    for i in spots:
        broken = bytearray(data)
        broken[i] ^= 0x41
        with pytest.raises(PackedFormatError):
            unpack(bytes(broken))

    assert _rewrite(data, lambda rows, body: body) == data
    for name, key in (("0.weight", "hv"), ("2.weight", "hi"), ("4.weight", "hv")):

        def table(rows: list, body: bytearray, name: str = name, key: str = key) -> bytearray:
            _, start, _ = _huffman_section(rows, name, key)
            body[start] = 17  # longest code length out of range
            return body

        def shorter(rows: list, body: bytearray, name: str = name, key: str = key) -> bytearray:
            row, start, length = _huffman_section(rows, name, key)
            row[8][key] -= 1
            row[7] -= 1
            del body[start + length - 1]
            return body

        def stream(rows: list, body: bytearray, name: str = name, key: str = key, i: int = 0) -> bytearray:
            _, start, length = _huffman_section(rows, name, key)
            body[start + 3 + i % (length - 3)] ^= 0xFF
            return body

        with pytest.raises(PackedFormatError, match=name.replace(".", r"\.")):
            unpack(_rewrite(data, table))
        with pytest.raises(PackedFormatError, match=name.replace(".", r"\.")):
            unpack(_rewrite(data, shorter))
        # Flipped stream bytes either fail to decode or decode to other valid data: never another error.
        failures = 0
        for i in range(0, 60, 5):
            try:
                unpack(_rewrite(data, lambda rows, body, i=i: stream(rows, body, i=i)))
            except PackedFormatError:
                failures += 1
        assert failures > 0


def test_row_extensions_are_validated() -> None:
    data = pack(_skewed_model(), entropy=True)

    def set_extensions(rows: list, body: bytearray, value: object) -> bytearray:
        rows[0][8:] = [value]  # 0.weight: 5-bit codes, dense
        return body

    for value in ({}, {"xx": 1}, {"hv": -3}, {"hv": True}, [], {"hi": 5}, {"cb": 1000}):
        with pytest.raises(PackedFormatError, match="header"):
            unpack(_rewrite(data, lambda rows, body, value=value: set_extensions(rows, body, value)))
    version1 = _rewrite(data, lambda rows, body: body)
    version1 = version1[:4] + b"\x01" + version1[5:]
    with pytest.raises(PackedFormatError, match="row"):
        unpack(version1)
