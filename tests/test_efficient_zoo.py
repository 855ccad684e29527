"""MobileNet-V1, SqueezeNet, ShuffleNet-V1 (and DenseNet-BC's resolution): shapes on both image sizes, the
multipliers doing what they say, the blocks being what the papers describe, and use as KD students."""

import pytest
import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.finetune import FineTuneSpec, finetune
from autocomp.metrics import count_flops, count_params
from autocomp.primitives.substitute import ChannelShuffle
from autocomp.zoo import build_model
from autocomp.zoo.efficient import DepthwiseSeparable, FireModule, ShuffleUnit

EFFICIENT = ["mobilenet_v1", "squeezenet", "shufflenet_v1", "densenet"]


@pytest.mark.parametrize("name", EFFICIENT)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_efficient_models_classify_28x28_and_32x32_images(name, shape):
    model = build_model(name, {"in_channels": shape[0], "num_classes": 7})
    assert model(torch.randn(2, *shape)).shape == (2, 7)  # train mode (BatchNorm over the batch)
    assert model.eval()(torch.randn(1, *shape)).shape == (1, 7)


@pytest.mark.parametrize("name", ["mobilenet_v1", "squeezenet", "shufflenet_v1"])
def test_width_scales_parameters_and_resolution_scales_only_the_work(name):
    x = torch.randn(1, 3, 32, 32)
    sizes = [count_params(build_model(name, {"width": w}))[0] for w in (0.25, 0.5, 1.0)]
    assert sizes[0] < sizes[1] < sizes[2]
    full, low = build_model(name).eval(), build_model(name, {"resolution": 0.5}).eval()
    assert count_params(full)[0] == count_params(low)[0]
    assert count_flops(low, x)[0] < 0.5 * count_flops(full, x)[0]  # a quarter of the pixels, about


def test_the_published_sizes():
    assert 3.1e6 < count_params(build_model("mobilenet_v1"))[0] < 3.3e6  # 3.2M without the 1000-way fc
    assert 0.70e6 < count_params(build_model("squeezenet"))[0] < 0.75e6  # 0.72M in the paper (v1.1)
    assert 0.85e6 < count_params(build_model("shufflenet_v1", {"groups": 3}))[0] < 0.95e6


def test_the_blocks_are_the_papers():
    mobilenet = build_model("mobilenet_v1", {"width": 0.25})
    blocks = [m for m in mobilenet.modules() if isinstance(m, DepthwiseSeparable)]
    assert len(blocks) == 13 and all(b.depthwise.groups == b.depthwise.in_channels for b in blocks)
    squeezenet = build_model("squeezenet")
    fires = [m for m in squeezenet.modules() if isinstance(m, FireModule)]
    assert len(fires) == 8 and all(f.squeeze.out_channels < f.expand1.out_channels for f in fires)
    assert not any(isinstance(m, nn.Linear) for m in squeezenet.modules())  # conv10 classifies
    shufflenet = build_model("shufflenet_v1", {"groups": 4})
    units = [m for m in shufflenet.modules() if isinstance(m, ShuffleUnit)]
    assert len(units) == 16 and units[0].conv1.groups == 1 and all(u.conv1.groups == 4 for u in units[1:])
    assert all(isinstance(u.shuffle, ChannelShuffle) and u.conv2.groups == 4 for u in units)


def test_the_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)  # groups of 3: [0 1 2] [3 4 5]
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("name, kwargs", [("mobilenet_v1", {"width": 0}), ("squeezenet", {"resolution": 9}),
                                          ("shufflenet_v1", {"groups": 5})])
def test_bad_multipliers_are_refused_by_name(name, kwargs):
    with pytest.raises(AutocompError, match="rejected its kwargs"):
        build_model(name, kwargs)


def test_a_small_mobilenet_learns_from_a_larger_teacher():
    """Pure distillation (alpha 1): the student's outputs move towards the teacher's."""
    torch.manual_seed(0)
    teacher = build_model("resnet20").eval()
    student = build_model("mobilenet_v1", {"width": 0.25})
    x = torch.randn(96, 3, 32, 32)
    data = (x, torch.zeros(96, dtype=torch.long))

    def disagreement():
        with torch.no_grad():
            t = torch.softmax(teacher(x) / 4, dim=1)
            return float(nn.functional.kl_div(torch.log_softmax(student.eval()(x) / 4, dim=1), t,
                                              reduction="batchmean"))

    before = disagreement()
    finetune(student.train(), data, FineTuneSpec(epochs=4, batch_size=32, lr=3e-3, kd_alpha=1.0), teacher=teacher)
    assert disagreement() < 0.5 * before
