"""The real artifacts: packed bytes (what size_bytes counts) and a loadable PyTorch program."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp import packed
from autocomp.compress import compress
from autocomp.errors import PackedFormatError
from autocomp.policy import Policy
from autocomp.runtimes import onnx_bytes
from autocomp.zoo.models import build_model


def artifact_meta(model_ref: Mapping[str, Any] | None, policy: Policy, input_shape: Sequence[int]) -> dict[str, Any]:
    """What the packed header records to rebuild the architecture: the zoo name + kwargs, the policy, and
    the input shape (channel removal traces the model on an example of it)."""
    return {"model": dict(model_ref) if model_ref else None, "policy": policy.to_dict(),
            "input_shape": list(input_shape)}


def pack_model(compressed: nn.Module, meta: Mapping[str, Any], *, entropy: bool = False) -> bytes:
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
    example = torch.zeros(1, *meta["input_shape"]) if meta.get("input_shape") else None
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


def export_onnx(path: str | os.PathLike, compressed: nn.Module, example: torch.Tensor, *,
                tolerance: float = 1e-4) -> int:
    """Write an ONNX model (dynamic batch) and check it against PyTorch with ONNX Runtime."""

    import numpy as np
    import onnxruntime

    def write(target: str) -> None:
        Path(target).write_bytes(onnx_bytes(compressed, example))
        session = onnxruntime.InferenceSession(target, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = compressed(example).numpy()
        got = session.run(None, {"input": example.numpy()})[0]
        error = float(np.abs(got - expected).max())
        if error > tolerance:
            raise PackedFormatError(f"ONNX Runtime output differs from PyTorch by {error:.2e} (> {tolerance})")

    return _replace_atomically(path, write)


def export_int8(path: str | os.PathLike, compressed: nn.Module, calibration: torch.Tensor) -> tuple[int, str]:
    """Write the real int8 model (PyTorch quantized kernels, TorchScript; load with torch.jit.load after
    setting torch.backends.quantized.engine to the engine returned beside the size)."""
    from autocomp.int8 import save_int8, to_int8

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
        from autocomp.int8 import load_int8

        return load_int8(str(path))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    raise ValueError(f"unknown export format '{fmt}'")


def measure_artifact(
    path: str | os.PathLike, fmt: str, baseline: nn.Module, compressed: nn.Module, batch: torch.Tensor,
    *, threads: int, rounds: int = 5, repeats: int = 10,
) -> dict[str, Any]:
    """Size on disk and latency of the exported file as loaded back, beside the uncompressed fp32 model's
    latency (interleaved rounds, medians) and the theoretical reduction (FLOPs, weight bits)."""
    from autocomp.metrics import count_flops, interleaved_latency

    artifact = load_artifact(path, fmt, model=baseline)
    base_ms, art_ms, _ = interleaved_latency(baseline, artifact, batch, threads=threads, rounds=rounds,
                                             repeats=repeats, warmup=1)
    example = batch[:1]
    base_flops = count_flops(baseline, example)[0]
    flops, sparse = count_flops(compressed, example)
    bits = 0
    for module in compressed.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            coding = getattr(module, "weight_coding", None)
            bits += int(torch.count_nonzero(module.weight)) * (int(coding.bits) if coding is not None else 32)
    base_bits = 32 * sum(p.numel() for p in baseline.parameters())
    return {
        "format": fmt, "bytes_on_disk": Path(path).stat().st_size, "fp32_bytes": base_bits // 8,
        "latency_ms": art_ms, "baseline_latency_ms": base_ms, "speedup": base_ms / art_ms,
        "batch_size": len(batch), "threads": threads, "flops": flops, "flops_sparse": sparse,
        "baseline_flops": base_flops, "weight_bits_nonzero": bits, "baseline_weight_bits": base_bits,
    }
