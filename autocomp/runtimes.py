"""The runtimes a compressed model is timed in: PyTorch eager fp32 or int8, ONNX Runtime fp32 or int8 (QDQ).

`prepare(model, runtime, ...)` turns a (compressed) module into what that runtime executes, as a callable
on a batch tensor: the module itself (PyTorch eager, fp32), PyTorch's quantized int8 kernels (FX graph
mode, BatchNorm and ReLU fused, one fixed engine), or an ONNX Runtime session of the exported graph, fp32
or statically quantized to int8 with QuantizeLinear/DequantizeLinear pairs (the QDQ format ORT's int8
kernels take). Fake-quantized inputs are a simulation of int8 activations for accuracy, not something a
deployed graph runs: the int8 runtimes quantize activations for real, the ONNX fp32 runtime drops them.
Each runtime uses `threads` threads (torch's intra-op pool, ORT's intra_op_num_threads).
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autocomp.int8 import ENGINES, fold_batchnorm, to_int8, unwrap_fake_quant
from autocomp.metrics import torch_threads
from autocomp.space.spec import RUNTIMES

Runner = Callable[[torch.Tensor], Any]


def folds_batchnorm(runtime: str) -> bool:
    """Whether the runtime executes BatchNorm folded into the convolution before it (all but eager)."""
    return runtime != "torch"


def default_engine() -> str:
    """PyTorch's int8 engine for the torch-int8 runtime: x86 where available (it picks fbgemm or onednn
    kernels per op), else the first one this build supports."""
    supported = torch.backends.quantized.supported_engines
    return next((e for e in ENGINES if e in supported), supported[0])


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as an ONNX graph (opset 17, dynamic batch), in memory."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=17)
    return buffer.getvalue()


def quantize_onnx(graph: bytes, calibration: torch.Tensor) -> bytes:
    """ONNX Runtime static int8 quantization in the QDQ format: per-channel int8 weights, int8
    activations with ranges observed (min/max) on the calibration rows."""
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
        with open(target, "rb") as f:
            return f.read()


def ort_session(graph: bytes, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _ort_runner(session) -> Runner:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def prepare(model: nn.Module, runtime: str, *, calibration: torch.Tensor, threads: int = 1,
            engine: str | None = None) -> Runner:
    """What `runtime` runs for `model` (never modified), as a callable on a batch of inputs.

    `calibration` (a few hundred input rows; random rows are fine when only speed matters) sets int8
    activation ranges and is the example the ONNX graph is traced with.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
    if runtime == "torch":
        return model.eval()
    if runtime == "torch-int8":
        with torch_threads(threads):
            return to_int8(model, calibration, engine=engine or default_engine())
    graph = onnx_bytes(unwrap_fake_quant(copy.deepcopy(model)).eval(), calibration[:1])
    if runtime == "onnx-int8":
        graph = quantize_onnx(graph, calibration)
    return _ort_runner(ort_session(graph, threads))


def runnable_graph(model: nn.Module, runtime: str) -> nn.Module:
    """The module whose layers the runtime executes one by one: BatchNorm folded where the runtime folds
    it, fake quantization dropped where the runtime does not run it as such."""
    return fold_batchnorm(model) if folds_batchnorm(runtime) else model


__all__ = ["RUNTIMES", "Runner", "default_engine", "folds_batchnorm", "onnx_bytes", "ort_session", "prepare",
           "quantize_onnx", "runnable_graph"]
