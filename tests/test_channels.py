import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autocomp.primitives.channels  # noqa: F401  (registers the Channels model handler)
from autocomp.compress import compress
from autocomp.errors import AutocompError
from autocomp.policy import Policy
from autocomp.primitives import Channels, CompressContext
from autocomp.primitives.channels import prune_channels
from autocomp.testing.conformance import deepcopy_equal, outputs

CRITERIA = ("l1", "l2", "bn_scale", "taylor")
RATIOS = [i / 10 for i in range(10)]
LAYERS = (nn.Conv2d, nn.Linear)


# ---------------------------------------------------------------- models


class Block(nn.Module):
    """Basic residual block; a 1x1 conv + BN shortcut where the shape changes, else the identity."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.short(x))


class ResCNN(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.b1 = Block(width, width, 1)
        self.b2 = Block(width, 2 * width, 2)
        self.b3 = Block(2 * width, 2 * width, 1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.b3(self.b2(self.b1(F.relu(self.bn(self.stem(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseCNN(nn.Module):
    """A DenseNet-style block (each conv sees the concatenation of all earlier outputs), then an MLP head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, 1, 1)
        self.c1 = nn.Conv2d(12, 8, 3, 1, 1)
        self.c2 = nn.Conv2d(20, 8, 3, 1, 1)
        self.trans = nn.Conv2d(28, 16, 1)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.c1(x))], 1)
        x = torch.cat([x, F.relu(self.c2(x))], 1)
        x = F.adaptive_avg_pool2d(F.relu(self.trans(x)), 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 10))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm distinct gammas and running stats, as in a trained model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 2 - 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def build(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn({"res": ResCNN, "dense": DenseCNN, "mlp": mlp}[kind](), seed)


# layers whose output channels are tied together (pruned as one group); the output layer is never pruned
GROUPS = {
    "res": [["stem", "b1.conv2"], ["b1.conv1"], ["b2.conv1"], ["b2.short.0", "b2.conv2", "b3.conv2"], ["b3.conv1"]],
    "dense": [["stem"], ["c1"], ["c2"], ["trans"], ["fc1"]],
    "mlp": [["1"], ["3"]],
}
OUTPUT_LAYER = {"res": "fc", "dense": "fc2", "mlp": "5"}


def example(kind: str, n: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *((1, 8, 8) if kind == "mlp" else (3, 16, 16)), generator=g)


def calibration(kind: str, model: nn.Module, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x = example(kind, n, seed=2)
    classes = outputs(copy.deepcopy(model).eval(), x[:1]).shape[1]
    return x, torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(3))


def expected_kept(n: int, ratio: float, round_to: int) -> int:
    kept = n - int(round(ratio * n))
    if 1 < round_to <= n:
        kept = max(round_to, kept // round_to * round_to)
    return max(1, kept)


def out_size(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def all_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, LAYERS)]


def check_plain(model: nn.Module, reference: nn.Module) -> None:
    """Plain modules with consistent shapes, no hooks or masks, the same (loadable) state_dict keys."""
    for name, m in model.named_modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), f"hook left on {name}"
        assert not hasattr(m, "parametrizations"), f"parametrization left on {name}"
        if isinstance(m, nn.Conv2d):
            assert type(m) is nn.Conv2d
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups)
            assert m.bias is None or m.bias.shape == (m.out_channels,)
        elif isinstance(m, nn.BatchNorm2d):
            assert type(m) is nn.BatchNorm2d
            assert m.weight.shape == m.bias.shape == m.running_mean.shape == m.running_var.shape == (m.num_features,)
        elif isinstance(m, nn.Linear):
            assert type(m) is nn.Linear
            assert m.weight.shape == (m.out_features, m.in_features)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):  # each BN here directly follows the conv of the same prefix
            conv = model.get_submodule(name.replace("bn", "conv") if name != "bn" else "stem")
            if name.endswith("short.1"):
                conv = model.get_submodule(name[:-1] + "0")
            assert m.num_features == conv.out_channels, name
    state = model.state_dict()
    assert state.keys() == reference.state_dict().keys()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    copy.deepcopy(model).load_state_dict(torch.load(buffer), strict=True)


