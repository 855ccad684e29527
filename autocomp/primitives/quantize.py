"""Symmetric weight quantization (w -> q * scale) and calibrated fake quantization of layer inputs.

Weights: q in [-(2^(b-1)-1), 2^(b-1)-1] per output channel, per tensor, or per group of `group_size`
consecutive weights along each output channel's inputs (GPTQ / AWQ-style group-wise scales); b = 2 is
ternary {-s, 0, s}; b = 1 is sign(w) x the mean |w| of the channel or group (the scale that minimises the
squared error of a sign code), pruned zeros staying zero. A layer whose weights are already shared (a
k-means codebook) keeps its codebook: its indices are its weight bits. Activations: an affine `act_bits`
grid per tensor, its range the min and max the layer's input takes on calibration data, applied in
evaluation as fake quantization.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from autocomp.errors import AutocompError
from autocomp.layers import (
    PARAMS,
    compressible_parts,
    input_dim,
    layer_kind,
    root_problem,
    stored_weight_problem,
    weight_of,
)
from autocomp.packed import WeightCoding, dequantize
from autocomp.packed.format import group_count, scale_map
from autocomp.primitives.configs import Quantize
from autocomp.primitives.registry import CompressContext, model_handler, supports


def _block_scales(blocks: torch.Tensor, bits: int) -> torch.Tensor:
    """One fp32 scale per row of `blocks`: max |w| over qmax, or for 1 bit the mean |w| of the nonzeros.

    A row of zeros gets scale 1 (its codes are all 0).
    """
    if bits == 1:
        nonzero = (blocks != 0).sum(dim=1).clamp(min=1)
        scale = blocks.abs().sum(dim=1) / nonzero
    else:
        scale = blocks.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
    return torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)


def quantize_weight(weight: torch.Tensor, bits: int, per_channel: bool = True, group_size: int = 0,
                    axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and fp32 scales (one per output channel; the same one repeated when per tensor).

    With `group_size` > 0 (which overrides `per_channel`) the scales are group-wise: the weight's rows are
    its slices along `axis` (the output dim), each flattened in memory order, and every run of
    `group_size` consecutive weights of a row (the last one possibly shorter) gets its own scale; the
    scales then have shape (rows, groups per row), as `WeightCoding` holds them.
    A channel, group (or tensor) of zeros gets scale 1, its codes all 0.
    """
    w = weight.detach()
    if group_size:
        rows, groups = group_count(w.shape, group_size, axis)
        flat = w.movedim(axis, 0).reshape(rows, -1) if rows else w.new_zeros(0, 0)
        # zero padding of the last, shorter group changes neither its max |w| nor its nonzeros' mean |w|
        padded = nn.functional.pad(flat, (0, groups * group_size - flat.shape[1]))
        scale = _block_scales(padded.reshape(rows * groups, group_size), bits).reshape(rows, groups)
        view = scale_map(scale, w.shape, group_size, axis)
    else:
        scale = _block_scales(w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1), bits)
        if not per_channel:
            scale = scale.expand(w.shape[0]).contiguous()
        view = scale.view(-1, *([1] * (w.dim() - 1)))
    if bits == 1:
        codes = torch.sign(w).to(torch.int32)
    else:
        qmax = 2 ** (bits - 1) - 1
        codes = torch.clamp(torch.round(w / view), -qmax, qmax).to(torch.int32)
    return codes, scale


def group_layout(layer: nn.Module, group_size: int) -> tuple[int, int]:
    """(group size, output axis) that `group_size` gives `layer`'s weight; (0, 0) means per-channel scales.

    The rows are the output channels: dim 0, or dim 1 for weights stored (in, out, ...) (Conv1D,
    ConvTranspose2d); the groups run along the rest (a convolution's fan-in). A group as long as a row or
    longer is one scale per row: per-channel scales when the rows are dim 0. A Params tensor (a norm's gains)
    keeps its one scale per tensor.
    """
    weight = weight_of(layer)
    if not group_size or layer_kind(layer) == PARAMS or weight.dim() < 2:
        return 0, 0
    axis = 1 if input_dim(layer) == 0 else 0
    length = weight.numel() // weight.shape[axis] if weight.shape[axis] else 0
    if axis == 0 and group_size >= length:
        return 0, 0
    return min(group_size, max(length, 1)), axis


