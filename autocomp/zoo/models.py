"""Reference models, built by name from search-space files."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from autocomp.errors import AutocompError


class LeNet300(nn.Module):
    """LeNet-300-100 as in Han et al. 2015: 784-300-100-10, ReLU, 266,610 parameters."""

    def __init__(self, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


MODELS: dict[str, Callable[..., nn.Module]] = {"lenet300": LeNet300, "lenet5": LeNet5}


def build_model(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build a zoo model by name, or a user's model from a `package.module:factory` string."""
    kwargs = dict(kwargs or {})
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise AutocompError(f"model factory '{name}' cannot be imported: {err}") from err
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
