"""Attention head removal: whole heads leave an attention module, physically, and its head count follows.

The `ratio` fraction of a module's heads is removed (rounded down; at least one head stays): the query / key /
value projections lose those heads' output rows, the output projection loses the matching input columns, and
the module's head-count attributes are updated, so the model runs with fewer heads of the same head dim.
With grouped-query attention (fewer key/value heads than query heads) whole groups go: a key/value head
together with the query heads that read it, so every remaining query head keeps its own key/value head and
`num_key_value_groups` is unchanged.

Heads (or groups) are ranked by `criterion` over their weights: l1 = the sum of |w|, l2 = the root of the sum
of w^2, over the head's rows of the q/k/v weights and its columns of the output projection (biases excluded).
The lowest-scoring ones go; equal scores go in head order (a stable sort): deterministic.

Families, known by class name (no transformers import), each found with its projections:

* `nn.MultiheadAttention` (packed `in_proj_weight`/`in_proj_bias`, `out_proj`): becomes a
  `HeadPrunedMultiheadAttention` (a subclass, same parameters) whose forward computes attention with its own
  head count, because `F.multi_head_attention_forward` ties the head dim to the input width;
* BERT/RoBERTa self-attention (`query`/`key`/`value`, the output projection `output.dense` in the parent
  module; `num_attention_heads`, `all_head_size`);
* `q_proj`/`k_proj`/`v_proj`/`o_proj` attention with `head_dim`: ViT and DeiT (`num_attention_heads`;
  transformers 5 has no ViTSelfAttention), Llama, Mistral and Qwen2 (grouped-query: head counts come from the
  projections' shapes in forward, `num_key_value_groups` is read by the attention function);
* GPT-2 self-attention (`c_attn`, a Conv1D packing q, k and v along its outputs, and `c_proj`; `num_heads`,
  `split_size`; `embed_dim` stays).

Any other attention module is refused by the coverage check, with the reason. A pruned module records the
original indices of the query heads it kept as `kept_heads`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from autocomp.errors import AutocompError
from autocomp.layers import ATTENTION, named_layer
from autocomp.primitives.configs import KnobRange, PrimitiveConfig
from autocomp.primitives.registry import CompressContext, register_primitive


@dataclass(frozen=True, kw_only=True)
class Heads(PrimitiveConfig):
    """Attention head removal: remove the `ratio` fraction of an attention module's heads, physically.

    floor(ratio * heads) heads go (whole key/value groups under grouped-query attention), at least one stays;
    `criterion` (l1 / l2 norm of each head's q/k/v/o weights) picks which. Applied to the whole model at once,
    before low rank; selected by the attention module (`type:BertSelfAttention`, `type:MultiheadAttention`).
    """

    NAME: ClassVar[str] = "heads"
    APPLIES_TO: ClassVar[tuple[str, ...]] = (ATTENTION, "MultiheadAttention")
    KNOBS: ClassVar[dict[str, KnobRange]] = {
        "ratio": KnobRange(kind=float, low=0.0, high=1.0, high_open=True, compresses=1),
        "criterion": KnobRange(kind=str, extra=("l1", "l2")),
    }
    ratio: float = 0.0
    criterion: str = "l1"

    def is_identity(self) -> bool:
        """Identity at ratio 0: no head is removed."""
        return self.ratio <= 0.0


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """An `nn.MultiheadAttention` with fewer heads than its embed_dim / head_dim (what `heads` makes of one).

    The same parameters (`in_proj_weight` of 3 * num_heads * head_dim rows, `out_proj` of that many inputs) and
    the same call; its forward is plain PyTorch (scaled dot products of its own heads). `_qkv_same_embed_dim`
    is False so `nn.TransformerEncoder`'s fused fast path, which assumes num_heads * head_dim == embed_dim,
    is not taken.
    """

    kept_heads: tuple[int, ...]

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of `query` over `key`/`value`, as `nn.MultiheadAttention.forward` with this head count."""
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, length, source = query.shape[0], query.shape[1], key.shape[1]
        heads, dim = self.num_heads, self.head_dim
        inner = heads * dim
        w_q, w_k, w_v = self.in_proj_weight.split(inner)
        b_q, b_k, b_v = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.split(inner)
        q = F.linear(query, w_q, b_q).view(batch, length, heads, dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(batch, source, heads, dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(batch, source, heads, dim).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) * dim**-0.5
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (batch * heads, L, S): per-head masks, numbered as the original heads
                attn_mask = attn_mask.view(batch, -1, length, source)
                if attn_mask.shape[1] != heads:
                    attn_mask = attn_mask[:, list(self.kept_heads)]
            scores = _masked(scores, attn_mask)
        if key_padding_mask is not None:
            scores = _masked(scores, key_padding_mask.view(batch, 1, 1, source))
        probs = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, p=self.dropout)
        out = (probs @ v).transpose(1, 2).reshape(batch, length, inner)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        weights = (probs.mean(1) if average_attn_weights else probs) if need_weights else None
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask


@dataclass
class _Tensor:
    """One tensor of an attention module that loses heads: where it is and which of its rows/columns are heads."""

    owner: nn.Module
    attr: str
    dim: int  # the dim along which heads lie
    roles: tuple[str, ...]  # consecutive blocks along `dim`: "q" (query heads) or "kv" (key/value heads)
    scored: bool = True  # a weight (biases are sliced, not scored)


@dataclass
class _Layout:
    """An attention module's heads: counts, head dim, its tensors, and how to set its head-count attributes."""

    n_q: int
    n_kv: int
    head_dim: int
    tensors: list[_Tensor]
    update: Callable[[int, int], None]  # (query heads, key/value heads) kept -> set the module's attributes

    @property
    def group(self) -> int:
        return self.n_q // self.n_kv


class Refused(AutocompError):
    """The heads of this attention module cannot be removed (the reason is the message)."""


def _names(module: nn.Module) -> list[str]:
    return [cls.__name__ for cls in type(module).__mro__]


BERT = ("BertSelfAttention", "RobertaSelfAttention")
PROJ = ("ViTAttention", "DeiTAttention", "LlamaAttention", "MistralAttention", "Qwen2Attention")
GPT2 = ("GPT2Attention",)


def _pair(owner: nn.Module, dim: int, roles: tuple[str, ...]) -> list[_Tensor]:
    """Weight (and bias, where heads lie along the outputs) of a Linear / Conv1D."""
    out = [_Tensor(owner, "weight", dim, roles)]
    bias = getattr(owner, "bias", None)
    is_output = (dim == 0) if isinstance(owner, nn.Linear) else (dim == 1)
    if is_output and isinstance(bias, torch.Tensor):
        out.append(_Tensor(owner, "bias", 0, roles, scored=False))
    return out


def _set(module: nn.Module, **values: int) -> None:
    for attr, value in values.items():
        if hasattr(module, attr):
            setattr(module, attr, value)


def _linear(module: nn.Module, attr: str) -> nn.Linear:
    part = getattr(module, attr, None)
    if not isinstance(part, nn.Linear):
        raise Refused(f"{type(module).__name__}.{attr} is not a Linear")
    return part


def layout(module: nn.Module, name: str, model: nn.Module) -> _Layout:
    """The head layout of the attention module `name` of `model`.

    Raises:
        Refused: an attention class whose head layout is unknown, or a variant of a known one not supported.
    """
    names = _names(module)
    cls = type(module).__name__
    if isinstance(module, nn.MultiheadAttention):
        if not isinstance(module.in_proj_weight, torch.Tensor):
            raise Refused("MultiheadAttention with separate key/value widths (kdim/vdim): no packed in-projection")
        if module.bias_k is not None or module.add_zero_attn:
            raise Refused("MultiheadAttention with add_bias_kv or add_zero_attn: not supported")
        n = module.in_proj_weight.shape[0] // 3 // module.head_dim

        def mha(n_q: int, n_kv: int) -> None:
            module.num_heads = n_q
            if type(module) is nn.MultiheadAttention:
                module.__class__ = HeadPrunedMultiheadAttention
            module._qkv_same_embed_dim = False  # no fused fast paths (they assume num_heads * head_dim == E)

        tensors = [_Tensor(module, "in_proj_weight", 0, ("q", "kv", "kv"))]
        if module.in_proj_bias is not None:
            tensors.append(_Tensor(module, "in_proj_bias", 0, ("q", "kv", "kv"), scored=False))
        return _Layout(n, n, module.head_dim, tensors + [_Tensor(module.out_proj, "weight", 1, ("q",))], mha)
    if any(n in BERT for n in names):
        parent = model.get_submodule(name.rpartition(".")[0])
        dense = getattr(getattr(parent, "output", None), "dense", None)
        if not isinstance(dense, nn.Linear):
            raise Refused(f"{cls}: its output projection (the parent's output.dense) was not found")
        dim = module.attention_head_size
        n = _linear(module, "query").out_features // dim

        def bert(n_q: int, n_kv: int) -> None:
            _set(module, num_attention_heads=n_q, all_head_size=n_q * dim)

        tensors = [t for attr, role in (("query", "q"), ("key", "kv"), ("value", "kv"))
                   for t in _pair(_linear(module, attr), 0, (role,))]
        return _Layout(n, n, dim, tensors + [_Tensor(dense, "weight", 1, ("q",))], bert)
    if any(n in PROJ for n in names):
        dim = module.head_dim
        n_q, n_kv = _linear(module, "q_proj").out_features // dim, _linear(module, "k_proj").out_features // dim
        if n_kv < 1 or n_q % n_kv:
            raise Refused(f"{cls}: {n_q} query heads do not split into {n_kv} key/value groups")

        def proj(q: int, kv: int) -> None:
            _set(module, num_attention_heads=q, num_heads=q, num_key_value_heads=kv)

        tensors = [t for attr, role in (("q_proj", "q"), ("k_proj", "kv"), ("v_proj", "kv"))
                   for t in _pair(_linear(module, attr), 0, (role,))]
        return _Layout(n_q, n_kv, dim, tensors + [_Tensor(_linear(module, "o_proj"), "weight", 1, ("q",))], proj)
    if any(n in GPT2 for n in names):
        if getattr(module, "is_cross_attention", False) or hasattr(module, "q_attn"):
            raise Refused(f"{cls} as cross-attention (q_attn): not supported")
        dim = module.head_dim
        n = module.split_size // dim

        def gpt2(n_q: int, n_kv: int) -> None:
            module.num_heads, module.split_size = n_q, n_q * dim

        roles = ("q", "kv", "kv")
        return _Layout(n, n, dim, _pair(module.c_attn, 1, roles) + [_Tensor(module.c_proj, "weight", 0, ("q",))],
                       gpt2)
    raise Refused(f"attention class {cls}: head layout unknown")


def _rows(layout: _Layout, tensor: _Tensor, kept_q: list[int], kept_kv: list[int]) -> torch.Tensor:
    """The indices along `tensor.dim` to keep, block by block."""
    d = layout.head_dim
    out, offset = [], 0
    for role in tensor.roles:
        heads, count = (kept_q, layout.n_q) if role == "q" else (kept_kv, layout.n_kv)
        out += [offset + h * d + i for h in heads for i in range(d)]
        offset += count * d
    return torch.tensor(out, dtype=torch.long)


def head_scores(layout: _Layout, criterion: str) -> torch.Tensor:
    """One score per key/value group (a head, without grouped-query attention): its weights' l1 or l2 norm."""
    total = torch.zeros(layout.n_kv, dtype=torch.float64)
    d = layout.head_dim
    for tensor in layout.tensors:
        if not tensor.scored:
            continue
        w = getattr(tensor.owner, tensor.attr).detach().double()
        w = w.movedim(tensor.dim, 0)
        offset = 0
        for role in tensor.roles:
            count = layout.n_q if role == "q" else layout.n_kv
            block = w[offset * d : (offset + count) * d].reshape(count, -1)
            per = block.abs().sum(1) if criterion == "l1" else block.pow(2).sum(1)
            total += per.view(layout.n_kv, -1).sum(1) if role == "q" else per  # q heads of a group add up
            offset += count
    return total if criterion == "l1" else total.sqrt()


def kept_units(n: int, ratio: float) -> int:
    """How many of `n` heads (or key/value groups) stay: n - floor(ratio * n), at least 1."""
    return max(1, n - math.floor(ratio * n + 1e-9))


def prune_heads_of(module: nn.Module, name: str, model: nn.Module, config: Heads) -> None:
    """Remove `config.ratio` of the heads of the attention module `name` of `model`, in place."""
    plan = layout(module, name, model)
    keep = kept_units(plan.n_kv, config.ratio)
    if keep == plan.n_kv:
        return
    order = torch.argsort(-head_scores(plan, config.criterion), stable=True)  # highest first, ties in order
    kept_kv = sorted(int(i) for i in order[:keep])
    kept_q = [u * plan.group + j for u in kept_kv for j in range(plan.group)]
    for tensor in plan.tensors:
        current = getattr(tensor.owner, tensor.attr)
        sliced = current.detach().index_select(tensor.dim, _rows(plan, tensor, kept_q, kept_kv)).clone()
        setattr(tensor.owner, tensor.attr, nn.Parameter(sliced, requires_grad=current.requires_grad))
    for owner in {id(t.owner): t.owner for t in plan.tensors}.values():
        if isinstance(owner, nn.Linear):
            owner.out_features, owner.in_features = owner.weight.shape
        elif hasattr(owner, "nf") and hasattr(owner, "nx"):  # transformers' Conv1D: weight (in, out)
            owner.nx, owner.nf = owner.weight.shape
    plan.update(len(kept_q), len(kept_kv))
    before = getattr(module, "kept_heads", tuple(range(plan.n_q)))
    module.kept_heads = tuple(before[i] for i in kept_q)  # type: ignore[assignment]


def prune_heads(model: nn.Module, configs: Mapping[str, PrimitiveConfig], context: CompressContext) -> nn.Module:
    """The model handler of `heads`: every named attention module loses its heads, in place; returns `model`."""
    for name in sorted(configs):
        config = configs[name]
        if not isinstance(config, Heads):
            raise TypeError(f"head removal got a {type(config).__name__} config for '{name}'")
        module = named_layer(model, name)
        try:
            prune_heads_of(module, name, model, config)
        except Refused as err:
            raise AutocompError(f"heads cannot compress '{name}': {err}") from None
    return model


def heads_supports(module: Any, name: str, model: Any, example: Any) -> str | None:
    """Head removal's coverage: None for an attention module of a known head layout, else why not."""
    try:
        plan = layout(module, name, model)
    except Refused as err:
        return str(err)
    if plan.n_q * plan.head_dim == 0:
        return f"attention class {type(module).__name__}: no heads found"
    return None


register_primitive(Heads, model=prune_heads, before="lowrank", supports=heads_supports)

__all__ = ["HeadPrunedMultiheadAttention", "Heads", "Refused", "head_scores", "heads_supports", "kept_units", "layout",
           "prune_heads", "prune_heads_of"]
