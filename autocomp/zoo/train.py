"""Seeded baseline training, so a search can start from a trained model on a fresh machine."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autocomp.schema import integer, positive, setting
from autocomp.schema.rules import MAX_SEED
from autocomp.tasks import CLASSIFICATION, Task


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """How the baseline is trained when no weights are given (seeded, cached): the run file's `train:`."""

    epochs: int = setting(5, integer(1))
    lr: float = setting(1e-3, positive)
    batch_size: int = setting(128, integer(1))
    seed: int = setting(0, integer(0, MAX_SEED))


def train_baseline(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], spec: TrainSpec,
                   task: Task = CLASSIFICATION) -> nn.Module:
    """Train `model` in place with Adam on `task`'s loss; the same seed gives the same weights."""
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    x, y = data
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), spec.batch_size):
            batch = order[start : start + spec.batch_size]
            optimizer.zero_grad(set_to_none=True)
            task.loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
        schedule.step()
    model.eval()
    return model
