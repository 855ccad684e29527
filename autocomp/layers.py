"""The layer kinds autocomp compresses, and which of a module's tensors is its weight.

A kind is a class name found in the module's class hierarchy, so subclasses count (MultiheadAttention's
`out_proj` is a `NonDynamicallyQuantizableLinear`: a Linear), and `transformers`' GPT-2 `Conv1D` is known by
name without importing transformers. The weight is `weight`, except for `nn.MultiheadAttention`, whose
packed query/key/value projection `in_proj_weight` is its own Parameter (its `out_proj` is a Linear of its
own, a layer apart).

Params (`type:Params`) is every other module holding float32 parameters of its own: norm layers, embeddings
blocks (position embeddings, cls tokens), layer scales. The elementwise primitives (prune, share, quantize) reach
the tensors no other kind holds through it, one tensor per module (its `weight`, else its largest; a norm's bias
stays fp32 as a Linear's does).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocomp.errors import AutocompError

# Linear/Conv2d: every primitive; the others: the elementwise ones (prune, share, quantize)
KINDS = ("Linear", "Conv2d", "Conv1d", "ConvTranspose2d", "Conv1D", "Embedding", "MultiheadAttention", "Params")
# a module of no other kind (and no attention) holding parameters of its own: a norm layer (BatchNorm,
# LayerNorm, RMSNorm), an embeddings block (position embeddings, cls token), a layer scale; its weight is
# `weight`, else its largest parameter of its own
PARAMS = "Params"
# holds another module's parametrized tensors (weight norm): that module is the layer
NOT_PARAMS = ("ParametrizationList",)
# not a weight-bearing kind: an attention module as a whole, selectable for primitives that apply to it (heads)
ATTENTION = "Attention"


def weight_name(module: nn.Module) -> str:
    """The attribute holding the weight compression acts on.

    `in_proj_weight` for attention; for a Params module `weight` where it has one, else its largest
    parameter of its own (the first of the largest: ViT's `position_embeddings`); else `weight`.
    """
    kind = _named_kind(module)
    if kind == "MultiheadAttention":
        return "in_proj_weight"
    if kind is None:
        own = _own_tensors(module)
        if own and "weight" not in own:
            return max(own, key=lambda n: (own[n].numel(), -list(own).index(n)))
    return "weight"


def layer_kind(module: nn.Module) -> str | None:
    """The kind of `module` (one of KINDS), or None when autocomp does not compress it.

    An attention module with separate query/key/value weights (kdim or vdim != embed_dim) has no packed
    `in_proj_weight` and is not compressible as a whole (its `out_proj` still is).
    """
    kind = _named_kind(module)
    if kind is None:
        return _params_kind(module)
    if not isinstance(getattr(module, weight_name(module), None), torch.Tensor):
        return None
    return kind


def _params_kind(module: nn.Module) -> str | None:
    """PARAMS for a module of no other kind that holds float32 parameters of its own, else None."""
    if _is_attention(module) or type(module).__name__ in NOT_PARAMS:
        return None  # attention is removed by heads; its own tensors (LeViT's biases) stay as they are
    weight = _own_tensors(module).get(weight_name(module))
    return PARAMS if weight is not None and weight.dtype == torch.float32 else None


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters by name, a parametrized one (while fine-tuning constrains it) included."""
    own: dict[str, torch.Tensor] = dict(module.named_parameters(recurse=False))
    if parametrize.is_parametrized(module):
        own.update({name: getattr(module, name) for name in module.parametrizations.keys()})  # type: ignore[union-attr,operator]
    return own


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight tensor of a compressible module (see `weight_name`)."""
    return getattr(module, weight_name(module))


def input_dim(layer: nn.Module) -> int:
    """The dimension of a layer's weight that runs along its inputs (N:M runs, quantization groups).

    Linear / Conv / attention in-projection: dim 1 (out, in, ...); `transformers`' Conv1D and ConvTranspose2d
    store (in, out, ...): dim 0; an Embedding's rows and a Params tensor: the last dim.
    """
    kind = layer_kind(layer)
    if kind in ("Conv1D", "ConvTranspose2d"):
        return 0
    if kind in ("Linear", "Conv2d", "Conv1d", "MultiheadAttention"):
        return 1
    return weight_of(layer).dim() - 1


def stored_weight_problem(module: nn.Module) -> str | None:
    """Why a layer's weight cannot be stored as codes or a codebook, or None when it can.

    A parametrized weight (weight norm: wav2vec2's positional conv) is computed from other tensors on each
    access; the module stores those, not the weight, so quantized or shared values would not survive a reload.
    """
    if parametrize.is_parametrized(module, weight_name(module)):
        return "its weight is parametrized (e.g. weight norm): the module stores other tensors, not the weight"
    return None


def root_problem(name: str) -> str | None:
    """Why layer `name` cannot be compressed as a layer: the model itself (its own tensors) is not one."""
    if not name:
        return "the model itself holds these parameters; compress names layers inside it"
    return None


def compressible_parts(module: nn.Module) -> list[nn.Module]:
    """The compressible layers a policy's layer name stands for: itself, or the parts that replaced it.

    An attention module stands for its in-projection only; its `out_proj` is selected as a layer itself. A
    Params module stands for its own tensor only (ViT's embeddings block holds the patch convolution too).
    """
    if layer_kind(module) in ("MultiheadAttention", PARAMS):
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


def named_layer(model: nn.Module, name: str) -> nn.Module:
    """The module of `model` a policy names.

    Raises:
        AutocompError: The model has no module of that name.
    """
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise AutocompError(f"policy names layer '{name}', which the model does not have") from None


__all__ = ["ATTENTION", "KINDS", "PARAMS", "attention_kind", "compressible_parts", "input_dim", "layer_kind",
           "module_kind", "named_layer", "root_problem", "stored_weight_problem", "weight_name", "weight_of"]
