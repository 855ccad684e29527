"""Tests for weight sharing: 1-D k-means, the Share layer handler, and its packed size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import autocomp.primitives.share  # noqa: F401  (registers the Share handler)
from autocomp.packed import CodebookCoding, load_into, pack, packed_size, unpack
from autocomp.primitives.configs import Share
from autocomp.primitives.registry import HANDLERS, apply_primitive
from autocomp.primitives.share import kmeans_1d, share_layer, share_weight


def _pruned_layer(out_features: int, in_features: int, density: float, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=0.05)
    rank = torch.randperm(layer.weight.numel()).reshape(layer.weight.shape)
    with torch.no_grad():
        layer.weight.mul_((rank < round(density * layer.weight.numel())).float())
    return layer


def test_handler_is_registered() -> None:
    assert HANDLERS[Share] is share_layer
    layer = _pruned_layer(10, 20, 0.5)
    assert apply_primitive(layer, Share(bits=2)) is layer
    assert isinstance(layer.weight_coding, CodebookCoding)


@pytest.mark.parametrize("k", [5, 6, 8, 64])
def test_kmeans_is_exact_with_enough_centroids(k: int) -> None:
    rng = np.random.default_rng(0)
    distinct = np.array([-0.75, -0.1, 0.003, 0.2, 1.5], np.float32)
    values = rng.choice(distinct, size=1000)
    centroids, assignment = kmeans_1d(values, k)
    assert centroids.dtype == np.float32
    assert np.array_equal(centroids, distinct)  # sorted distinct values, nothing more
    assert np.array_equal(centroids[assignment], values)


def test_share_is_exact_when_the_layer_has_few_values() -> None:
    layer = nn.Linear(30, 20)
    values = torch.tensor([-0.5, -0.25, 0.0, 0.125, 0.75])
    with torch.no_grad():
        layer.weight.copy_(values[torch.randint(0, 5, layer.weight.shape, generator=torch.Generator().manual_seed(0))])
    before = layer.weight.detach().clone()
    share_layer(layer, Share(bits=3))
    assert torch.equal(layer.weight, before)
    coding = layer.weight_coding
    assert coding.bits == 2  # 4 nonzero values need 2-bit indices, not 3
    assert torch.equal(coding.codebook, torch.tensor([-0.5, -0.25, 0.125, 0.75]))


def test_kmeans_finds_the_means_of_a_mixture() -> None:
    rng = np.random.default_rng(1)
    means = np.array([-1.0, 0.25, 1.5])
    values = np.concatenate([rng.normal(m, 0.05, 20000) for m in means])
    rng.shuffle(values)
    centroids, assignment = kmeans_1d(values, 3)
    assert np.abs(centroids - means).max() < 1e-3
    truth = np.searchsorted((means[:-1] + means[1:]) / 2, values)
    assert np.array_equal(assignment, truth)
    # the centroids are the means of their clusters (a Lloyd fixed point), and they are sorted
    for j in range(3):
        assert centroids[j] == pytest.approx(values[assignment == j].mean(), abs=1e-12)


def test_kmeans_linear_init_keeps_outliers_and_empty_clusters() -> None:
    # Deep Compression's linear init: centroids span [min, max], so a rare large weight keeps its own
    # centroid; clusters that stay empty keep their initial centroid.
    values = np.concatenate([np.linspace(-0.1, 0.1, 999), [5.0]])
    centroids, assignment = kmeans_1d(values, 4)
    assert np.all(np.diff(centroids) >= 0)
    assert centroids[-1] == 5.0 and assignment[-1] == 3
    assert np.count_nonzero(assignment == 3) == 1
    empty = [j for j in range(4) if not np.any(assignment == j)]
    assert empty == [1, 2]
    assert np.allclose(centroids[empty], np.linspace(-0.1, 5.0, 4)[empty])


def test_zeros_stay_zero_and_nonzeros_stay_nonzero() -> None:
    # {-0.5, 0.5} forms one cluster whose mean is exactly 0: its centroid becomes a member instead.
    centroids, assignment = kmeans_1d(np.array([-0.5, 0.5, 10.0, 11.0], np.float32), 2)
    assert np.all(centroids[assignment] != 0)
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.5, 0.0, 0.5, 0.0], [10.0, 11.0, 0.0, -0.0], [0.5, -0.5, 0.0, 10.0]]))
    before = layer.weight.detach().clone()
    share_layer(layer, Share(bits=1))
    assert torch.equal(layer.weight == 0, before == 0)
    # a -0.0 (from w * mask) is left alone, bit for bit
    assert torch.equal(layer.weight[1, 3].view(torch.int32), torch.tensor(-0.0).view(torch.int32))

    for bits in range(1, 9):
        pruned = _pruned_layer(60, 80, 0.3, seed=bits)
        with torch.no_grad():
            pruned.weight[0, :4] = torch.tensor([1e-30, -1e-30, 3e-38, -3e-38])  # tiny nonzeros survive
        mask = pruned.weight.detach() != 0
        share_layer(pruned, Share(bits=bits))
        assert torch.equal(pruned.weight.detach() != 0, mask), bits


@pytest.mark.parametrize("bits", range(1, 9))
def test_shared_layer_is_its_codebook(bits: int) -> None:
    layer = _pruned_layer(100, 300, 0.4, seed=bits)
    bias = layer.bias.detach().clone()
    share_layer(layer, Share(bits=bits))
    coding = layer.weight_coding
    w = layer.weight.detach()
    nonzero = w[w != 0]
    assert coding.bits == bits and coding.codebook.dtype == torch.float32
    assert coding.codebook.shape == (2**bits,)
    assert nonzero.unique().numel() <= 2**bits
    # every nonzero weight is exactly a centroid: codebook[index]
    index = (nonzero[:, None] == coding.codebook[None, :]).float().argmax(dim=1)
    assert torch.equal(coding.codebook[index], nonzero)
    assert torch.equal(layer.bias, bias)
    # and the packed format accepts it (it checks the same) and brings it back bit-exact
    _, tensors, codings = unpack(pack(layer))
    assert torch.equal(tensors["weight"], layer.weight) and codings[""] == coding
    fresh = nn.Linear(300, 100)
    load_into(fresh, pack(layer, entropy=True))
    assert fresh.weight_coding == coding and torch.equal(fresh.weight, layer.weight)


def test_all_zero_weight() -> None:
    weight = torch.zeros(5, 7)
    shared, coding = share_weight(weight, 4)
    assert torch.equal(shared, weight) and coding == CodebookCoding(1, torch.zeros(1))


def test_size_never_grows_as_bits_shrink() -> None:
    for density in (1.0, 0.3, 0.05):
        sizes, entropy_sizes = [], []
        for bits in range(8, 0, -1):
            layer = _pruned_layer(300, 784, density)
            share_layer(layer, Share(bits=bits))
            sizes.append(len(pack(layer)))
            entropy_sizes.append(packed_size(layer, entropy=True))
        assert all(a >= b for a, b in zip(sizes[:-1], sizes[1:], strict=True)), (density, sizes)
        assert all(e <= s for e, s in zip(entropy_sizes, sizes, strict=True)), (density, entropy_sizes, sizes)


def test_eight_bit_sharing_is_accurate() -> None:
    torch.manual_seed(0)
    weight = torch.randn(300, 784)
    shared, _ = share_weight(weight, 8)
    snr = 10 * torch.log10(weight.pow(2).sum() / (weight - shared).pow(2).sum())
    assert snr >= 30, float(snr)
    shared4, _ = share_weight(weight, 4)
    assert (weight - shared4).pow(2).sum() > (weight - shared).pow(2).sum()


def test_cross_layer_tying_stores_one_tensor_and_reloads_tied(tmp_path):
    from autocomp.artifacts import artifact_meta, load_packed, pack_model, write_bytes
    from autocomp.compress import compress
    from autocomp.policy import Policy
    from autocomp.primitives import Share

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    x = torch.randn(8, 32)
    tied_policy = Policy.of({n: [Share(bits=4, tie=1)] for n in ("0", "2", "4")})
    plain_policy = Policy.of({n: [Share(bits=4)] for n in ("0", "2", "4")})
    tied, plain = compress(model, tied_policy), compress(model, plain_policy)
    assert tied[0].weight is tied[2].weight is tied[4].weight
    assert not torch.equal(tied[0].bias, tied[2].bias)  # biases stay each layer's own
    assert plain[0].weight is not plain[2].weight
    mean = torch.stack([model[i].weight for i in (0, 2, 4)]).mean(0)
    assert len(torch.unique(tied[0].weight)) <= 16 and (tied[0].weight - mean).abs().max() < 0.05
    sizes = {}
    for label, c, policy in (("tied", tied, tied_policy), ("plain", plain, plain_policy)):
        data = pack_model(c, artifact_meta(None, policy, (32,)))
        sizes[label] = len(data)
        write_bytes(tmp_path / f"{label}.acz", data)
        back = load_packed(tmp_path / f"{label}.acz", model=model)
        with torch.no_grad():
            assert torch.equal(back(x), c(x))
        assert (back[0].weight is back[2].weight) == (label == "tied")
    one_weight = 32 * 32 * 4 / 8 + 16 * 4  # 4-bit indices + codebook
    assert sizes["plain"] - sizes["tied"] >= 2 * one_weight - 64


def test_tied_layers_with_different_settings_keep_one_valid_coding(tmp_path):
    from autocomp.artifacts import artifact_meta, load_packed, pack_model, write_bytes
    from autocomp.compress import compress
    from autocomp.policy import Policy
    from autocomp.primitives import Quantize, Share

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    x = torch.randn(4, 16)
    for policy in (
        Policy.of({"0": [Share(bits=32, tie=1), Quantize(bits=3)], "2": [Share(bits=4, tie=1)],
                   "4": [Share(tie=1), Quantize(bits=6)]}),
        Policy.of({"0": [Share(tie=1), Quantize(bits=3)], "2": [Share(tie=1), Quantize(bits=5)]}),
    ):
        c = compress(model, policy)
        write_bytes(tmp_path / "m.acz", pack_model(c, artifact_meta(None, policy, (16,))))
        with torch.no_grad():
            assert torch.equal(load_packed(tmp_path / "m.acz", model=model)(x), c(x))