def quantize_layer(layer: nn.Module, bits: int, per_channel: bool = True, group_size: int = 0) -> None:
    """Round the layer's weights to `bits` in place and record the coding (skipped for shared weights).

    `group_size` > 0: group-wise scales along each output channel's inputs (see `group_layout`).
    """
    coding = getattr(layer, "weight_coding", None)
    if coding is not None and not isinstance(coding, WeightCoding):
        return  # shared weights: the codebook indices are already the weight's code
    weight = weight_of(layer)
    # groups imply per-channel scales at least; a norm's gains: one scale, not one per value
    per_channel = (per_channel or group_size > 0) and layer_kind(layer) != PARAMS
    group, axis = group_layout(layer, group_size)
    codes, scale = quantize_weight(weight, bits, per_channel, group, axis)
    with torch.no_grad():
        weight.copy_(dequantize(codes, scale, group, axis))
    layer.weight_coding = WeightCoding(bits=bits, scale=scale, group_size=group, axis=axis)


# what model code reads from a layer it calls (ViT: projection.weight.dtype; MobileNet: conv.stride)
FACE = frozenset({"weight", "bias", "in_features", "out_features", "in_channels", "out_channels", "kernel_size",
                  "stride", "padding", "dilation", "groups", "padding_mode", "transposed", "output_padding",
                  "dtype", "device"})