# ---------------------------------------------------------------- sweeps over ratio x criterion


@pytest.mark.parametrize("round_to", [1, 4])
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("kind", ["res", "dense", "mlp"])
def test_sweep_shapes_and_sizes(kind, criterion, round_to):
    model = build(kind)
    x = example(kind)
    calib = calibration(kind, model) if criterion == "taylor" else None
    reference = outputs(model, x)
    layers = all_layers(model)
    sizes, kept_before = [], None
    for ratio in RATIOS:
        policy = Policy.of({n: [Channels(ratio=ratio, criterion=criterion, round_to=round_to)] for n in layers})
        pruned = compress(model, policy, example=x, calibration=calib)
        assert outputs(pruned, x).shape == reference.shape
        check_plain(pruned, model)
        kept = []
        for group in GROUPS[kind]:
            n = out_size(model.get_submodule(group[0]))
            want = expected_kept(n, ratio, round_to)
            for name in group:
                assert out_size(pruned.get_submodule(name)) == want, (name, ratio)
            if round_to <= n:
                assert want % round_to == 0
            kept.append(want)
        out_layer = OUTPUT_LAYER[kind]
        assert out_size(pruned.get_submodule(out_layer)) == out_size(model.get_submodule(out_layer))
        if ratio == 0.0:
            assert torch.equal(outputs(pruned, x), reference)
        size = n_params(pruned)
        if sizes:
            assert size < sizes[-1] if kept != kept_before else size == sizes[-1], (ratio, size, sizes)
        sizes.append(size)
        kept_before = kept
    assert sizes[-1] < sizes[0]


def test_container_name_stands_for_its_layers():
    model = build("res")
    pruned = compress(model, Policy.of({"b1": [Channels(ratio=0.5)]}), example=example("res"))
    assert pruned.b1.conv1.out_channels == 8
    assert pruned.b1.conv2.out_channels == pruned.stem.out_channels == 8  # coupled by the identity shortcut
    assert pruned.b2.conv1.out_channels == 32


# ---------------------------------------------------------------- identity


@pytest.mark.parametrize("kind", ["res", "dense", "mlp"])
def test_zero_ratio_and_empty_configs_leave_the_model_exactly(kind):
    model = build(kind).train()  # train mode: tracing must not update BatchNorm statistics
    before = copy.deepcopy(model)
    x = example(kind)
    first = all_layers(model)[0]
    for configs in ({}, {first: Channels(ratio=0.0)}, {first: Channels(ratio=0.01)}):  # 0.01 rounds to none
        result = prune_channels(model, configs, CompressContext(example=x))
        assert result is model
        assert model.training and all(m.training for m in model.modules())
        assert deepcopy_equal(model, before)
        assert torch.equal(outputs(model.eval(), x), outputs(before.eval(), x))
        model.train()
        before.train()
    assert n_params(compress(model, Policy.of({n: [Channels()] for n in all_layers(model)}), example=x)) == n_params(
        model)


# ---------------------------------------------------------------- which channels go, and exactness


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3, padding=1)
        self.conv2 = nn.Conv2d(10, 12, 3, padding=1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


def chain(seed: int = 0) -> Chain:
    torch.manual_seed(seed)
    return Chain().eval()


def test_l1_removes_planted_zero_filters_and_is_exact():
    model = chain()
    zero = [1, 4, 6]
    with torch.no_grad():
        model.conv1.weight[zero] = 0.0
        model.conv1.bias[zero] = 0.0
    x = example("res", 8)
    pruned = compress(model, Policy.of({"conv1": [Channels(ratio=0.3, criterion="l1")]}), example=x[:1])
    kept = [i for i in range(10) if i not in zero]
    assert pruned.conv1.out_channels == pruned.conv2.in_channels == 7
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[kept])
    assert torch.equal(pruned.conv2.weight, model.conv2.weight[:, kept])
    torch.testing.assert_close(outputs(pruned.conv1, x), outputs(model.conv1, x)[:, kept], atol=1e-6, rtol=0)
    torch.testing.assert_close(outputs(pruned, x), outputs(model, x), atol=1e-6, rtol=0)


