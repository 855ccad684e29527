"""The layer kinds autocomp compresses, and which of a module's tensors is its weight.

A kind is a class name found in the module's class hierarchy, so subclasses count (MultiheadAttention's
`out_proj` is a `NonDynamicallyQuantizableLinear`: a Linear), and `transformers`' GPT-2 `Conv1D` is known by
name without importing transformers. The weight is `weight`, except for `nn.MultiheadAttention`, whose
packed query/key/value projection `in_proj_weight` is its own Parameter (its `out_proj` is a Linear of its
own, a layer apart).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

# Linear/Conv2d: every primitive; the others: the elementwise ones (prune, share, quantize)
KINDS = ("Linear", "Conv2d", "Conv1d", "ConvTranspose2d", "Conv1D", "Embedding", "MultiheadAttention")
# not a weight-bearing kind: an attention module as a whole, selectable for primitives that apply to it (heads)
ATTENTION = "Attention"


def weight_name(module: nn.Module) -> str:
    """The attribute holding the weight compression acts on: `in_proj_weight` for attention, else `weight`."""
    return "in_proj_weight" if _named_kind(module) == "MultiheadAttention" else "weight"


def layer_kind(module: nn.Module) -> str | None:
    """The kind of `module` (one of KINDS), or None when autocomp does not compress it.

    An attention module with separate query/key/value weights (kdim or vdim != embed_dim) has no packed
    `in_proj_weight` and is not compressible as a whole (its `out_proj` still is).
    """
    kind = _named_kind(module)
    if kind is None or not isinstance(getattr(module, weight_name(module), None), torch.Tensor):
        return None
    return kind


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight tensor of a compressible module (see `weight_name`)."""
    return getattr(module, weight_name(module))


def stored_weight_problem(module: nn.Module) -> str | None:
    """Why a layer's weight cannot be stored as codes or a codebook, or None when it can.

    A parametrized weight (weight norm: wav2vec2's positional conv) is computed from other tensors on each
    access; the module stores those, not the weight, so quantized or shared values would not survive a reload.
    """
    if parametrize.is_parametrized(module, weight_name(module)):
        return "its weight is parametrized (e.g. weight norm): the module stores other tensors, not the weight"
    return None


def compressible_parts(module: nn.Module) -> list[nn.Module]:
    """The compressible layers a policy's layer name stands for: itself, or the parts that replaced it.

    An attention module stands for its in-projection only; its `out_proj` is selected as a layer itself.
    """
    if layer_kind(module) == "MultiheadAttention":
        return [module]
    return [m for m in module.modules() if layer_kind(m) is not None]


def attention_kind(module: nn.Module) -> str | None:
    """ATTENTION for an attention module taken as a whole (head removal), else None.

    Known by class name, without importing transformers: a class in the module's hierarchy whose name ends in
    "Attention", on a module that holds no other such module (BERT's BertAttention holds BertSelfAttention,
    the one with the heads). Whether a primitive can act on it is that primitive's coverage check's call.
    """
    if not _is_attention(module) or any(_is_attention(m) for m in module.modules() if m is not module):
        return None
    return ATTENTION


def module_kind(module: nn.Module) -> str | None:
    """What selectors and primitives' APPLIES_TO see: the layer kind, else the attention kind, else None."""
    return layer_kind(module) or attention_kind(module)


def _is_attention(module: nn.Module) -> bool:
    return any(cls.__name__.endswith("Attention") for cls in type(module).__mro__)


def _named_kind(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        if cls.__name__ in KINDS:
            return cls.__name__
    return None


__all__ = ["ATTENTION", "KINDS", "attention_kind", "compressible_parts", "layer_kind", "module_kind",
           "stored_weight_problem", "weight_name", "weight_of"]
