import pytest
import torch
from torch import nn

from autocomp.artifacts import artifact_meta, pack_model
from autocomp.compress import compress
from autocomp.policy import Policy
from autocomp.primitives import Channels, LowRank, Prune, Quantize, Share
from autocomp.primitives.lowrank import factorize_linear
from autocomp.primitives.prune import magnitude_mask
from autocomp.primitives.quantize import quantize_weight
from autocomp.testing.conformance import (
    check_identity_exact,
    check_monotone,
    deepcopy_equal,
    outputs,
    random_layer,
    snr_db,
)
from autocomp.testing.tiny import tiny_cnn, tiny_data, tiny_mlp

MODELS = {"mlp": tiny_mlp, "cnn": tiny_cnn}
IDENTITIES = [Prune(ratio=0.0), LowRank(rank_ratio=1.0), Quantize(bits=32), Share(bits=32), Channels(ratio=0.0)]


def _size(model, policy):
    return len(pack_model(compress(model, policy), artifact_meta(None, Policy.of({}), (1, 8, 8))))


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("config", IDENTITIES, ids=lambda c: c.NAME)
def test_identity_config_reproduces_outputs_exactly(kind, config):
    model = MODELS[kind]()
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    policy = Policy.of({n: [config] for n in layers})
    check_identity_exact(model, compress(model, policy), tiny_data(32)[0])


def test_compress_never_mutates_its_input():
    model = tiny_mlp()
    before = tiny_mlp()
    policy = Policy.of({"1": [LowRank(rank_ratio=0.25), Prune(ratio=0.5), Quantize(bits=3)]})
    compress(model, policy)
    assert deepcopy_equal(model, before)


def test_full_rank_svd_reproduces_outputs():
    layer = random_layer(48, 96)
    x = torch.randn(16, 96)
    factored = factorize_linear(layer, 48)
    assert torch.allclose(outputs(layer, x), outputs(factored, x), atol=1e-5, rtol=1e-5)


def test_lowrank_skipped_where_it_would_not_shrink():
    layer = random_layer(32, 32)
    model = nn.Sequential(layer)
    assert isinstance(compress(model, Policy.of({"0": [LowRank(rank_ratio=0.6)]}))[0], nn.Linear)
    assert isinstance(compress(model, Policy.of({"0": [LowRank(rank_ratio=0.4)]}))[0], nn.Sequential)


def test_prune_zeroes_exactly_the_smallest():
    w = torch.tensor([[0.5, -0.1, 0.3, -0.7], [0.05, 0.2, -0.9, 0.0]])
    mask = magnitude_mask(w, 0.5)
    assert mask.sum() == 4
    assert torch.equal(w[mask].abs().sort().values, torch.tensor([0.3, 0.5, 0.7, 0.9]))


@pytest.mark.parametrize("kind", MODELS)
def test_size_never_grows_as_ratio_grows(kind):
    model = MODELS[kind]()
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    sizes = [_size(model, Policy.of({n: [Prune(ratio=r)] for n in layers})) for r in
             (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)]
    check_monotone(sizes, "the pruning ratio grew")
    assert sizes[-1] < sizes[0] / 5


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("ratio", [0.0, 0.7])
def test_size_never_grows_as_bits_shrink(kind, ratio):
    model = MODELS[kind]()
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    sizes = [_size(model, Policy.of({n: [Prune(ratio=ratio), Quantize(bits=b)] for n in layers}))
             for b in (32, 8, 7, 6, 5, 4, 3, 2)]
    check_monotone(sizes, "bits shrank")


def test_size_never_grows_as_rank_shrinks():
    model = tiny_mlp(width=64)
    sizes = [_size(model, Policy.of({"3": [LowRank(rank_ratio=r)]})) for r in (1.0, 0.4, 0.25, 0.1)]
    check_monotone(sizes, "the rank shrank")


def test_8bit_weights_snr_at_least_30db():
    w = random_layer(256, 512).weight
    codes, scale = quantize_weight(w, 8)
    assert codes.abs().max() <= 127
    assert snr_db(w, codes.float() * scale[:, None]) >= 30


def test_quantized_layer_is_exactly_codes_times_scale_and_keeps_zeros():
    model = nn.Sequential(random_layer(16, 32))
    compressed = compress(model, Policy.of({"0": [Prune(ratio=0.5), Quantize(bits=4)]}))
    layer = compressed[0]
    assert int((layer.weight == 0).sum()) >= 16 * 32 // 2
    coding = layer.weight_coding
    codes = torch.round(layer.weight / coding.scale[:, None])
    assert codes.abs().max() <= 7
    assert torch.equal(codes * coding.scale[:, None], layer.weight)


def test_primitives_compose_on_svd_factors():
    model = nn.Sequential(random_layer(64, 128))
    compressed = compress(model, Policy.of({"0": [LowRank(rank_ratio=0.25), Prune(ratio=0.5),
                                                   Quantize(bits=4)]}))
    first, second = compressed[0]
    for part in (first, second):
        assert part.weight_coding.bits == 4
        assert int((part.weight == 0).sum()) >= part.weight.numel() // 2
