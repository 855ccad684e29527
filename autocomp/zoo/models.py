"""Reference models, built by name from search-space files."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.refs import import_reference, is_reference
from autocomp.zoo.efficient import MobileNetV1, ShuffleNetV1, SqueezeNet, resize


class LeNet300(nn.Module):
    """LeNet-300-100 as in Han et al. 2015: 784-300-100-10, ReLU, 266,610 parameters."""

    def __init__(self, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten the image, then the three fully connected layers: class logits."""
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 as compressed in Han et al. 2015: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10.

    431,080 parameters; like the Caffe model, only the hidden fully connected layer has a ReLU.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two conv-pool stages, then the two fully connected layers: class logits."""
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual; the shortcut is a 1x1 conv + BN (option B) where shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The two conv-BN layers plus the shortcut, then ReLU."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 of He et al. 2016: 3 stages x 3 basic blocks at 16/32/64 channels, global pool, fc.

    Shortcuts are option B (1x1 conv + BN where the shape changes, identity elsewhere), so at width 1 it has
    272,474 parameters (0.27M), about 41M multiply-adds on a 3x32x32 image. Module names follow torchvision
    (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.shortcut.0`, `fc`) so search spaces read naturally.

    Args:
        num_classes: Size of the output layer.
        width: Channel multiplier; every channel count is rounded to an integer of at least 1.
        in_channels: Image channels (3 for CIFAR, 1 for MNIST-like 28x28 input).
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        widths = [_channels(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[0], stride=1)
        self.layer2 = self._stage(widths[0], widths[1], stride=2)
        self.layer3 = self._stage(widths[1], widths[2], stride=2)
        self.fc = nn.Linear(widths[2], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He et al.'s initialisation, as in the paper
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int, blocks: int = 3) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, the three stages, global average pool, then `fc`: class logits."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class DenseLayer(nn.Module):
    """DenseNet-BC bottleneck: BN-ReLU-1x1 conv (4*growth), BN-ReLU-3x3 conv (growth), concatenated to its input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input with the bottleneck's `growth` new channels concatenated."""
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv shrinking channels by `compression`, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BN-ReLU-1x1 conv, then 2x2 average pooling."""
        return nn.functional.avg_pool2d(self.conv(torch.relu(self.bn(x))), 2)


class DenseNetMini(nn.Module):
    """A small DenseNet-BC (Huang et al. 2017) for 32x32 or 28x28 images, to exercise concatenation.

    Stem 3x3 conv to 2*growth channels, then `blocks` dense blocks (`block1`, ...) joined by transitions
    (`trans1`, ...), then BN-ReLU, global average pool and `fc`. The defaults have 102,730 parameters.

    Args:
        growth: Channels each dense layer adds.
        layers_per_block: Dense layers in each block.
        blocks: Number of dense blocks (2 or 3 suit 28x28 and 32x32 inputs).
        compression: Fraction of channels a transition keeps, in (0, 1].
        in_channels: Image channels.
        num_classes: Size of the output layer.
        resolution: The image is resized by this factor before the stem (MobileNet's resolution multiplier).
    """

    def __init__(
        self,
        growth: int = 12,
        layers_per_block: int = 4,
        blocks: int = 3,
        compression: float = 0.5,
        in_channels: int = 3,
        num_classes: int = 10,
        resolution: float = 1.0,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        if not 0 < resolution <= 4:
            raise ValueError(f"resolution must be in (0, 4], got {resolution}")
        if growth < 1 or layers_per_block < 1 or blocks < 1:
            raise ValueError("growth, layers_per_block and blocks must be at least 1")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        for b in range(1, blocks + 1):
            layers = []
            for _ in range(layers_per_block):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            self.add_module(f"block{b}", nn.Sequential(*layers))
            if b < blocks:
                out = max(1, int(channels * compression))
                self.add_module(f"trans{b}", Transition(channels, out))
                channels = out
        self.blocks = blocks
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to `resolution`, stem, dense blocks joined by transitions, BN-ReLU, pool, then `fc`."""
        x = self.conv1(resize(x, self.resolution))
        for b in range(1, self.blocks + 1):
            x = getattr(self, f"block{b}")(x)
            if b < self.blocks:
                x = getattr(self, f"trans{b}")(x)
        x = torch.relu(self.bn(x))
        return self.fc(x.mean(dim=(2, 3)))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "resnet20": ResNet20,
    "densenet": DenseNetMini,
    "mobilenet_v1": MobileNetV1,
    "squeezenet": SqueezeNet,
    "shufflenet_v1": ShuffleNetV1,
}


def build_model(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build a zoo model by name, or a user's model from a `package.module:factory` string."""
    kwargs = dict(kwargs or {})
    if is_reference(name):  # modules in the working directory import, as under `python -m`
        factory = import_reference(name, "model factory")
    elif name in MODELS:
        factory = MODELS[name]
    else:
        raise AutocompError(f"unknown model '{name}'; known: {', '.join(sorted(MODELS))}")
    try:
        model = factory(**kwargs)
    except Exception as err:  # bad kwargs show up as TypeError, RuntimeError, ValueError...
        raise AutocompError(f"model '{name}' rejected its kwargs {kwargs}: {err}") from err
    if not isinstance(model, nn.Module):
        raise AutocompError(f"model factory '{name}' returned {type(model).__name__}, not an nn.Module")
    return model
