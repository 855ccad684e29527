"""The real int8 execution path: PyTorch's quantized CPU kernels (x86 / onednn engines), via FX graph mode.

Conv/Linear (+BatchNorm, +ReLU) are fused, activation ranges observed on calibration rows, and weights and
activations converted to int8 kernels: on an AVX2 machine this runs several times faster than fp32,
unlike fake quantization, which only models the rounding. The fp32 reference for speed comparisons is the
same model with BatchNorm folded into the convolutions.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from autocomp.primitives.quantize import QuantizedInput


def unwrap_fake_quant(model: nn.Module) -> nn.Module:
    """Replace fake-quantized inputs by their layers: the int8 kernels quantize activations themselves.

    Also turns off the fused fast path of nn.TransformerEncoderLayer / DecoderLayer: it reads the layers'
    weights instead of calling them (int8 kernels would never run) and is taken on some calls only (without
    gradients), so a trace of the model differs from call to call.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedInput):
            model.set_submodule(name, module.layer)
        if getattr(module, "activation_relu_or_gelu", False):
            module.activation_relu_or_gelu = False
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with each Conv2d+BatchNorm2d pair folded into one Conv2d."""
    from torch.fx.experimental.optimization import fuse

    return fuse(unwrap_fake_quant(copy.deepcopy(model)).eval())


ENGINES = ("x86", "onednn", "fbgemm")


@contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Run with PyTorch's (process-global) quantized engine set to `engine`, then put the old one back."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class Int8Model(nn.Module):
    """An int8 model and the quantized engine its packed weights were prepared for (set on each call)."""

    def __init__(self, module: nn.Module, engine: str) -> None:
        super().__init__()
        self.module = module
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the int8 module with its quantized engine set for the call."""
        with quantized_engine(self.engine):
            return self.module(x)


def _median_seconds(model: nn.Module, x: torch.Tensor, repeats: int = 7) -> float:
    import statistics
    import time

    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def to_int8(model: nn.Module, calibration: torch.Tensor, *, engine: str = "auto") -> Int8Model:
    """An int8 copy of `model` calibrated on `calibration` inputs (a few hundred rows are plenty).

    engine "auto" converts with every available engine and keeps the one measured fastest on a batch of
    the calibration rows: which wins depends on the model and the CPU (measured here: onednn for
    convolutions, fbgemm/x86 for fully connected layers).
    """
    if engine == "auto":
        candidates = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
        converted = [to_int8(model, calibration, engine=e) for e in candidates]
        batch = calibration[:64]
        timed = [(_median_seconds(m, batch), i) for i, m in enumerate(converted)]
        return converted[min(timed)[1]]
    return Int8Model(_convert(model, calibration, engine), engine)


def _convert(model: nn.Module, calibration: torch.Tensor, engine: str) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quantized engine '{engine}' is not available here: "
                           f"{torch.backends.quantized.supported_engines}")
    float_model = unwrap_fake_quant(copy.deepcopy(model)).eval()
    # FX graph mode quantization is deprecated but still the eager-CPU path to these kernels
    with quantized_engine(engine), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(float_model, get_default_qconfig_mapping(engine), (calibration[:1],))
        with torch.no_grad():
            for start in range(0, len(calibration), 128):
                prepared(calibration[start : start + 128])
        return convert_fx(prepared)


def save_int8(path: str, int8_model: Int8Model, example: torch.Tensor) -> None:
    """TorchScript is the one format that serialises PyTorch's packed int8 kernels (torch.export cannot).

    Load it with `load_int8`, or set `torch.backends.quantized.engine` to the recorded engine first.
    """
    # without gradients: attention's fast path depends on whether gradients are on, and the trace's
    # sanity check must meet the same path as the trace (MultiheadAttention)
    with quantized_engine(int8_model.engine), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(int8_model.module, (example,))
        torch.jit.save(traced, path, _extra_files={"quantized_engine": int8_model.engine})


def load_int8(path: str) -> Int8Model:
    """Load a file `save_int8` wrote, with the engine its packed weights need (recorded in the file)."""
    extra = {"quantized_engine": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with quantized_engine(torch.backends.quantized.engine):
            module = torch.jit.load(path, _extra_files=extra)
    engine = extra["quantized_engine"]
    engine = engine.decode() if isinstance(engine, bytes) else engine
    return Int8Model(module, engine or torch.backends.quantized.engine)
