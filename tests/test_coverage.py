"""Coverage before anything runs: low rank keeps the layer's face, grouped convs under channels, refusals by name."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autocomp
from autocomp.artifacts import artifact_meta, load_packed, pack_model
from autocomp.cli import coverage_table
from autocomp.compress import compress
from autocomp.errors import SpaceError
from autocomp.policy import Policy
from autocomp.primitives import CONFIGS, HANDLERS, STAGES, LowRank, PrimitiveConfig
from autocomp.primitives.coverage import SUPPORTS
from autocomp.primitives.lowrank import (
    FactorizedConv2d,
    FactorizedLinear,
    factorize_linear,
    lowrank_layer,
    spatial_svd_conv,
    tucker2_conv,
)
from autocomp.space import SearchSpace
from autocomp.testing.nets import grouped_net


def _rel(want: torch.Tensor, got: torch.Tensor) -> float:
    assert got.shape == want.shape
    return float((got - want).norm() / want.norm())


# -- low rank keeps the module's face ----------------------------------------------------------------------


def test_full_rank_factorized_linear_reproduces_and_looks_like_a_linear():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    factored = factorize_linear(layer, 24)
    assert isinstance(factored, FactorizedLinear)
    x = torch.randn(8, 24)
    with torch.no_grad():
        assert _rel(layer(x), factored(x)) < 1e-5
        assert (factored.in_features, factored.out_features) == (24, 40)
        assert factored.bias is factored[-1].bias
        assert torch.allclose(factored.weight, factored[1].weight @ factored[0].weight)
        assert _rel(layer.weight, factored.weight) < 1e-5
        assert _rel(layer(x), F.linear(x, factored.weight, factored.bias)) < 1e-5  # what attention code does
    assert factored.dtype == torch.float32 and factored.device == layer.weight.device
    with pytest.raises((AttributeError, KeyError)):
        factored.weight = nn.Parameter(torch.zeros(40, 24))  # read-only: the factors are the parameters


@pytest.mark.parametrize("method,kernel,stride,padding,dilation", [
    ("tucker2", 3, 1, 1, 1), ("tucker2", 3, 2, 0, 2), ("spatial", (3, 5), (2, 1), (1, 2), (1, 2)),
    ("svd", 1, 2, 0, 1),
])
def test_full_rank_factorized_conv_reproduces_and_looks_like_a_conv(method, kernel, stride, padding, dilation):
    torch.manual_seed(0)
    layer = nn.Conv2d(6, 8, kernel, stride=stride, padding=padding, dilation=dilation)
    kh, _ = layer.kernel_size
    # full rank (more weights than the layer, so the handler would keep it whole): built directly
    factored = {"tucker2": lambda: tucker2_conv(layer, 8, 6), "spatial": lambda: spatial_svd_conv(layer, 6 * kh),
                "svd": lambda: factorize_linear(layer, 6)}[method]()
    assert isinstance(factored, FactorizedConv2d)
    assert isinstance(lowrank_layer(layer, LowRank(rank_ratio=0.2, method=method)), FactorizedConv2d)
    x = torch.randn(2, 6, 13, 15)
    with torch.no_grad():
        assert _rel(layer(x), factored(x)) < 1e-5
        assert _rel(layer.weight, factored.weight) < 1e-5  # the product is the layer's kernel
        direct = F.conv2d(x, factored.weight, factored.bias, factored.stride, factored.padding, factored.dilation,
                          factored.groups)
        assert _rel(layer(x), direct) < 1e-5
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(factored, name) == getattr(layer, name), name


class _Logits(nn.Module):
    """A transformers model's logits (its ModelOutput), so every model here returns a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out


def _encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()


def _mobilenet_v2(seed: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.MobileNetV2Config(image_size=32, depth_multiplier=0.35, num_labels=10)
    return _Logits(transformers.MobileNetV2ForImageClassification(config)).eval()


def _vit(seed: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=10)
    return _Logits(transformers.ViTForImageClassification(config)).eval()


MODELS = {"transformer_encoder": (_encoder, (2, 5, 32)), "mobilenet_v2": (_mobilenet_v2, (2, 3, 32, 32)),
          "vit": (_vit, (2, 3, 32, 32))}


@pytest.mark.parametrize("name", list(MODELS))
def test_models_that_read_their_layers_run_after_lowrank_and_reload_exactly(name, tmp_path):
    build, shape = MODELS[name]
    model = build(0)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
              and not (isinstance(m, nn.Conv2d) and m.groups > 1)]
    policy = Policy.of({n: [LowRank(rank_ratio=0.25)] for n in layers})
    x = torch.randn(shape)
    compressed = compress(model, policy, example=x[:1])
    factored = [m for m in compressed.modules() if isinstance(m, (FactorizedLinear, FactorizedConv2d))]
    assert len(factored) >= len(layers) // 2  # most layers were factorised (the rest would not shrink)
    with torch.no_grad():
        out = compressed(x)
    assert out.shape == model(x).shape and torch.isfinite(out).all()
    path = tmp_path / "m.acz"
    path.write_bytes(pack_model(compressed, artifact_meta(None, policy, shape[1:])))
    reloaded = load_packed(path, model=build(1))  # other weights: only the architecture is reused
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)


