"""The real artifacts a compressed model is written as, and the artifact settings (the run file's `artifact:`).

Packed bytes (what size_bytes counts), a torch.export program, an ONNX graph checked with ONNX Runtime and a
real int8 model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from torch import nn

from autocomp import packed
from autocomp.compress import compress
from autocomp.errors import AutocompError, PackedFormatError
from autocomp.int8 import load_int8, save_int8, to_int8
from autocomp.layers import layer_kind, weight_of
from autocomp.metrics import count_flops, interleaved_latency
from autocomp.outputs import logits
from autocomp.policy import Policy
from autocomp.primitives.quantize import QuantizedInput
from autocomp.runtimes import onnx_bytes
from autocomp.schema import boolean, setting
from autocomp.zoo.models import build_model

FORMATS = ("packed", "pt", "onnx", "int8")


@dataclass(frozen=True, kw_only=True)
class ArtifactSpec:
    """How the packed artifact is written; size_bytes is measured on the artifact so written.

    `entropy` Huffman-codes codes and index gaps (Deep Compression's "+H") wherever that is smaller, tables
    included.
    """

    entropy: bool = setting(False, boolean)


def artifact_meta(model_ref: Mapping[str, Any] | None, policy: Policy, input_shape: Sequence[int],
                  input_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """What the packed header records to rebuild the architecture.

    The zoo name + kwargs, the policy, and the input shape (channel removal traces the model on an example
    of it); the input dtype where it is not float32 (token ids), so older files stay byte-identical.
    """
    meta: dict[str, Any] = {"model": dict(model_ref) if model_ref else None, "policy": policy.to_dict(),
            "input_shape": list(input_shape)}
    if input_dtype != torch.float32:
        meta["input_dtype"] = str(input_dtype).removeprefix("torch.")
    return meta


def pack_model(compressed: nn.Module, meta: Mapping[str, Any], *, entropy: bool = False) -> bytes:
    """The packed bytes of a compressed model, with `meta` (see artifact_meta) in the header."""
    return packed.pack(compressed, meta=dict(meta), entropy=entropy)


def write_bytes(path: str | os.PathLike, data: bytes) -> int:
    """Write `data` whole (temporary file, then rename) and return the size on disk."""
    return _replace_atomically(path, lambda target: Path(target).write_bytes(data))


def load_packed(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a compressed model from a packed file.

    The architecture comes from `model` (the uncompressed model the policy was applied to) or, for zoo
    models, from the file's header; the policy in the header reshapes it, then the packed tensors fill it.
    """
    data = Path(path).read_bytes()
    meta = packed.read_meta(data)
    if model is None:
        if not meta.get("model"):
            raise PackedFormatError(f"{path}: built from a user model; pass that model to load_packed(model=...)")
        model = build_model(meta["model"]["name"], meta["model"].get("kwargs"))
    dtype = getattr(torch, meta.get("input_dtype", "float32"))
    example = torch.zeros(1, *meta["input_shape"], dtype=dtype) if meta.get("input_shape") else None
    # only the skeleton's structure matters: every tensor (scales and calibrated ranges too) is overwritten
    skeleton = compress(model, Policy.from_dict(meta.get("policy", {})), example=example, skeleton=True)
    _fit_shapes(skeleton, packed.unpack(data)[1])
    return packed.load_into(skeleton, data)


def _fit_shapes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Give the skeleton the packed file's tensor shapes where they differ.

    Ranks chosen by singular-value energy and channels chosen by a data-dependent criterion depend on the
    weights, so a skeleton rebuilt from other weights can differ in size from the evaluated model.
    """
    for key, tensor in state.items():
        module_name, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue  # load_into names the mismatch
        current = getattr(module, attr, None)
        if not isinstance(current, torch.Tensor) or current.shape == tensor.shape:
            continue
        if isinstance(current, nn.Parameter):
            setattr(module, attr, nn.Parameter(torch.empty(tensor.shape, dtype=current.dtype),
                                               requires_grad=current.requires_grad))
        else:
            module.register_buffer(attr, torch.empty(tensor.shape, dtype=current.dtype))
    for module in model.modules():  # keep the modules' own size attributes true to their tensors
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Conv2d):
            module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1] * module.groups
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.num_features = module.running_mean.shape[0]


def export_program(path: str | os.PathLike, compressed: nn.Module, example: torch.Tensor) -> int:
    """Save a torch.export program (load with `torch.export.load(path).module()`), batch size dynamic."""
    batch = torch.export.Dim("batch", min=1)
    example = torch.cat([example[:1], example[:1]])  # a batch of 2, so the batch dim is not specialised to 1
    program = torch.export.export(compressed, (example,), dynamic_shapes=({0: batch},))
    return _replace_atomically(path, lambda target: torch.export.save(program, target))


def _replace_atomically(path: str | os.PathLike, write) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    os.replace(tmp, path)
    return path.stat().st_size


def _diff_symbolic(g: Any, x: Any, n: Any, dim: Any, prepend: Any, append: Any) -> Any:
    """ONNX for torch.diff (first differences along `dim`, with prepended / appended values).

    The TorchScript exporter has none at opset 17, and `transformers`' mask code calls it (packed-sequence
    detection in GPT-2 / Llama / Mistral / Qwen2), so those models would not export without it.
    """
    from torch.onnx import symbolic_helper as sh

    if sh._get_const(n, "i", "n") != 1:
        return sh._unimplemented("diff", "n other than 1")
    axis = sh._get_const(dim, "i", "dim")
    parts = [t for t in (prepend, x, append) if not sh._is_none(t)]
    whole = g.op("Concat", *parts, axis_i=axis) if len(parts) > 1 else x
    later = sh._slice_helper(g, whole, axes=[axis], starts=[1], ends=[2**63 - 1])
    earlier = sh._slice_helper(g, whole, axes=[axis], starts=[0], ends=[-1])
    return g.op("Sub", later, earlier)


def _cumsum_symbolic(g: Any, x: Any, dim: Any, dtype: Any) -> Any:
    """torch.cumsum, whose bool input sums as int64 (the mask code's `(diff != 1).cumsum(-1)`).

    The exporter's own CumSum keeps the bool type, which ONNX Runtime rejects as an invalid graph.
    """
    from torch.onnx import symbolic_helper as sh

    if not sh._is_none(dtype):
        x = g.op("Cast", x, to_i=sh._type_utils.JitScalarType(sh._get_const(dtype, "i", "dtype")).onnx_type())
    elif sh._type_utils.JitScalarType.from_value(x, sh._type_utils.JitScalarType.UNDEFINED) \
            == sh._type_utils.JitScalarType.BOOL:
        x = g.op("Cast", x, to_i=sh._type_utils.JitScalarType.INT64.onnx_type())
    axis = g.op("Constant", value_t=torch.tensor(sh._get_const(dim, "i", "dim"), dtype=torch.int64))
    return g.op("CumSum", x, axis)


def _register_symbolics() -> None:
    torch.onnx.register_custom_op_symbolic("aten::diff", _diff_symbolic, 17)
    torch.onnx.register_custom_op_symbolic("aten::cumsum", _cumsum_symbolic, 17)


class _OneInput(nn.Module):
    """`model(x)` with nothing else.

    The exporter would make every defaulted argument of the model's own forward (`transformers`'
    `logits_to_keep`) a graph input that ONNX Runtime then requires.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        """The wrapped model on `x` alone."""
        return self.model(x)


