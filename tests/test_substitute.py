"""Efficient-block substitution: exact at full size, refit to the layer's outputs, smaller as knobs tighten,
and through the whole pipeline (YAML, compress with prune and quantize, packed file, reload)."""

import pytest
import torch
from torch import nn

from autocomp.artifacts import artifact_meta, load_packed, pack_model
from autocomp.compress import compress
from autocomp.config import parse_run_spec
from autocomp.errors import SpaceError
from autocomp.policy import Policy
from autocomp.primitives import Prune, Quantize, Substitute
from autocomp.primitives.substitute import (
    ChannelShuffle,
    Fire,
    depthwise_separable,
    fire,
    refit,
    shuffled_group_conv,
    substitute_conv,
)
from autocomp.testing.conformance import check_monotone
from autocomp.zoo import build_model


def correlated_inputs(channels, seed=0, n=48, size=10):
    """Activations that live near a 2-dimensional subspace, as real ones are far from white noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 2, size, size, generator=g)
    return torch.einsum("nchw,dc->ndhw", base, torch.randn(channels, 2, generator=g)) + \
        0.05 * torch.randn(n, channels, size, size, generator=g)


def relative_mse(block, conv, x):
    with torch.no_grad():
        y = conv(x)
        return float((block(x) - y).square().mean() / y.square().mean())


@pytest.mark.parametrize("stride, bias", [(1, True), (2, False)])
def test_full_size_blocks_reproduce_the_layer(stride, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 3, stride=stride, padding=1, bias=bias)
    x = torch.randn(4, 6, 9, 9)
    with torch.no_grad():
        y = conv(x)
        assert torch.allclose(depthwise_separable(conv, 9)(x), y, atol=1e-5)  # m = k*k: every slice exact
        assert torch.allclose(fire(conv, 1.0, 1.0)(x), y, atol=1e-5)  # squeeze keeps all of the input mode
        centre_only = nn.Conv2d(6, 12, 3, stride=stride, padding=1, bias=bias)
        centre_only.weight[:, :, [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]] = 0
        block = fire(centre_only, 1.0, 0.0)  # every output on the 1x1 expand: exact for a centre-only kernel
        assert block.expand3 is None and torch.allclose(block(x), centre_only(x), atol=1e-5)
    pointwise = nn.Conv2d(8, 12, 1, stride=stride, bias=bias)
    x1 = torch.randn(2, 8, 5, 5)
    with torch.no_grad():  # one group: the shuffle is the identity and the grouped conv the layer
        assert torch.allclose(shuffled_group_conv(pointwise, 1)(x1), pointwise(x1), atol=1e-6)


def test_the_shuffle_puts_every_output_back_in_the_layers_channel_order():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 12, 1, bias=True)
    block = shuffled_group_conv(conv, 4)
    assert isinstance(block[1], ChannelShuffle) and block[0].groups == 4
    x = torch.randn(3, 8, 4, 4)
    with torch.no_grad():  # output o reads input group o % 4 only: the layer's weights restricted to it
        masked = conv.weight.clone()
        for o in range(12):
            keep = torch.zeros(8, dtype=torch.bool)
            keep[(o % 4) * 2:(o % 4) * 2 + 2] = True
            masked[o, ~keep] = 0
        expected = nn.functional.conv2d(x, masked, conv.bias)
        assert torch.allclose(block(x), expected, atol=1e-6)


def test_refit_matches_the_layers_outputs_better_than_the_data_free_start():
    torch.manual_seed(2)
    x = correlated_inputs(6)
    conv = nn.Conv2d(6, 12, 3, padding=1)
    pointwise = nn.Conv2d(6, 12, 1, bias=False)
    for block, layer in ((depthwise_separable(conv, 1), conv), (fire(conv, 0.34, 0.5), conv),
                         (shuffled_group_conv(pointwise, 2), pointwise)):
        before = relative_mse(block, layer, x)
        refit(block, layer, x, torch.Generator().manual_seed(0))
        after = relative_mse(block, layer, x)
        assert after < 0.9 * before, (type(block), before, after)


def test_blocks_shrink_as_their_knobs_tighten_and_never_outgrow_the_layer():
    torch.manual_seed(3)
    conv = nn.Conv2d(32, 64, 3, padding=1)
    weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
    check_monotone([weights(substitute_conv(conv, Substitute(block="dwsep", multiplier=m))) for m in (8, 4, 2, 1)],
                   "dwsep weights as the multiplier falls")
    check_monotone([weights(substitute_conv(conv, Substitute(block="fire", squeeze=s, expand3=0.5)))
                    for s in (1.0, 0.5, 0.25, 0.125)], "fire weights as the squeeze falls")
    check_monotone([weights(substitute_conv(nn.Conv2d(32, 64, 1), Substitute(block="shuffle", groups=g)))
                    for g in (1, 2, 4, 8)], "grouped weights as the groups grow")
    assert substitute_conv(conv, Substitute(block="dwsep", multiplier=64)) is conv  # would be larger: kept
    assert substitute_conv(conv, Substitute(block="shuffle", groups=4)) is conv  # not a 1x1 conv
    assert substitute_conv(nn.Conv2d(30, 64, 1), Substitute(block="shuffle", groups=4)) is not None
    assert substitute_conv(nn.Conv2d(30, 64, 1), Substitute(block="shuffle", groups=4)).__class__ is nn.Conv2d


def test_identity_config_is_exact_and_blocks_combine_with_prune_and_quantize_through_the_packed_file():
    torch.manual_seed(4)
    model = build_model("resnet20").eval()
    x = torch.randn(16, 3, 32, 32)
    calibration = (x, torch.zeros(16, dtype=torch.long))
    same = compress(model, Policy.of({"layer1.0.conv1": [Substitute(block="none")]}), example=x[:1],
                    calibration=calibration)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    policy = Policy.of({
        "layer1.0.conv1": [Substitute(block="dwsep", multiplier=2), Prune(ratio=0.3), Quantize(bits=6)],
        "layer2.0.conv2": [Substitute(block="fire", squeeze=0.5, expand3=0.5), Quantize(bits=8)],
        "layer2.0.shortcut.0": [Substitute(block="shuffle", groups=4), Quantize(bits=8)],
    })
    compressed = compress(model, policy, example=x[:1], calibration=calibration)
    assert isinstance(compressed.layer2[0].conv2, Fire)
    assert isinstance(compressed.layer2[0].shortcut[0][1], ChannelShuffle)
    assert compressed.layer1[0].conv1[0].groups == 16  # depthwise
    meta = artifact_meta({"name": "resnet20", "kwargs": {}}, policy, [3, 32, 32])
    data = pack_model(compressed, meta)
    plain = pack_model(compress(model, Policy.of({}), example=x[:1]), artifact_meta(
        {"name": "resnet20", "kwargs": {}}, Policy.of({}), [3, 32, 32]))
    assert len(data) < len(plain)
    with torch.no_grad():
        reloaded = load_packed_bytes(data, model)
        assert torch.allclose(reloaded(x), compressed(x), atol=1e-5)


def load_packed_bytes(data, model):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.acz"
        path.write_bytes(data)
        return load_packed(path, model=model)


def test_the_loader_reads_substitute_and_refuses_unknown_blocks():
    base = """\
version: 1
model: {name: resnet20}
data: {name: cifar10}
groups:
  - name: convs
    layers: ["re:layer\\\\d\\\\.\\\\d\\\\.conv\\\\d"]
    primitives:
      substitute: {block: {choice: [none, dwsep, fire]}, multiplier: {choice: [1, 2]}, squeeze: 0.25}
      quantize: {bits: {choice: [4, 8]}}
"""
    spec = parse_run_spec(base, file="s.yaml")
    bound = spec.space.bind(build_model("resnet20"))
    assert any(p.knob == "substitute.block" for p in bound.params)
    with pytest.raises(SpaceError, match="substitute.block"):
        parse_run_spec(base.replace("[none, dwsep, fire]", "[none, inception]"), file="s.yaml")
