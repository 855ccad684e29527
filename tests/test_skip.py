"""Residual-branch removal (`skip`): exact against the block written as its shortcut, smaller and cheaper
as more branches go, composable with the other primitives and the packed file, clear errors elsewhere."""

import copy

import pytest
import torch
from torch import nn

from autocomp.artifacts import artifact_meta, load_packed, pack_model
from autocomp.compress import compress
from autocomp.config import parse_run_spec
from autocomp.errors import AutocompError, SpaceError
from autocomp.metrics import count_flops, count_params
from autocomp.policy import Policy
from autocomp.primitives import Channels, Quantize, Skip
from autocomp.zoo import build_model


class Shortcut(nn.Module):
    """A BasicBlock with its branch zeroed: relu(0 + shortcut(x))."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.shortcut = block.shortcut

    def forward(self, x):
        return torch.relu(self.shortcut(x))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a leftover op would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    return model, torch.randn(8, 3, 32, 32)


def test_identity_config_is_exact(resnet):
    model, x = resnet
    same = compress(model, Policy.of({"layer1.1.conv2": [Skip(drop=0)]}), example=x[:1])
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


@pytest.mark.parametrize("blocks", [["layer1.1"], ["layer1.1", "layer1.2", "layer3.2"], ["layer2.0"]])
def test_removed_branches_equal_the_blocks_written_as_their_shortcuts(resnet, blocks):
    model, x = resnet
    reference = copy.deepcopy(model)
    for block in blocks:  # layer2.0's shortcut is its 1x1 projection: the block becomes that alone
        stage, i = block.split(".")
        getattr(reference, stage)[int(i)] = Shortcut(getattr(reference, stage)[int(i)])
    skipped = compress(model, Policy.of({f"{b}.conv2": [Skip(drop=1)] for b in blocks}), example=x[:1])
    names = {n for n, _ in skipped.named_modules()}
    for block in blocks:
        assert not {f"{block}.conv1", f"{block}.bn1", f"{block}.conv2", f"{block}.bn2"} & names  # gone
    with torch.no_grad():
        assert torch.allclose(skipped(x), reference(x), atol=1e-5)
    removed = sum(p.numel() for b in blocks for n, p in model.named_parameters()
                  if n.startswith(f"{b}.") and ".shortcut." not in n)
    assert count_params(skipped)[0] == count_params(model)[0] - removed


def test_size_and_flops_never_grow_as_more_branches_go(resnet):
    model, x = resnet
    order = ["layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    costs = []
    for k in range(len(order) + 1):
        skipped = compress(model, Policy.of({f"{b}.conv2": [Skip(drop=1)] for b in order[:k]}), example=x[:1])
        costs.append((count_params(skipped)[0], count_flops(skipped, x[:1])))
    assert all(a[0] > b[0] and a[1] > b[1] for a, b in zip(costs, costs[1:]))


def test_skip_combines_with_channels_and_quantize_and_survives_the_packed_file(resnet):
    model, x = resnet
    policy = Policy.of({
        "conv1": [Channels(ratio=0.5, round_to=8)],
        "layer1.0.conv2": [Channels(ratio=0.5, round_to=8)],
        "layer1.1.conv2": [Channels(ratio=0.5, round_to=8), Skip(drop=1), Quantize(bits=4)],  # removed: no-op
        "layer2.1.conv1": [Channels(ratio=0.5, round_to=8), Quantize(bits=8)],
        "layer3.2.conv2": [Skip(drop=1)],
    })
    compressed = compress(model, policy, example=x[:1])
    layer = compressed.get_submodule
    assert layer("layer1.0.conv2").out_channels == 8 and layer("layer2.1.conv1").out_channels == 16
    names = {n for n, _ in compressed.named_modules()}
    assert "layer1.1.conv2" not in names and "layer3.2.conv2" not in names and "layer3.2.conv1" not in names
    data = pack_model(compressed, artifact_meta({"name": "resnet20", "kwargs": {}}, policy, [3, 32, 32]))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "m.acz").write_bytes(data)
        reloaded = load_packed(Path(d) / "m.acz", model=model)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), compressed(x), atol=1e-5)


def test_a_layer_without_a_residual_addition_is_refused_by_name():
    model = build_model("lenet300")
    with pytest.raises(AutocompError, match="skip: .*'fc1'.*used|skip: .*'fc1'"):
        compress(model, Policy.of({"fc1": [Skip(drop=1)]}), example=torch.zeros(1, 1, 28, 28))
    resnet = build_model("resnet20")
    with pytest.raises(AutocompError, match="'layer1.0.conv1'"):  # its output goes on to conv2, not an addition
        compress(resnet, Policy.of({"layer1.0.conv1": [Skip(drop=1)]}), example=torch.zeros(1, 3, 32, 32))


def test_the_loader_reads_skip_and_checks_its_range():
    base = """\
version: 1
model: {name: resnet20}
data: {name: cifar10}
groups:
  - {name: blocks, layers: ["re:layer\\\\d\\\\.[12]\\\\.conv2"], primitives: {skip: {drop: {choice: [0, 1]}}}}
"""
    bound = parse_run_spec(base, file="s.yaml").space.bind(build_model("resnet20"))
    params = [p for p in bound.params if p.knob == "skip.drop"]
    assert len(params) == 6 and all(p.least_compressive() == 0 for p in params)
    with pytest.raises(SpaceError, match="skip.drop"):
        parse_run_spec(base.replace("[0, 1]", "[0, 2]"), file="s.yaml")
