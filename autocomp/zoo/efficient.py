"""Efficient architectures sized for 28x28 and 32x32 images: MobileNet-V1, SqueezeNet, ShuffleNet-V1.

Each takes `width` (a multiplier on every layer's channels) and `resolution` (a multiplier on the input
side: the image is resized by it before the stem, as MobileNet's resolution multiplier), `in_channels`
(1 for MNIST, 3 for CIFAR) and `num_classes`. The stems keep stride 1, as the CIFAR versions of these
networks do, so a 32x32 image reaches the last stage at 4x4 (2x2 for SqueezeNet). They train from scratch
like the other zoo models and serve as distillation students for a larger teacher (`finetune` with a
teacher, or `autocomp bench deep-compression`'s distillation row). Parameter and multiply-add counts are
in the README.
"""

from __future__ import annotations

import torch
from torch import nn

from autocomp.primitives.substitute import ChannelShuffle


def _scaled(channels: int, width: float, multiple: int = 1) -> int:
    """round(channels * width) to the nearest multiple of `multiple`, at least `multiple`."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


def _check(width: float, resolution: float) -> None:
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if not 0 < resolution <= 4:
        raise ValueError(f"resolution must be in (0, 4], got {resolution}")


def resize(x: torch.Tensor, resolution: float) -> torch.Tensor:
    """Scale a batch of images' height and width by `resolution` (bilinear); 1.0 returns `x` as is."""
    if resolution == 1.0:
        return x
    size = [max(1, round(s * resolution)) for s in x.shape[-2:]]
    return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DepthwiseSeparable(nn.Module):
    """MobileNet's block: 3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels,
                                   bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise conv-BN-ReLU, then pointwise conv-BN-ReLU."""
        return torch.relu(self.bn2(self.pointwise(torch.relu(self.bn1(self.depthwise(x))))))


class MobileNetV1(nn.Module):
    """MobileNet-V1 (Howard et al. 2017), scaled by `width` and input `resolution`.

    A 3x3 stem of 32 channels and the paper's 13 depthwise-separable blocks (64 ... 1024 channels, four of
    them strided), global average pool, `fc`. At width 1 on 32x32x3: 3.2M parameters, 46M multiply-adds;
    width 0.25 keeps 0.22M.
    """

    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
              (512, 1), (1024, 2), (1024, 1))

    def __init__(self, width: float = 1.0, resolution: float = 1.0, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        _check(width, resolution)
        self.resolution = resolution
        channels = _scaled(32, width)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        blocks = []
        for out, stride in self.BLOCKS:
            blocks.append(DepthwiseSeparable(channels, _scaled(out, width), stride))
            channels = _scaled(out, width)
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to `resolution`, stem, the blocks, global average pool, then `fc`: class logits."""
        x = torch.relu(self.bn1(self.conv1(resize(x, self.resolution))))
        return self.fc(self.layers(x).mean(dim=(2, 3)))


class FireModule(nn.Module):
    """SqueezeNet's fire module: 1x1 squeeze-ReLU, then 1x1 and 3x3 expands (ReLU), concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand1: int, expand3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.expand1 = nn.Conv2d(squeeze, expand1, 1)
        self.expand3 = nn.Conv2d(squeeze, expand3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Squeeze, then the two expands concatenated along channels."""
        s = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1(s)), torch.relu(self.expand3(s))], dim=1)


class SqueezeNet(nn.Module):
    """SqueezeNet v1.1 (Iandola et al. 2016), scaled by `width` and input `resolution`.

    A 3x3 stem of 64, fire2-fire9 with 2x2 max pools after the stem, fire3 and fire5, then a 1x1 `conv10`
    to the classes and global average pooling (no fully connected layer). At width 1: 0.73M parameters.
    """

    FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256))
    POOL_AFTER = (0, 2, 4)  # pool after the stem (index 0) and after fire modules 2 and 4 (1-based: 3, 5)

    def __init__(self, width: float = 1.0, resolution: float = 1.0, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        _check(width, resolution)
        self.resolution = resolution
        channels = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        for i, (squeeze, expand) in enumerate(self.FIRES, start=2):
            e = _scaled(expand, width)
            self.add_module(f"fire{i}", FireModule(channels, _scaled(squeeze, width), e, e))
            channels = 2 * e
        self.conv10 = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to `resolution`, stem, fire modules with their pools, then `conv10` pooled: class logits."""
        x = nn.functional.max_pool2d(torch.relu(self.conv1(resize(x, self.resolution))), 2)
        for i in range(2, 10):
            x = getattr(self, f"fire{i}")(x)
            if i - 1 in self.POOL_AFTER:
                x = nn.functional.max_pool2d(x, 2, ceil_mode=True)
        return self.conv10(x).mean(dim=(2, 3))


class ShuffleUnit(nn.Module):
    """ShuffleNet's unit: grouped 1x1 convs around a channel shuffle and a 3x3 depthwise conv.

    Grouped 1x1 conv-BN-ReLU, channel shuffle, 3x3 depthwise conv-BN, grouped 1x1 conv-BN; added to the
    input (stride 1) or concatenated with its 3x3 average pool (stride 2), then ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, first_groups: int) -> None:
        super().__init__()
        self.stride = stride
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        mid = _scaled(out_channels / 4, 1.0, groups)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(first_groups)
        self.depthwise = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unit's branch, joined to the input by addition (stride 1) or concatenation (stride 2), then ReLU."""
        out = self.shuffle(torch.relu(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv2(self.bn2(self.depthwise(out))))
        if self.stride == 2:
            return torch.relu(torch.cat([nn.functional.avg_pool2d(x, 3, stride=2, padding=1), out], dim=1))
        return torch.relu(x + out)


class ShuffleNetV1(nn.Module):
    """ShuffleNet-V1 (Zhang et al. 2018) with `groups` in 1, 2, 3, 4, 8, scaled by `width` and `resolution`.

    A 3x3 stem of 24 channels, three stages of 4, 8 and 4 units (the first of each strided), the paper's
    stage widths for the group count times `width`, global average pool, `fc`. The first unit's first 1x1
    conv is not grouped (24 inputs), as in the paper. At groups 3, width 1: 0.91M parameters.
    """

    STAGE_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088),
                      8: (384, 768, 1536)}
    REPEATS = (4, 8, 4)

    def __init__(self, groups: int = 3, width: float = 1.0, resolution: float = 1.0, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        _check(width, resolution)
        if groups not in self.STAGE_CHANNELS:
            raise ValueError(f"groups must be one of {sorted(self.STAGE_CHANNELS)}, got {groups}")
        self.resolution = resolution
        channels = 24
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        for s, (out, repeats) in enumerate(zip(self.STAGE_CHANNELS[groups], self.REPEATS), start=1):
            out = _scaled(out, width, groups)
            units = []
            for u in range(repeats):
                units.append(ShuffleUnit(channels, out, groups, stride=2 if u == 0 else 1,
                                         first_groups=1 if (s, u) == (1, 0) else groups))
                channels = out
            self.add_module(f"stage{s}", nn.Sequential(*units))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resize to `resolution`, stem, the three stages, global average pool, then `fc`: class logits."""
        x = torch.relu(self.bn1(self.conv1(resize(x, self.resolution))))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(x.mean(dim=(2, 3)))


__all__ = ["DepthwiseSeparable", "FireModule", "MobileNetV1", "ShuffleNetV1", "ShuffleUnit", "SqueezeNet",
           "resize"]
