"""The runtimes a compressed model is timed in, by name, and the latency settings that pick one.

The runtimes: PyTorch eager fp32 or int8, ONNX Runtime fp32 or int8 (QDQ); the settings are the run file's
`latency:`.

A runtime turns a (compressed) module into what it executes, as a callable on a batch tensor: the module
itself (PyTorch eager, fp32), PyTorch's quantized int8 kernels (FX graph mode, BatchNorm and ReLU fused, one
fixed engine), or an ONNX Runtime session of the exported graph, fp32 or statically quantized to int8 with
QuantizeLinear/DequantizeLinear pairs (the QDQ format ORT's int8 kernels take). Fake-quantized inputs are a
simulation of int8 activations for accuracy, not something a deployed graph runs: the int8 runtimes
quantize activations for real, the ONNX fp32 runtime drops them. Each runtime uses `threads` threads
(torch's intra-op pool, ORT's intra_op_num_threads).

Adding a runtime is one call: `register_runtime(Runtime(name=..., prepare=...))`; `latency: {runtime:
name}` then times candidates in it (whole, and layer by layer for the latency table).
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.devices import resolve_device, synchronize
from autocomp.int8 import ENGINES, fold_batchnorm, to_int8, unwrap_fake_quant
from autocomp.metrics import torch_threads
from autocomp.schema import boolean, integer, one_of, setting

Runner = Callable[[torch.Tensor], Any]


def default_engine() -> str:
    """PyTorch's int8 engine for the torch-int8 runtime: x86 where available, else the first one supported.

    x86 picks fbgemm or onednn kernels per op; otherwise the first engine this build supports is used.
    """
    supported = torch.backends.quantized.supported_engines
    return next((e for e in ENGINES if e in supported), supported[0])


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as an ONNX graph (opset 17, dynamic batch), in memory."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch's hint says a path; a file object is documented and works
        torch.onnx.export(model.eval(), (example,), buffer, dynamo=False,  # type: ignore[arg-type]
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17)
    return buffer.getvalue()


def quantize_onnx(graph: bytes, calibration: torch.Tensor) -> bytes:
    """ONNX Runtime static int8 quantization of an ONNX graph, in the QDQ format.

    Per-channel int8 weights, int8 activations with ranges observed (min/max) on the calibration rows.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i : i + 32].numpy()} for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="autocomp-qdq-") as tmp:
        source, target = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with open(source, "wb") as f:
            f.write(graph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(source, target, Rows(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return Path(target).read_bytes()


def ort_session(graph: bytes, threads: int):
    """An ONNX Runtime CPU session of `graph` on `threads` intra-op threads (one inter-op), quiet logging."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _ort_runner(session) -> Runner:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _onnx_runner(model: nn.Module, calibration: torch.Tensor, threads: int, engine: str, *, int8: bool) -> Runner:
    graph = onnx_bytes(unwrap_fake_quant(copy.deepcopy(model)).eval(), calibration[:1])
    if int8:
        graph = quantize_onnx(graph, calibration)
    return _ort_runner(ort_session(graph, threads))


def _torch_int8(model: nn.Module, calibration: torch.Tensor, threads: int, engine: str) -> Runner:
    with torch_threads(threads):
        return to_int8(model, calibration, engine=engine)


def _cuda_runner(model: nn.Module, calibration: torch.Tensor, threads: int, engine: str) -> Runner:
    """The model on the first CUDA GPU: each call moves the batch there and waits for the GPU to finish."""
    device = resolve_device("cuda", setting="latency runtime 'torch-cuda'")
    net = copy.deepcopy(model).eval().to(device)

    def run(batch: torch.Tensor) -> Any:
        with torch.no_grad():
            out = net(batch.to(device))
        synchronize(device)  # kernels run asynchronously: the time is the GPU's only once it has finished
        return out

    return run


# (model, calibration rows, threads, engine) -> what the runtime calls on a batch
Prepare = Callable[[nn.Module, torch.Tensor, int, str], Runner]


@dataclass(frozen=True)
class Runtime:
    """One place a model runs.

    `prepare(model, calibration, threads, engine)` returns what it executes (the model is never modified;
    `calibration` rows set int8 ranges and trace ONNX graphs); `folds_batchnorm`: it runs BatchNorm folded
    into the preceding conv (the latency table times layers that way); `int8`: activations are computed in
    8 bits (energy and peak activation bytes); `engine`: the quantized engine it names in the latency
    conditions ("" when it has none).
    """

    name: str
    prepare: Prepare
    folds_batchnorm: bool = True
    int8: bool = False
    engine: Callable[[], str] = lambda: ""

    def runner(self, model: nn.Module, *, calibration: torch.Tensor, threads: int = 1,
               engine: str | None = None) -> Runner:
        """What this runtime runs for `model`, as a callable on a batch of inputs."""
        return self.prepare(model, calibration, threads, engine or self.engine())

    def graph(self, model: nn.Module) -> nn.Module:
        """The module whose layers this runtime executes one by one (BatchNorm folded where it folds it)."""
        return fold_batchnorm(model) if self.folds_batchnorm else model


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    """Make `runtime` available by its name (a later registration of the same name replaces it)."""
    RUNTIMES[runtime.name] = runtime
    return runtime


def runtime_names() -> list[str]:
    """The names `latency.runtime` accepts."""
    return list(RUNTIMES)


def get_runtime(name: str) -> Runtime:
    """The runtime called `name`."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime '{name}' (known: {', '.join(RUNTIMES)})")
    return RUNTIMES[name]


def prepare(model: nn.Module, runtime: str, *, calibration: torch.Tensor, threads: int = 1,
            engine: str | None = None) -> Runner:
    """What the runtime called `runtime` runs for `model` (never modified), as a callable on a batch.

    `calibration` (a few hundred input rows; random rows are fine when only speed matters) sets int8
    activation ranges and is the example the ONNX graph is traced with.
    """
    return get_runtime(runtime).runner(model, calibration=calibration, threads=threads, engine=engine)


register_runtime(Runtime("torch", lambda model, calibration, threads, engine: model.eval(), folds_batchnorm=False))
register_runtime(Runtime("torch-int8", _torch_int8, int8=True, engine=default_engine))
register_runtime(Runtime("onnx", lambda m, c, t, e: _onnx_runner(m, c, t, e, int8=False)))
register_runtime(Runtime("onnx-int8", lambda m, c, t, e: _onnx_runner(m, c, t, e, int8=True), int8=True))
register_runtime(Runtime("torch-cuda", _cuda_runner, folds_batchnorm=False))


@dataclass(frozen=True, kw_only=True)
class LatencySpec:
    """Conditions of the latency measurement (the run file's `latency:`).

    They are recorded in run.json beside the numbers. `runtime` is what the latency is measured in (a
    registered Runtime: torch, torch-int8, onnx, onnx-int8). `table: true` predicts each candidate's latency
    from the per-layer lookup table (autocomp.latency_table) instead of timing it; the Pareto points are then
    measured and the prediction error reported.
    """

    batch_size: int = setting(1, integer(1, 4096))
    threads: int = setting(1, integer(1, 1024))
    warmup: int = setting(10, integer(0))
    repeats: int = setting(50, integer(1))
    runtime: str = setting("torch", one_of(runtime_names, "runtime"))
    table: bool = setting(False, boolean)


DEFAULT_LATENCY = LatencySpec()


__all__ = ["DEFAULT_LATENCY", "RUNTIMES", "LatencySpec", "Runner", "Runtime", "default_engine", "get_runtime",
           "onnx_bytes", "ort_session", "prepare", "quantize_onnx", "register_runtime", "runtime_names"]