def test_l1_and_l2_rank_by_their_own_norm():
    model = chain()
    with torch.no_grad():
        model.conv1.weight.mul_(10)
        model.conv1.weight[2] = 0.1  # 27 entries of 0.1: l1 2.7, l2 0.52
        model.conv1.weight[5] = 0.0
        model.conv1.weight[5, 0, 1, 1] = 1.0  # a single 1: l1 1.0, l2 1.0
    x = example("res")
    removed = {}
    for criterion in ("l1", "l2"):
        pruned = compress(model, Policy.of({"conv1": [Channels(ratio=0.1, criterion=criterion)]}), example=x)
        left = [i for i in range(10) if not any(torch.equal(model.conv1.weight[i], w) for w in pruned.conv1.weight)]
        removed[criterion] = left
    assert removed == {"l1": [5], "l2": [2]}


def test_taylor_removes_the_smallest_first_order_terms():
    model = chain()
    calib = calibration("res", model, 32)
    loss = F.cross_entropy(model(calib[0]), calib[1])
    (grad,) = torch.autograd.grad(loss, [model.conv1.weight])
    score = (model.conv1.weight * grad).detach().flatten(1).sum(1).abs()
    gone = sorted(torch.argsort(score)[:4].tolist())
    pruned = compress(model, Policy.of({"conv1": [Channels(ratio=0.4, criterion="taylor")]}), example=calib[0][:2],
                      calibration=calib)
    kept = [i for i in range(10) if i not in gone]
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[kept])
    # without calibration data taylor falls back to l1
    plain = compress(model, Policy.of({"conv1": [Channels(ratio=0.4, criterion="taylor")]}), example=calib[0][:2])
    l1 = compress(model, Policy.of({"conv1": [Channels(ratio=0.4, criterion="l1")]}), example=calib[0][:2])
    assert deepcopy_equal(plain, l1)


def test_bn_scale_removes_the_smallest_gammas():
    model = build("res")
    gammas = torch.tensor([0.9, -0.01, 0.5, 0.02, 1.2, -0.8, 0.03, 0.7, 0.6, -0.04, 0.4, 1.1, 0.3, 0.8, 1.0, 0.2])
    with torch.no_grad():
        model.b1.bn1.weight.copy_(gammas)
    pruned = compress(model, Policy.of({"b1.conv1": [Channels(ratio=0.25, criterion="bn_scale")]}),
                      example=example("res"))
    kept = [i for i in range(16) if i not in (1, 3, 6, 9)]
    assert torch.equal(pruned.b1.bn1.weight, gammas[kept])
    assert torch.equal(pruned.b1.conv1.weight, model.b1.conv1.weight[kept])
    assert torch.equal(pruned.b1.conv2.weight, model.b1.conv2.weight[:, kept])


def test_residual_group_scored_by_the_sum_and_pruned_by_the_largest_ratio():
    model = build("res")
    x = example("res")
    policy = Policy.of({"stem": [Channels(ratio=0.25)], "b1.conv2": [Channels(ratio=0.5)]})
    pruned = compress(model, policy, example=x)
    assert pruned.stem.out_channels == pruned.b1.conv2.out_channels == pruned.bn.num_features == 8
    assert pruned.b1.conv1.in_channels == pruned.b2.conv1.in_channels == pruned.b2.short[0].in_channels == 8
    assert pruned.b1.conv1.out_channels == 16
    score = sum(m.weight.detach().flatten(1).abs().sum(1).double() for m in (model.stem, model.b1.conv2))
    kept = sorted(torch.argsort(score, stable=True)[8:].tolist())
    assert torch.equal(pruned.stem.weight, model.stem.weight[kept])
    assert torch.equal(pruned.b1.conv2.weight, model.b1.conv2.weight[kept])
    assert torch.equal(pruned.bn.running_mean, model.bn.running_mean[kept])