def _activation_quantizers(model: nn.Module) -> list[QuantizedInput]:
    return [m for m in model.modules() if isinstance(m, QuantizedInput) and m.bits < 32]


def _outputs(model: nn.Module, example: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return logits(model(example)).numpy()  # ONNX's first output is the logits too


def export_onnx(path: str | os.PathLike, compressed: nn.Module, example: torch.Tensor, *,
                tolerance: float = 1e-4) -> int:
    """Write an ONNX model (dynamic batch) and check it against PyTorch with ONNX Runtime.

    With fake-quantized activations (act_bits < 32) an input lying next to a rounding boundary can round to
    the neighbouring step in one runtime and not the other (their float sums differ in the last bits), which
    moves the outputs by up to the quantization's own effect. There the graph is checked twice: exported with
    the quantizers at 32 bits it must match within `tolerance` (the graph computes the same function), and
    the written graph may differ from PyTorch by no more than `tolerance` plus how far quantizing the
    activations moves PyTorch's own outputs.
    """
    _register_symbolics()
    quantizers = _activation_quantizers(compressed)
    expected = _outputs(compressed, example)
    allowed = tolerance
    if quantizers:
        saved = [q.bits for q in quantizers]
        try:
            for q in quantizers:
                q.bits = 32
            plain = _outputs(compressed, example)
            _check_onnx(onnx_bytes(_OneInput(compressed), example), example, plain, tolerance,
                        "with activations unquantized")
        finally:
            for q, bits in zip(quantizers, saved):
                q.bits = bits
        allowed = tolerance + float(np.abs(expected - plain).max())

    def write(target: str) -> None:
        Path(target).write_bytes(onnx_bytes(_OneInput(compressed), example))
        _check_onnx(Path(target).read_bytes(), example, expected, allowed, "")

    return _replace_atomically(path, write)


def _check_onnx(graph: bytes, example: torch.Tensor, expected: np.ndarray, tolerance: float, what: str) -> None:
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": example.numpy()})[0]
    if got.shape != expected.shape:
        raise PackedFormatError(f"ONNX Runtime output has shape {list(got.shape)}, PyTorch's {list(expected.shape)}")
    error = float(np.abs(got - expected).max())
    if not error <= tolerance:  # NaN fails too
        raise PackedFormatError(f"ONNX Runtime output differs from PyTorch by {error:.2e} (> {tolerance:.2e})"
                                + (f" {what}" if what else ""))


def export_int8(path: str | os.PathLike, compressed: nn.Module, calibration: torch.Tensor) -> tuple[int, str]:
    """Write the real int8 model (PyTorch quantized kernels, TorchScript); returns its size and engine.

    Load it with torch.jit.load after setting torch.backends.quantized.engine to the engine returned beside
    the size.
    """
    int8_model = to_int8(compressed, calibration)
    size = _replace_atomically(path, lambda target: save_int8(target, int8_model, calibration[:1]))
    return size, int8_model.engine


def load_artifact(path: str | os.PathLike, fmt: str, model: nn.Module | None = None):
    """Load an exported file back as a callable on a batch tensor (what a user of that format runs)."""
    if fmt == "packed":
        return load_packed(path, model=model)
    if fmt == "pt":
        return torch.export.load(str(path)).module()
    if fmt == "int8":
        return load_int8(str(path))
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    raise ValueError(f"unknown export format '{fmt}'")


def measure_artifact(
    path: str | os.PathLike, fmt: str, baseline: nn.Module, compressed: nn.Module, batch: torch.Tensor,
    *, threads: int, rounds: int = 5, repeats: int = 10,
) -> dict[str, Any]:
    """Size on disk and latency of the exported file as loaded back, beside the uncompressed fp32 model's.

    Latencies are medians of interleaved rounds; the theoretical reduction (FLOPs, weight bits) is reported
    beside them.
    """
    artifact = load_artifact(path, fmt, model=baseline)
    base_ms, art_ms, _ = interleaved_latency(baseline, artifact, batch, threads=threads, rounds=rounds,
                                             repeats=repeats, warmup=1)
    example = batch[:1]
    base_flops = count_flops(baseline, example)[0]
    flops, sparse = count_flops(compressed, example)
    bits = 0
    for module in compressed.modules():
        if layer_kind(module) is not None:
            coding = getattr(module, "weight_coding", None)
            bits += int(torch.count_nonzero(weight_of(module))) * (int(coding.bits) if coding is not None else 32)
    base_bits = 32 * sum(p.numel() for p in baseline.parameters())
    return {
        "format": fmt, "bytes_on_disk": Path(path).stat().st_size, "fp32_bytes": base_bits // 8,
        "latency_ms": art_ms, "baseline_latency_ms": base_ms, "speedup": base_ms / art_ms,
        "batch_size": len(batch), "threads": threads, "flops": flops, "flops_sparse": sparse,
        "baseline_flops": base_flops, "weight_bits_nonzero": bits, "baseline_weight_bits": base_bits,
    }


def export(
    model_or_trial: nn.Module | Any,
    *,
    path: str | os.PathLike,
    format: str = "packed",
    model: nn.Module | None = None,
    example: torch.Tensor | None = None,
    calibration: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None,
    entropy: bool = False,
) -> int:
    """Write a compressed model as a deployable file; returns its size in bytes.

    Args:
        model_or_trial: a compressed model (from `compress`), or what names a policy (a search's `Trial`,
            a `Policy` or its dict), which is then applied to `model`. A packed file records the policy only
            in the second case, so `load_packed(path, model=uncompressed)` rebuilds it; a compressed module's
            file loads into a module of its own structure (`load_packed(path, model=compress(...))`). A trial
            that was fine-tuned during the search is exported as compressed, without that fine-tuning
            (`autocomp export RUN` redoes it).
        path: the file to write (replaced atomically).
        format: "packed" (the .acz file whose length is size_bytes; `load_packed` reads it), "pt" (a
            torch.export program), "onnx" (checked against PyTorch with ONNX Runtime) or "int8" (PyTorch's
            quantized kernels, TorchScript).
        model: the uncompressed model, when `model_or_trial` is a trial or policy.
        example: one input batch (required for pt and onnx, and for channel removal).
        calibration: (inputs, labels) rows, or inputs alone, for activation ranges and int8 calibration.
        entropy: Huffman-code the packed file (Deep Compression's "+H").

    Raises:
        AutocompError: an unknown format, or a trial without the `model` it applies to.
    """
    if format not in FORMATS:
        raise AutocompError(f"unknown export format '{format}'; known: {', '.join(FORMATS)}")
    rows = calibration if isinstance(calibration, (tuple, list)) or calibration is None else (calibration, None)
    if isinstance(model_or_trial, nn.Module):
        compressed, policy = model_or_trial, None
    else:
        if model is None:
            raise AutocompError("export of a trial or policy needs the uncompressed model: export(trial, model=...)")
        policy = Policy.coerce(getattr(model_or_trial, "policy", model_or_trial))
        compressed = compress(model, policy, example=example, calibration=rows)  # type: ignore[arg-type]
    if format == "packed":
        shape = list(example.shape[1:]) if example is not None else []
        meta = artifact_meta(None, policy or Policy.of({}), shape,
                             example.dtype if example is not None else torch.float32)
        return write_bytes(path, pack_model(compressed, meta, entropy=entropy))
    if example is None:
        raise AutocompError(f"export format '{format}' needs an example input batch (example=...)")
    if format == "pt":
        return export_program(path, compressed, example)
    if format == "onnx":
        return export_onnx(path, compressed, example)
    inputs = rows[0] if rows is not None else example
    return export_int8(path, compressed, inputs)[0]
