"""Tests for the packed (.acz) format: bit-exact round trips, exact-cost coding choice, robustness."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from autocomp import packed
from autocomp.errors import PackedFormatError
from autocomp.packed import WeightCoding, dequantize, load_into, pack, packed_size, read_meta, unpack


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
    costs = packed._position_costs(nonzero, bits, 4)
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
    runs = packed._zero_runs(nonzero)
    best, k = packed._position_costs(nonzero)["relative"]
    assert k != 5
    assert best < packed._relative_cost(runs, 5)
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
        buf = packed._pack_uint(values, width)
        assert len(buf) == (1001 * width + 7) // 8
        assert np.array_equal(packed._unpack_uint(buf, width, 1001), values)