def test_residual_removal_of_zero_channels_is_exact():
    model = build("res")
    zero = [3, 7, 11, 12]
    with torch.no_grad():  # channels that are exactly zero all along the identity-shortcut path
        for conv, bn in ((model.stem, model.bn), (model.b1.conv2, model.b1.bn2)):
            conv.weight[zero] = 0.0
            bn.bias[zero] = 0.0
            bn.running_mean[zero] = 0.0
    x = example("res", 8)
    pruned = compress(model, Policy.of({"stem": [Channels(ratio=0.25)]}), example=x)
    kept = [i for i in range(16) if i not in zero]
    assert torch.equal(pruned.b1.conv2.weight, model.b1.conv2.weight[kept])
    torch.testing.assert_close(outputs(pruned, x), outputs(model, x), atol=1e-6, rtol=0)


def test_concatenated_channels_are_removed_exactly():
    model = build("dense")
    zero = [0, 3, 5, 6]
    with torch.no_grad():
        model.c1.weight[zero] = 0.0
        model.c1.bias[zero] = 0.0
    x = example("dense", 8)
    pruned = compress(model, Policy.of({"c1": [Channels(ratio=0.5)]}), example=x)
    assert pruned.c1.out_channels == 4
    assert pruned.c2.in_channels == 16 and pruned.trans.in_channels == 24
    kept = [12 + i for i in range(8) if i not in zero]
    assert torch.equal(pruned.c2.weight[:, 12:], model.c2.weight[:, kept])
    assert torch.equal(pruned.trans.weight[:, 12:16], model.trans.weight[:, kept])
    torch.testing.assert_close(outputs(pruned, x), outputs(model, x), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- the output layer, mutation, determinism


class LogSoftmaxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        return F.log_softmax(self.fc(F.relu(self.conv(x)).mean((2, 3))), dim=1)


@pytest.mark.parametrize("kind", ["res", "dense", "mlp", "logsoftmax", "convout"])
def test_output_layer_is_never_pruned(kind):
    if kind == "logsoftmax":
        model, name, x = LogSoftmaxHead().eval(), "fc", example("res")
    elif kind == "convout":  # a fully convolutional model: its last conv's channels are the output
        model, name, x = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 1)), "2", example("res")
    else:
        model, name, x = build(kind), OUTPUT_LAYER[kind], example(kind)
    pruned = compress(model, Policy.of({name: [Channels(ratio=0.9)]}), example=x)
    assert deepcopy_equal(pruned, model)
    assert torch.equal(outputs(pruned, x), outputs(model, x))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_input_untouched_and_result_deterministic(criterion):
    model = build("res").train()
    before = copy.deepcopy(model)
    x = example("res")
    calib = calibration("res", model)
    x_before, calib_before = x.clone(), (calib[0].clone(), calib[1].clone())
    policy = Policy.of({n: [Channels(ratio=0.5, criterion=criterion)] for n in all_layers(model)})
    first = compress(model, policy, example=x, calibration=calib)
    second = compress(model, policy, example=x, calibration=calib)
    assert deepcopy_equal(model, before) and all(m.training for m in model.modules())
    assert torch.equal(x, x_before)
    assert torch.equal(calib[0], calib_before[0]) and torch.equal(calib[1], calib_before[1])
    assert all(p.grad is None for p in model.parameters())
    assert deepcopy_equal(first, second)
    assert all(p.grad is None and p.requires_grad for p in first.parameters())
    check_plain(first, model)


def test_needs_an_example():
    with pytest.raises(AutocompError):
        compress(build("mlp"), Policy.of({"1": [Channels(ratio=0.5)]}))


def test_a_cut_trace_is_an_error_not_a_silent_no_op():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3)
            self.b = nn.Conv2d(16, 8, 3)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = self.b(self.a(x).detach())
            return self.fc(y.mean((2, 3)))

    model = Detached().eval()
    with pytest.raises(AutocompError, match="cannot follow the outputs of layer"):
        compress(model, Policy.of({"a": [Channels(ratio=0.5)]}), example=torch.randn(2, 3, 16, 16))

