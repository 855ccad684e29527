"""Group-wise weight quantization (`quantize.group_size`): its scales, its packed form and fine-tuning on it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import autocomp
from autocomp.config import parse_run_spec
from autocomp.errors import AutocompError, PackedFormatError, SpaceError
from autocomp.finetune import FineTuneSpec, finetune
from autocomp.layers import weight_of
from autocomp.packed import WeightCoding, load_into, pack, tensor_report
from autocomp.packed.format import scale_map
from autocomp.policy import Policy
from autocomp.primitives import Quantize
from autocomp.testing.tiny import tiny_data


def _linear():
    return nn.Sequential(nn.Linear(100, 12)), torch.randn(4, 100)  # 100 inputs: groups of 32 end with 4


def _conv2d():
    return nn.Sequential(nn.Conv2d(5, 8, 3)), torch.randn(2, 5, 6, 6)  # fan-in 45


def _embedding():
    return nn.Sequential(nn.Embedding(30, 100)), torch.randint(0, 30, (3, 7))


def _conv1d_gpt2():
    return nn.Sequential(Conv1D(12, 100)), torch.randn(4, 100)  # weight (in 100, out 12)


KINDS = {"Linear": _linear, "Conv2d": _conv2d, "Embedding": _embedding, "Conv1D": _conv1d_gpt2}


def _build(kind: str, outlier: bool = True) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model, x = KINDS[kind]()
    if not outlier:
        return model.eval(), x
    with torch.no_grad():  # one large weight per output channel: group scales then differ from channel ones
        w = weight_of(model[0])
        rows = w.t() if kind == "Conv1D" else w.reshape(w.shape[0], -1)
        rows[:, 0] = 8.0
    return model.eval(), x


def _rows(kind: str, w: torch.Tensor) -> torch.Tensor:
    """The weight as (output channel, its inputs in memory order), computed independently of autocomp."""
    return w.t() if kind == "Conv1D" else w.reshape(w.shape[0], -1)


def _compress(model: nn.Module, knobs: dict) -> nn.Module:
    return autocomp.compress(model, {"0": knobs})


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_each_group_has_its_own_scale_and_error_within_half_a_step(kind, bits):
    model, _ = _build(kind)
    group = 32
    original = _rows(kind, weight_of(model[0]).detach())
    layer = _compress(model, {"quantize": {"bits": bits, "group_size": group}})[0]
    coding = layer.weight_coding
    quantized = _rows(kind, weight_of(layer).detach())
    qmax = 2 ** (bits - 1) - 1
    n_groups = math.ceil(original.shape[1] / group)
    assert tuple(coding.scale.shape) == (original.shape[0], n_groups) and coding.group_size == group
    for g in range(n_groups):
        cols = slice(g * group, (g + 1) * group)  # the last group is shorter (100 or 45 inputs)
        step = original[:, cols].abs().amax(dim=1) / qmax
        assert torch.allclose(coding.scale[:, g], step, rtol=1e-6)
        error = (original[:, cols] - quantized[:, cols]).abs()
        assert bool((error <= step.unsqueeze(1) / 2 * (1 + 1e-5)).all()), g
        codes = quantized[:, cols] / step.unsqueeze(1)
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= qmax + 1e-4
    # the outlier sits in group 0 only: the other groups get finer steps than a per-channel scale would
    assert bool((coding.scale[:, 1:] < coding.scale[:, :1]).all())


def _snr(model: nn.Module, knobs: dict) -> float:
    weight = weight_of(model[0]).detach()
    got = weight_of(_compress(model, {"quantize": knobs})[0]).detach()
    return 10 * math.log10(float(weight.pow(2).sum() / (weight - got).pow(2).sum()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_eight_bit_groups_keep_40_db(kind):
    model, _ = _build(kind, outlier=False)
    for group in (16, 32, 64):
        assert _snr(model, {"bits": 8, "group_size": group}) >= 40, group


@pytest.mark.parametrize("kind", list(KINDS))
def test_small_groups_isolate_an_outlier(kind):
    model, _ = _build(kind)
    length = _rows(kind, weight_of(model[0])).shape[1]
    # one scale per output channel (group = the whole input dim) vs groups of 16: the outlier's group only
    # keeps the coarse step
    assert _snr(model, {"bits": 4, "group_size": 16}) > _snr(model, {"bits": 4, "group_size": length}) + 1


@pytest.mark.parametrize("kind", ["Linear", "Conv2d", "Embedding"])
@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_group_as_long_as_the_input_dim_is_per_channel_exactly(kind, bits):
    model, x = _build(kind)
    length = _rows(kind, weight_of(model[0])).shape[1]
    per_channel = _compress(model, {"quantize": {"bits": bits}})
    for group in (length, 10 * length):
        grouped = _compress(model, {"quantize": {"bits": bits, "group_size": group, "per_channel": 0}})
        assert torch.equal(weight_of(grouped[0]), weight_of(per_channel[0]))
        assert grouped[0].weight_coding == per_channel[0].weight_coding
        assert pack(grouped) == pack(per_channel)
    # one weight less per group: two groups per row, a different (finer) coding
    split = _compress(model, {"quantize": {"bits": bits, "group_size": length - 1}})
    assert tuple(split[0].weight_coding.scale.shape) == (_rows(kind, weight_of(model[0])).shape[0], 2)


def test_conv1d_groups_run_along_its_input_dim():
    model, _ = _build("Conv1D")
    coding = _compress(model, {"quantize": {"bits": 4, "group_size": 1000}})[0].weight_coding
    w = weight_of(model[0]).detach()  # (in, out): one group per output column, the column's max |w|
    assert coding.axis == 1 and torch.allclose(coding.scale[:, 0], w.abs().amax(dim=0) / 7, rtol=1e-6)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("prune", [0.0, 0.6])
@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_packed_round_trip_is_bit_exact(kind, prune, bits):
    model, x = _build(kind)
    policy = Policy.from_dict({"0": {"prune": {"ratio": prune}, "quantize": {"bits": bits, "group_size": 32}}})
    compressed = autocomp.compress(model, policy)
    weight = weight_of(compressed[0])
    if prune:
        assert int((weight == 0).sum()) >= round(prune * weight.numel())  # pruned zeros stay zero
    data = pack(compressed)
    reloaded = load_into(autocomp.compress(model, policy, skeleton=True), data)
    for key, tensor in compressed.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key].view(torch.uint8), tensor.view(torch.uint8)), key
    assert reloaded[0].weight_coding == compressed[0].weight_coding
    assert torch.equal(reloaded(x), compressed(x))
    assert pack(reloaded) == data
    rows, groups = compressed[0].weight_coding.scale.shape
    row = next(r for r in tensor_report(data) if r["name"] == "0.weight")
    assert row["scale_bytes"] == 4 * rows * groups  # every group scale is in the file


@pytest.mark.parametrize("kind", list(KINDS))
def test_size_grows_as_groups_shrink_and_never_as_bits_shrink(kind):
    model, _ = _build(kind)
    layer = model[0]
    length = _rows(kind, weight_of(layer)).shape[1]

    def size(bits: int, group: int) -> int:
        return len(pack(_compress(model, {"quantize": {"bits": bits, "group_size": group}})))

    groups = [g for g in (128, 64, 32, 16, 8) if g < length]
    by_group = [size(4, g) for g in groups]
    assert by_group == sorted(by_group) and len(set(by_group)) == len(by_group)
    if kind != "Conv1D":  # Conv1D's per-channel scales are per input row: not the coarsest layout
        assert size(4, 0) < by_group[0]
    model, _ = _build(kind, outlier=False)  # (an outlier would round a whole channel's other weights to 0)
    for group in (0, 64, 16):
        by_bits = [size(b, group) for b in (8, 6, 4, 3, 2, 1)]
        assert by_bits == sorted(by_bits, reverse=True) and by_bits[-1] < by_bits[0]


def _tiny_models() -> list[nn.Module]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), Conv1D(24, 32), nn.ReLU(), nn.Linear(24, 4))
    return [mlp]


def test_finetuning_keeps_every_group_on_its_grid():
    model = _tiny_models()[0]
    policy = {"1": {"prune": {"ratio": 0.5}, "quantize": {"bits": 4, "group_size": 16}},
              "3": {"quantize": {"bits": 3, "group_size": 8}},
              "5": {"quantize": {"bits": 2, "group_size": 12}}}
    compressed = autocomp.compress(model, policy)
    before = {name: weight_of(compressed.get_submodule(name)).detach().clone() for name in policy}
    codings = {name: compressed.get_submodule(name).weight_coding for name in policy}
    finetune(compressed, tiny_data(256), FineTuneSpec(epochs=1, lr=1e-2, batch_size=32))
    moved = 0
    for name, coding in codings.items():
        layer = compressed.get_submodule(name)
        assert layer.weight_coding is coding and coding.group_size > 0  # the grouped layout is kept
        w = weight_of(layer).detach()
        scales = scale_map(coding.scale, w.shape, coding.group_size, coding.axis)
        codes = torch.round(w / scales)
        assert torch.equal(codes * scales, w), name  # exactly code x group scale
        assert codes.abs().max() <= 2 ** (coding.bits - 1) - 1
        assert bool((w[before[name] == 0] == 0).all()) if name == "1" else True  # pruned zeros stay zero
        moved += int((w != before[name]).sum())
    assert moved > 0  # the training did change codes
    data = pack(compressed)  # pack re-derives and checks the codes
    skeleton = autocomp.compress(model, policy, skeleton=True)
    assert torch.equal(load_into(skeleton, data)(tiny_data(8)[0]), compressed(tiny_data(8)[0]))


def test_shared_layer_and_params_ignore_group_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    shared = autocomp.compress(model, {"0": {"share": {"bits": 3}, "quantize": {"bits": 4, "group_size": 16}}})
    assert not isinstance(shared[0].weight_coding, WeightCoding)  # the codebook stays the code
    norm = autocomp.compress(model, {"1": {"quantize": {"bits": 4, "group_size": 4}}})[1].weight_coding
    assert norm.group_size == 0 and bool((norm.scale == norm.scale[0]).all())  # one scale per tensor


RUN = """\
version: 1
model:
  name: lenet300