class QuantizedInput(nn.Module):
    """Runs `layer` on its input fake-quantized to an affine `bits` grid (scale, zero point as buffers)."""

    def __init__(self, layer: nn.Module, bits: int) -> None:
        super().__init__()
        self.layer = layer
        self.bits = bits
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))

    def __getattr__(self, name: str) -> Any:
        """The wrapped layer's attributes (weight, stride, in_features, ...), so model code reading them works.

        The wrapper keeps the layer's face, as factorised layers do.
        """
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules of the wrapper itself
        except AttributeError:
            if name not in FACE:  # never autocomp's own markers (weight_coding...): the layer owns those
                raise
            return getattr(self.layer, name)

    def calibrate(self, low: float, high: float) -> None:
        """Set scale and zero point from an observed input range, widened to hold 0 exactly."""
        low, high = min(low, 0.0), max(high, 0.0)  # the grid must hold 0 exactly (padding, ReLU zeros)
        levels = 2**self.bits - 1
        # a range too narrow for float32 (a dead channel's constant input) would give scale 0 and x / 0 = NaN
        scale = (high - low) / levels if high - low > 1e-12 else 1.0
        self.scale.fill_(scale)
        self.zero_point.fill_(int(min(max(round(-low / scale), 0), levels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize the input (straight-through gradients when training), then run the layer."""
        if self.bits < 32:  # 32 while calibrating: observe what the layer gets unquantized
            # plain ops rather than torch.fake_quantize_*: torch.export and every ONNX opset take these
            q = torch.clamp(torch.round(x / self.scale) + self.zero_point, 0, 2**self.bits - 1)
            quantized = (q - self.zero_point) * self.scale
            # fine-tuning: gradients pass straight through the rounding (same values)
            x = x + (quantized - x).detach() if self.training else quantized
        return self.layer(x)


def _keep_module_path(model: nn.Module, name: str) -> None:
    """Make the blocks around layer `name` call it as a module, so its input is quantized.

    PyTorch's fused fast path of nn.TransformerEncoderLayer / DecoderLayer (evaluation without gradients)
    reads `linear1.weight` and friends and never calls the layers: it would skip the input quantizer (and
    report an accuracy the quantized model does not have). That path runs only while the block's
    `activation_relu_or_gelu` flag is set; clearing it keeps the ordinary path (which calls `activation`).
    """
    parts = name.split(".")
    for i in range(len(parts)):
        block = model.get_submodule(".".join(parts[:i]))
        if getattr(block, "activation_relu_or_gelu", False):
            block.activation_relu_or_gelu = False


def _calibrate(model: nn.Module, wrappers: list[QuantizedInput], inputs: torch.Tensor) -> None:
    ranges: dict[int, list[float]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        low, high = ranges.get(id(module), [float("inf"), float("-inf")])
        ranges[id(module)] = [min(low, float(x.min())), max(high, float(x.max()))]

    # observe the raw input of each wrapped layer, with every other wrapper still passing inputs through
    hooks = [w.layer.register_forward_pre_hook(record) for w in wrappers]
    saved = [(w, w.bits) for w in wrappers]
    training = {m: m.training for m in model.modules()}
    model.eval()  # BatchNorm must use (and keep) its running statistics while ranges are observed
    for w in wrappers:
        w.bits = 32
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), 256):
                model(inputs[start : start + 256])
    finally:
        for hook in hooks:
            hook.remove()
        for w, bits in saved:
            w.bits = bits
        for module, flag in training.items():
            module.training = flag
    for w in wrappers:
        if id(w.layer) in ranges:
            w.calibrate(*ranges[id(w.layer)])


@supports(Quantize)
def quantize_supports(module: nn.Module, name: str, model: nn.Module, example: object = None) -> str | None:
    """Refuses layers whose weight the packed file could not hold as codes (see `stored_weight_problem`)."""
    return root_problem(name) or stored_weight_problem(module)


@model_handler(Quantize)
def quantize_model(model: nn.Module, configs: Mapping[str, Quantize], context: CompressContext) -> nn.Module:
    """Quantize the configured layers' weights and wrap those with `act_bits` < 32, calibrating their ranges."""
    wrappers = []
    done: dict[int, nn.Module] = {}  # a weight tied across layers is quantized once (first config wins)
    for name, config in configs.items():
        module = model.get_submodule(name)
        if not Quantize.KNOBS["group_size"].allows(config.group_size):  # a policy written by hand
            raise AutocompError(f"quantize group_size={config.group_size!r} on '{name}': must be "
                                f"{Quantize.KNOBS['group_size'].describe()} (0 = off)")
        if config.bits < 32:
            for layer in compressible_parts(module):
                if id(weight_of(layer)) not in done:
                    quantize_layer(layer, config.bits, bool(config.per_channel), config.group_size)
                    done[id(weight_of(layer))] = layer
        if config.act_bits < 32:
            limits = Quantize.KIND_LIMITS["act_bits"]
            why = limits.get(type(module).__name__) or limits.get(layer_kind(module) or "")
            if why:  # the search space refuses this at bind time; a policy written by hand meets it here
                raise AutocompError(f"quantize act_bits={config.act_bits} on '{name}' ({type(module).__name__}): "
                                    f"{why}; use act_bits 32 there")
            wrapper = QuantizedInput(module, config.act_bits)
            model.set_submodule(name, wrapper)
            wrappers.append(wrapper)
            _keep_module_path(model, name)
    for layer in model.modules():  # every layer holding a tied weight gets the one coding
        if layer_kind(layer) is not None and id(weight_of(layer)) in done:
            coding = getattr(done[id(weight_of(layer))], "weight_coding", None)
            if coding is not None:
                layer.weight_coding = coding
    if wrappers and context.calibration is not None:
        _calibrate(model, wrappers, context.calibration[0])
    elif wrappers and not context.skeleton:
        raise AutocompError("activation quantization (act_bits < 32) needs calibration data: "
                            "compress(..., calibration=(inputs, labels))")
    # a skeleton (the shapes a packed file is loaded into) keeps placeholder ranges: the file holds the real ones
    return model
