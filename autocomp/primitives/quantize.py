"""Symmetric per-output-channel weight quantization: w -> q * scale[c], q in [-(2^(b-1)-1), 2^(b-1)-1]."""

from __future__ import annotations

import torch
from torch import nn

from autocomp.packed import WeightCoding, dequantize
from autocomp.primitives.configs import Quantize
from autocomp.primitives.registry import handler


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and per-channel fp32 scales; a channel of zeros gets scale 1 (its codes are 0)."""
    qmax = 2 ** (bits - 1) - 1
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)
    view = scale.view(-1, *([1] * (weight.dim() - 1)))
    codes = torch.clamp(torch.round(weight.detach() / view), -qmax, qmax).to(torch.int32)
    return codes, scale


@handler(Quantize)
def quantize_layer(layer: nn.Module, config: Quantize) -> nn.Module:
    codes, scale = quantize_weight(layer.weight, config.bits)
    with torch.no_grad():
        layer.weight.copy_(dequantize(codes, scale))
    layer.weight_coding = WeightCoding(bits=config.bits, scale=scale)
    return layer