data:
  name: mnist
groups:
  - name: fc
    layers: ["0", "2"]
    primitives:
      quantize: {bits: 4, group_size: {choice: [0, 64, 128]}}
"""


def test_run_file_group_size_parses_and_binds():
    spec = parse_run_spec(RUN)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 4))
    bound = spec.space.bind(model)
    knob = [p for p in bound.params if p.knob.endswith("group_size")]
    assert knob and all(tuple(p.domain.values) == (0, 64, 128) for p in knob)
    params = {p.name: p.domain.values[-1] if p.knob.endswith("group_size") else p.domain.values[0]
              for p in bound.params}
    policy = Policy.from_params(bound, params)
    assert Quantize(bits=4, group_size=128) in policy.for_layer("0")
    compressed = autocomp.compress(model, policy)
    assert tuple(compressed[0].weight_coding.scale.shape) == (32, 2)  # 256 inputs in groups of 128
    assert compressed[2].weight_coding.group_size == 0  # 32 inputs: a group of 128 is per channel
    with pytest.raises(SpaceError, match="group_size"):
        parse_run_spec(RUN.replace("{choice: [0, 64, 128]}", "-8"))


@pytest.mark.parametrize("value", [-8, 1.5, "64"])
def test_bad_group_size_in_a_policy_is_named(value):
    with pytest.raises(AutocompError, match=f"group_size={value!r} on '0'"):
        _compress(nn.Sequential(nn.Linear(64, 8)), {"quantize": {"bits": 4, "group_size": value}})


def test_group_scales_that_do_not_fit_the_weight_are_refused():
    model = _compress(_build("Linear")[0], {"quantize": {"bits": 4, "group_size": 32}})
    coding = model[0].weight_coding
    for bad in (WeightCoding(4, coding.scale, 0), WeightCoding(4, coding.scale[:, :3].contiguous(), 32),
                WeightCoding(4, coding.scale, 64), WeightCoding(4, coding.scale * 2, 32)):
        model[0].weight_coding = bad
        with pytest.raises(PackedFormatError, match="'0.weight'"):
            pack(model)
