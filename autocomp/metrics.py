"""Measurements of a (compressed) model: accuracy, parameters, FLOPs and wall-clock latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

LAYER_TYPES = (nn.Linear, nn.Conv2d)


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on (images, labels)."""
    x, y = data
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


def count_params(model: nn.Module) -> tuple[int, int]:
    """(stored parameters, nonzero parameters)."""
    tensors = list(model.parameters())
    return sum(t.numel() for t in tensors), sum(int(torch.count_nonzero(t)) for t in tensors)


@torch.no_grad()
def count_flops(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, sparse FLOPs) of one forward pass at `example` (2 x multiply-accumulates).

    FLOPs is what dense kernels execute; sparse FLOPs scales each Linear/Conv2d by its weights' density,
    the theoretical count a sparse kernel would need.
    """
    with FlopCounterMode(display=False) as counter:
        model(example)
    total = int(counter.get_total_flops())
    per_module = counter.get_flop_counts()
    prefix = type(model).__name__
    saved = 0.0
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES) and name:
            layer_flops = sum(per_module.get(f"{prefix}.{name}", {}).values())
            density = float(torch.count_nonzero(module.weight)) / module.weight.numel()
            saved += layer_flops * (1.0 - density)
    return total, int(round(total - saved))


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def measure_latency(
    model: nn.Module, example: torch.Tensor, *, threads: int = 1, warmup: int = 10, repeats: int = 50
) -> dict[str, float]:
    """Median and interquartile range (ms) of a forward pass at `example`, after warm-up."""
    with torch_threads(threads):
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - start) * 1000.0)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"latency_ms": statistics.median(times), "latency_iqr_ms": quartiles[2] - quartiles[0]}
