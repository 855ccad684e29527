import itertools

import pytest
import torch
from torch import nn

from autocomp.compress import compress
from autocomp.policy import Policy
from autocomp.primitives import LowRank, Prune
from autocomp.primitives.lowrank import (
    choose_rank,
    factorize_linear,
    lowrank_layer,
    spatial_svd_conv,
    tucker2_conv,
)

RATIOS = [round(0.1 * i, 1) for i in range(1, 11)]
METHODS = ["auto", "svd", "tucker2", "spatial"]


def _rel_error(reference: nn.Module, candidate: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want, got = reference(x), candidate(x)
    assert got.shape == want.shape
    return float((got - want).norm() / want.norm())


def _weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _conv(cin, cout, kernel, seed=0, **kwargs) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, kernel, **kwargs)


CONV_CASES = list(itertools.product([1, 2], [0, 1], [1, 2], [True, False]))  # stride, padding, dilation, bias


@pytest.mark.parametrize("stride,padding,dilation,bias", CONV_CASES)
def test_full_rank_tucker2_reproduces_conv(stride, padding, dilation, bias):
    layer = _conv(5, 7, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    factored = tucker2_conv(layer, 7, 5)
    assert [type(m) for m in factored] == [nn.Conv2d] * 3
    assert all(m.weight.dtype == torch.float32 for m in factored)
    assert _rel_error(layer, factored, torch.randn(2, 5, 11, 13)) < 1e-4


@pytest.mark.parametrize("kernel", [3, (3, 5)])
@pytest.mark.parametrize("stride,padding,dilation,bias", CONV_CASES)
def test_full_rank_spatial_svd_reproduces_conv(kernel, stride, padding, dilation, bias):
    layer = _conv(4, 6, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    kh, kw = layer.kernel_size
    factored = spatial_svd_conv(layer, min(4 * kh, 6 * kw))
    assert [m.kernel_size for m in factored] == [(kh, 1), (1, kw)]
    assert _rel_error(layer, factored, torch.randn(2, 4, 12, 15)) < 1e-4


def test_full_rank_spatial_svd_with_asymmetric_stride_padding_dilation():
    layer = _conv(3, 5, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), padding_mode="reflect")
    assert _rel_error(layer, spatial_svd_conv(layer, 15), torch.randn(2, 3, 10, 14)) < 1e-4


def test_full_rank_tucker2_with_reflect_padding_and_wide_output():
    layer = _conv(2, 24, 3, padding=1, padding_mode="reflect")  # out > in*kh*kw: rank capped at 18
    assert _rel_error(layer, tucker2_conv(layer, 24, 2), torch.randn(2, 2, 9, 9)) < 1e-4


def test_full_rank_svd_of_linear():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    factored = factorize_linear(layer, 24)
    assert [type(m) for m in factored] == [nn.Linear, nn.Linear]
    assert _rel_error(layer, factored, torch.randn(8, 24)) < 1e-5


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_full_rank_svd_of_1x1_conv(stride, padding):
    layer = _conv(12, 20, 1, stride=stride, padding=padding)
    factored = factorize_linear(layer, 12)
    assert [type(m) for m in factored] == [nn.Conv2d, nn.Conv2d]
    assert _rel_error(layer, factored, torch.randn(2, 12, 7, 9)) < 1e-5


def test_choose_rank_full_at_energy_and_ratio_one():
    s = torch.linalg.svdvals(torch.randn(20, 30, dtype=torch.float64))
    assert choose_rank(s, 1.0, 1.0) == 20


def test_choose_rank_energy_on_known_singular_values():
    s = torch.tensor([50.0, 30.0, 10.0, 5.0, 5.0]).sqrt()  # squares sum to 100: cumulative .5 .8 .9 .95 1
    assert choose_rank(s, 1.0, 0.9) == 3
    assert choose_rank(s, 1.0, 0.85) == 3
    assert choose_rank(s, 1.0, 0.8) == 2
    assert choose_rank(s, 1.0, 0.91) == 4
    assert choose_rank(s, 1.0, 0.01) == 1


def test_choose_rank_takes_the_smaller_criterion():
    s = torch.tensor([50.0, 30.0, 10.0, 5.0, 5.0]).sqrt()
    assert choose_rank(s, 0.2, 0.95) == 1  # ratio: ceil(1.0) = 1; energy: 4
    assert choose_rank(s, 0.6, 0.5) == 1  # ratio: 3; energy: 1
    assert choose_rank(s, 0.6, 0.95) == 3  # ratio: 3; energy: 4
    assert choose_rank(torch.ones(30), 0.1, 1.0) == 3  # ceil(0.1 * 30) despite float noise
    assert choose_rank(torch.ones(30), 0.01, 1.0) == 1


LAYERS = {
    "linear": lambda: nn.Linear(48, 32),
    "conv1x1": lambda: nn.Conv2d(32, 48, 1, stride=2),
    "conv3x3": lambda: nn.Conv2d(16, 32, 3, padding=1, stride=2),
    "conv3x5": lambda: nn.Conv2d(16, 24, (3, 5), dilation=(2, 1), padding=(2, 2)),
}


def _input(layer: nn.Module) -> torch.Tensor:
    return torch.randn(2, 48) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 11, 12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", LAYERS)
def test_handler_keeps_shapes_and_only_ever_shrinks(kind, method):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    x = _input(layer)
    with torch.no_grad():
        want = layer(x)
    sizes = []
    for ratio in sorted(RATIOS, reverse=True):
        out = lowrank_layer(layer, LowRank(rank_ratio=ratio, method=method))
        if out is not layer:
            assert isinstance(out, nn.Sequential)
            assert all(isinstance(m, type(layer)) for m in out)
            assert _weights(out) < _weights(layer)
        with torch.no_grad():
            assert out(x).shape == want.shape
        sizes.append(_weights(out))
    assert sizes == sorted(sizes, reverse=True), f"weights grew as rank_ratio shrank: {sizes}"
    assert sizes[0] == _weights(layer)  # ratio 1.0 never factors (it could not shrink)
    assert sizes[-1] < _weights(layer)  # ratio 0.1 always does, for these shapes


@pytest.mark.parametrize("method", METHODS)
def test_handler_uses_energy(method):
    layer = _conv(16, 16, 3)
    full = lowrank_layer(layer, LowRank(rank_ratio=0.5, method=method))
    lower = lowrank_layer(layer, LowRank(rank_ratio=0.5, energy=0.3, method=method))
    assert _weights(lower) < _weights(full)


def test_handler_returns_the_layer_where_factoring_cannot_shrink():
    torch.manual_seed(0)
    linear = nn.Linear(32, 32)
    assert lowrank_layer(linear, LowRank(rank_ratio=0.6)) is linear  # 20 * 64 >= 1024
    assert isinstance(lowrank_layer(linear, LowRank(rank_ratio=0.4)), nn.Sequential)  # 13 * 64 < 1024
    tiny = _conv(2, 2, 3)  # Tucker-2 at rank 1: 2 + 9 + 2 = 13 < 36, but at ratio 1: 4 + 36 + 4 >= 36
    assert lowrank_layer(tiny, LowRank(rank_ratio=0.99, energy=0.999, method="tucker2")) is tiny
    grouped = nn.Conv2d(8, 8, 3, groups=2)
    assert lowrank_layer(grouped, LowRank(rank_ratio=0.1)) is grouped


def test_method_fallbacks():
    torch.manual_seed(0)
    linear = nn.Linear(48, 32)
    for method in METHODS:
        out = lowrank_layer(linear, LowRank(rank_ratio=0.25, method=method))
        assert [type(m) for m in out] == [nn.Linear, nn.Linear]
    conv = nn.Conv2d(16, 16, 3)
    svd = lowrank_layer(conv, LowRank(rank_ratio=0.25, method="svd"))
    auto = lowrank_layer(conv, LowRank(rank_ratio=0.25, method="auto"))
    assert [m.kernel_size for m in svd] == [m.kernel_size for m in auto] == [(1, 1), (3, 3), (1, 1)]
    spatial = lowrank_layer(conv, LowRank(rank_ratio=0.25, method="spatial"))
    assert [m.kernel_size for m in spatial] == [(3, 1), (1, 3)]


def test_compress_prunes_the_factors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(),
                          nn.Linear(16 * 6 * 6, 10))
    policy = Policy.of({
        "0": [LowRank(rank_ratio=0.5, method="tucker2"), Prune(ratio=0.5)],
        "2": [LowRank(rank_ratio=0.4, method="spatial"), Prune(ratio=0.5)],  # 0.5 would not shrink
        "4": [LowRank(rank_ratio=0.5), Prune(ratio=0.5)],
    })
    compressed = compress(model, policy)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert compressed(x).shape == model(x).shape
    assert isinstance(model[0], nn.Conv2d)  # the input is untouched
    assert [len(compressed[i]) for i in (0, 2, 4)] == [3, 2, 2]
    for i in (0, 2, 4):
        for factor in compressed[i]:
            zeros = int((factor.weight == 0).sum())
            assert 2 * zeros >= factor.weight.numel()
