"""Small hand-written models that exercise what autocomp's own zoo does not: grouped convs, SE gates, concatenations.

Shared by the tests and `autocomp bench models`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupedNet(nn.Module):
    """A grouped 3x3 conv (groups=4), an SE gate, a depthwise branch and a concatenation (for 3-channel images)."""

    def __init__(self, classes: int = 10, mix_groups: int = 1) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.grouped, self.bn1 = nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32)
        self.se_reduce, self.se_expand = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.dw, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32)
        self.pw = nn.Conv2d(32, 16, 1)
        self.side = nn.Conv2d(32, 16, 1)
        self.mix = nn.Conv2d(32, 24, 3, stride=2, padding=1, groups=mix_groups)
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images."""
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.grouped(x)))
        x = x * torch.sigmoid(self.se_expand(F.relu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = torch.cat([self.pw(F.relu(self.bn2(self.dw(x)))), self.side(x)], 1)
        return self.fc(F.relu(self.mix(x)).mean((2, 3)))


def grouped_net(seed: int = 0, **kwargs) -> GroupedNet:
    """A seeded `GroupedNet` in eval mode, its BatchNorm gammas drawn apart so channels rank differently."""
    torch.manual_seed(seed)
    model = GroupedNet(**kwargs)
    for bn in (model.bn0, model.bn1, model.bn2):
        nn.init.uniform_(bn.weight, 0.5, 1.5)
    return model.eval()


class AudioConvNet(nn.Module):
    """A 1-D convolutional audio classifier: raw waveform (B, 1, T) -> strided Conv1d stack -> classes."""

    def __init__(self, classes: int = 4, width: int = 32) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(1, width // 2, 9, stride=4, padding=4), nn.BatchNorm1d(width // 2)
        self.conv2, self.bn2 = nn.Conv1d(width // 2, width, 5, stride=2, padding=2), nn.BatchNorm1d(width)
        self.conv3 = nn.Conv1d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of waveforms."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = x + F.relu(self.conv3(x))
        return self.fc(x.mean(2))


class TokenTransformer(nn.Module):
    """A sequence classifier on token ids: an Embedding, `torch.nn.Transformer` (or its encoder alone), a Linear."""

    def __init__(self, vocab: int = 128, dim: int = 32, heads: int = 4, classes: int = 4, *,
                 encoder_only: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        if encoder_only:
            self.body: nn.Module = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(dim, heads, 2 * dim, batch_first=True), 2, enable_nested_tensor=False)
        else:
            self.body = nn.Transformer(dim, heads, 1, 1, 2 * dim, batch_first=True)
        self.encoder_only = encoder_only
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of token-id sequences (B, T)."""
        x = self.embed(ids)
        x = self.body(x) if self.encoder_only else self.body(x, x)
        return self.head(x.mean(1))


__all__ = ["AudioConvNet", "GroupedNet", "TokenTransformer", "grouped_net"]
