"""Where evaluation and fine-tuning run (cpu, cuda, cuda:N, mps) and at which precision (fp32, bf16, fp16).

Compression and the packed artifact are made on the CPU, so an artifact is the same whatever device scored
it and always loads on a CPU. Only the forward and backward passes of evaluation and fine-tuning move:
the model to the device, each batch as it is used; `bf16`/`fp16` run them under autocast, the weights
staying fp32.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator

import torch
from torch import nn

from autocomp.errors import AutocompError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_CUDA_N = re.compile(r"cuda:\d+")


def valid_device(name: str) -> bool:
    """Whether `name` is a device setting autocomp understands (not whether this machine has it)."""
    return name in ("auto", "cpu", "cuda", "mps") or bool(_CUDA_N.fullmatch(name))


def resolve_device(name: str, setting: str = "execution.device") -> torch.device:
    """The torch device a setting names on this machine ("auto": the first GPU, else Apple's, else the CPU).

    Args:
        name: The device setting's value.
        setting: What asked for it, for messages.

    Raises:
        AutocompError: the setting is unknown, or names a device this machine does not have (said so, by name).
    """
    if not valid_device(name):
        raise AutocompError(f"{setting}: unknown device '{name}' (one of {', '.join(DEVICES)})")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AutocompError(f"{setting}: device '{name}' is not available here: torch {torch.__version__} "
                                "sees no CUDA GPU")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise AutocompError(f"{setting}: device '{name}' is not available here: "
                                f"{torch.cuda.device_count()} CUDA GPU(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise AutocompError(f"{setting}: device 'mps' is not available here")
    return torch.device(name)


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` itself on the CPU; elsewhere a copy of it moved to `device` (the CPU model stays as it is)."""
    return model if device.type == "cpu" else copy.deepcopy(model).to(device)


def device_name(device: torch.device) -> str:
    """A person-readable name of the device, for run.json ("cpu", or the GPU's model)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the forward passes inside at `precision` (fp32: as they are)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously: timings must wait for it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


__all__ = ["DEVICES", "PRECISIONS", "autocast", "device_name", "on_device", "resolve_device", "synchronize",
           "valid_device"]
