"""Measurements of a (compressed) model: accuracy, parameters, FLOPs and wall-clock latency."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx import symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from autocomp.primitives.quantize import QuantizedInput
from autocomp.tasks import CLASSIFICATION

LAYER_TYPES = (nn.Linear, nn.Conv2d)


def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on (inputs, labels): the classification task's, as a search scores it.

    The model may return a tensor, tuple, dict or ModelOutput (see `autocomp.outputs.logits`). Per-position
    logits (B, T, C) against labels (B, T), as language models give, score every position; labels of -100
    are left out.
    """
    return CLASSIFICATION.evaluate(model, data, batch_size=batch_size)["accuracy"]


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


def layer_profiles(model: nn.Module, example: torch.Tensor) -> list[dict[str, int | str]]:
    """Shape, parameter count and multiply-adds of every Linear and Conv2d, in forward-pass order.

    The order is the one the forward pass runs them in (one example row); plain numbers, for optimizers that
    reason about layers.
    """
    rows: list[dict[str, int | str]] = []
    hooks = []

    def record(name: str, module: nn.Module):
        def hook(_module, _inputs, output):
            if any(r["name"] == name for r in rows):
                return
            if isinstance(module, nn.Conv2d):
                k, stride = module.kernel_size[0], module.stride[0]
                macs = output[0].numel() * module.in_channels // module.groups * k * module.kernel_size[1]
                rows.append({"name": name, "kind": "Conv2d", "in_channels": module.in_channels,
                             "out_channels": module.out_channels, "kernel": k, "stride": stride,
                             "params": module.weight.numel(), "flops": 2 * macs})
            else:
                rows.append({"name": name, "kind": "Linear", "in_channels": module.in_features,
                             "out_channels": module.out_features, "kernel": 1, "stride": 1,
                             "params": module.weight.numel(), "flops": 2 * module.weight.numel()})
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            hooks.append(module.register_forward_hook(record(name, module)))
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return rows