# -- coverage: refusals by layer, primitive and reason -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Picky(PrimitiveConfig):
    """A toy primitive that refuses layers whose names start with 'fc2'."""

    NAME: ClassVar[str] = "picky"
    KNOBS: ClassVar[dict] = {"level": autocomp.primitives.KnobRange(kind=int, low=0, high=1)}
    level: int = 0

    def is_identity(self) -> bool:
        return not self.level


@pytest.fixture
def picky():
    before = (dict(CONFIGS), list(STAGES), dict(HANDLERS), dict(SUPPORTS))

    def refuse_fc2(module, name, model, example):
        return "fc2 is kept whole by this toy" if name.startswith("fc2") else None

    autocomp.register_primitive(Picky, layer=lambda layer, config: layer, supports=refuse_fc2)
    yield Picky
    CONFIGS.clear(), CONFIGS.update(before[0])
    STAGES[:] = before[1]
    HANDLERS.clear(), HANDLERS.update(before[2])
    SUPPORTS.clear(), SUPPORTS.update(before[3])


MLP_SPACE = """\
groups:
  - name: fc
    layers: ["type:Linear"]
    primitives:
      prune: {ratio: {float: [0.0, 0.9]}}
      picky: {level: {int: [0, 1]}}
"""


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_coverage_rows_and_table_name_the_refused_layer_and_reason(picky):
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(8, 16))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(16, 4))
    space = SearchSpace.from_yaml(MLP_SPACE, file="space.yaml")
    rows = space.coverage(model)
    assert [(r.layer, r.primitive, r.reason) for r in rows] == [
        ("fc1", "prune", None), ("fc2", "prune", None),
        ("fc1", "picky", None), ("fc2", "picky", "fc2 is kept whole by this toy")]
    table = coverage_table(rows)
    assert "3 of 4 (layer, primitive) pairs supported, 1 refused" in table
    assert any(line.split()[:3] == ["fc2", "picky", "refused:"] and line.endswith("kept whole by this toy")
               for line in table.splitlines())
    with pytest.raises(SpaceError) as err:
        space.bind(model)
    text = str(err.value)
    assert text.startswith("space.yaml:6: ") and "groups.fc.primitives.picky" in text
    assert "'picky' cannot compress layer 'fc2'" in text and "kept whole by this toy" in text


def test_default_coverage_is_the_primitives_layer_kinds():
    rows = SearchSpace.from_yaml(MLP_SPACE.replace("      picky: {level: {int: [0, 1]}}\n", "")).coverage(_mlp())
    assert [r.reason for r in rows] == [None, None]


# -- channels on grouped and depthwise convolutions ---------------------------------------------------------


@pytest.mark.parametrize("criterion", ["l1", "bn_scale"])
def test_grouped_depthwise_se_concat_net_runs_at_every_ratio(criterion):
    model = grouped_net()
    x = torch.randn(2, 3, 16, 16)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    space = SearchSpace.from_dict([{"name": "c", "layers": ["type:Conv2d"],
                                    "primitives": {"channels": {"ratio": {"float": [0.0, 0.9]}}}}])
    assert all(r.reason is None for r in space.coverage(model, example=x[:1]))
    sizes = []
    for ratio in [i / 10 for i in range(10)]:
        compressed = compress(model, Policy.of({n: [autocomp.Channels(ratio=ratio, criterion=criterion)]
                                                for n in convs}), example=x[:1])
        with torch.no_grad():
            assert compressed(x).shape == (2, 10), ratio
        grouped = compressed.grouped
        assert grouped.out_channels % 4 == 0 and grouped.in_channels % 4 == 0
        assert compressed.dw.groups == compressed.dw.in_channels == compressed.dw.out_channels
        sizes.append(sum(p.numel() for p in compressed.parameters()))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 2


def test_a_grouped_conv_fed_by_a_concatenation_is_refused_by_name():
    model = grouped_net(mix_groups=4)
    space = SearchSpace.from_dict([{"name": "c", "layers": ["type:Conv2d"],
                                    "primitives": {"channels": {"ratio": {"float": [0.0, 0.9]}}}}])
    x = torch.randn(1, 3, 16, 16)
    refused = {r.layer: r.reason for r in space.coverage(model, example=x) if r.reason}
    assert set(refused) == {"pw", "side"}
    assert "grouped conv 'mix' (groups=4)" in refused["pw"]
    with pytest.raises(SpaceError, match="'channels' cannot compress layer 'pw'"):
        space.bind(model, example=x)


def test_tiny_search_over_the_grouped_net_has_no_failed_trial(tmp_path):
    model = grouped_net()
    torch.manual_seed(1)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    space = SearchSpace.from_dict([
        {"name": "conv", "layers": ["type:Conv2d"],
         "primitives": {"channels": {"ratio": {"float": [0.0, 0.9]}}, "prune": {"ratio": {"float": [0.0, 0.9]}},
                        "quantize": {"bits": {"choice": [4, 8]}}}},
        {"name": "fc", "layers": ["type:Linear"], "primitives": {"quantize": {"bits": {"choice": [4, 8]}}}},
    ])
    result = autocomp.search(model, (x, y), space=space, trials=10, seed=0, runs_dir=tmp_path, name="g",
                             progress=False, latency=autocomp.LatencySpec(batch_size=4, threads=1, warmup=1,
                                                                          repeats=1))
    assert len(result.trials) >= 10
    assert [t for t in result.trials if t.status == "failed"] == [], [t.error for t in result.trials]