def latency_batch(rows: torch.Tensor, size: int) -> torch.Tensor:
    """The first `size` rows, repeated when there are fewer (tiny data): the batch latency is timed at."""
    return rows[:size].repeat(-(-size // len(rows[:size])), *([1] * (rows.dim() - 1)))[:size]


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch's intra-op pool at `threads` threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def forward_times(model: Callable[[torch.Tensor], Any], example: torch.Tensor, *, warmup: int,
                  repeats: int) -> list[float]:
    """Wall times (ms) of `repeats` forward passes after `warmup` untimed ones, on the current threads."""
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(example)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def interleaved_latency(reference: Callable[[torch.Tensor], Any], candidate: Callable[[torch.Tensor], Any],
                        example: torch.Tensor, *, threads: int = 2, rounds: int = 7, repeats: int = 10,
                        warmup: int = 2) -> tuple[float, float, float]:
    """(reference ms, candidate ms, speedup): medians over alternating rounds, so machine noise hits both."""
    ref, cand = [], []
    with torch_threads(threads):
        for _ in range(rounds):
            ref.append(statistics.median(forward_times(reference, example, warmup=warmup, repeats=repeats)))
            cand.append(statistics.median(forward_times(candidate, example, warmup=warmup, repeats=repeats)))
    r, c = statistics.median(ref), statistics.median(cand)
    return r, c, r / c


def cpu_name() -> str:
    """The CPU model this runs on (what a latency was measured on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def latency_stats(times: list[float]) -> dict[str, float]:
    """Median and interquartile range (ms) of measured forward-pass times."""
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"latency_ms": statistics.median(times), "latency_iqr_ms": quartiles[2] - quartiles[0]}


@torch.no_grad()
def peak_activation_bytes(model: nn.Module, example: torch.Tensor, bytes_per_element: int = 4) -> int:
    """Peak bytes of activations alive at once in one forward pass at batch 1 (MCUNet's peak memory).

    The model's graph (torch.fx) runs op by op in order; a tensor is alive from the op that makes it to
    its last use, so a residual branch's input stays alive across the branch. Weights are not counted.
    Activations take `bytes_per_element` each (4 for fp32, 1 for int8 runtimes). A model fx cannot trace
    falls back to the largest input + output of any one layer.
    """
    x = example[:1]
    try:
        graph = symbolic_trace(model.eval())
        ShapeProp(graph).propagate(x)
    except Exception:  # untraceable control flow: per-layer input + output
        return _largest_layer_io(model, x) * bytes_per_element
    nodes = list(graph.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    owner = {}  # a view (flatten, reshape, ...) shares its source's memory, which lives as long as the view
    for n in nodes:
        source = n.args[0] if n.args and _is_view(n, graph) else None
        owner[n] = owner[source] if source in owner else n
    size = [_elements(n.meta.get("tensor_meta")) if owner[n] is n else 0 for n in nodes]
    last = {n: order[n] for n in nodes}
    for n in nodes:
        last[owner[n]] = max([last[owner[n]], *(order[u] for u in n.users)])
    freed = [0] * len(nodes)  # elements whose last use is op i
    for i, n in enumerate(nodes):
        freed[last[n]] += size[i]
    peak = live = 0
    for i in range(len(nodes)):
        live += size[i]
        peak = max(peak, live)
        live -= freed[i]
    return peak * bytes_per_element


VIEW_OPS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "transpose", "permute", "expand", "t"}


def _is_view(node: Any, graph: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(graph.get_submodule(node.target), (nn.Flatten, nn.Identity))
    if node.op in ("call_method", "call_function"):
        return getattr(node.target, "__name__", node.target) in VIEW_OPS
    return False


def _elements(meta: Any) -> int:
    if meta is None:
        return 0
    if hasattr(meta, "shape"):
        return int(torch.Size(meta.shape).numel()) if meta.dtype.is_floating_point else 0
    if isinstance(meta, (tuple, list)):
        return sum(_elements(m) for m in meta)
    return 0


def _largest_layer_io(model: nn.Module, x: torch.Tensor) -> int:
    largest = [x.numel()]
    hooks = [m.register_forward_hook(lambda _m, a, out: largest.append(a[0].numel() + out.numel()))
             for m in model.modules() if isinstance(m, LAYER_TYPES)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return max(largest)


# Energy per operation, 45 nm (Horowitz, ISSCC 2014, as used by Han et al. 2016): a 32-bit float
# multiply-add 3.7 + 0.9 pJ; an integer multiply scales with the product of the operand widths (3.1 pJ at
# 32 x 32 bits, 0.2 pJ at 8 x 8), its 32-bit accumulate 0.1 pJ; a 32-bit DRAM read 640 pJ (160 pJ a byte),
# a 32-bit read of a small on-chip SRAM 5 pJ (1.25 pJ a byte).
PJ_FP32_MAC = 4.6
PJ_INT_MULT_32x32 = 3.1
PJ_INT_ADD = 0.1
PJ_DRAM_BYTE = 160.0
PJ_SRAM_BYTE = 1.25


def mac_energy_pj(weight_bits: int, act_bits: int) -> float:
    """One multiply-accumulate: integer when both operands are quantized, else fp32."""
    if weight_bits >= 32 or act_bits >= 32:
        return PJ_FP32_MAC
    return PJ_INT_MULT_32x32 * weight_bits * act_bits / 1024 + PJ_INT_ADD


@torch.no_grad()
def energy_uj(model: nn.Module, example: torch.Tensor, weight_bytes: int, *, int8: bool = False) -> float:
    """An energy proxy (microjoules) of one forward pass at batch 1.

    Documented so it can be argued with:

        sum over Linear/Conv2d layers of  nonzero MACs x E_mac(weight bits, input bits)
                                          + (input + output activation bytes) x E_SRAM
        + weight_bytes (the packed artifact) x E_DRAM

    i.e. zero weights are skipped (as sparse accelerators do), weights are read once from DRAM in their
    packed form, activations go through on-chip memory at their bit width. `int8`: the runtime computes
    every layer with 8-bit weights and activations (PyTorch or ONNX Runtime int8 kernels).
    """
    act_bits = {id(w.layer): w.bits for w in model.modules() if isinstance(w, QuantizedInput)}
    picojoules = [weight_bytes * PJ_DRAM_BYTE]

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        coding = getattr(module, "weight_coding", None)
        w_bits = 8 if int8 else (int(coding.bits) if coding is not None else 32)
        a_bits = 8 if int8 else act_bits.get(id(module), 32)
        density = float(torch.count_nonzero(module.weight)) / module.weight.numel()
        if isinstance(module, nn.Conv2d):
            macs = output[0].numel() * module.weight[0].numel()
        else:
            macs = module.weight.numel()
        moved = args[0][0].numel() * a_bits / 8 + output[0].numel() * (8 if int8 else 32) / 8
        picojoules.append(macs * density * mac_energy_pj(w_bits, a_bits) + moved * PJ_SRAM_BYTE)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LAYER_TYPES)]
    try:
        model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return sum(picojoules) / 1e6
