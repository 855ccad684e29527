"""Structured channel pruning: physically remove output channels (filters / neurons) of Conv2d and Linear layers.

Built on Torch-Pruning's DependencyGraph, used at its low level: the graph is traced once on
`context.example`, every coupled group of channels is scored here, and each group is pruned with
`DG.get_pruning_group(root, prune_out_channels, idxs).prune()`. The high-level `tp.pruner.MetaPruner` is
not used because we need exact, per-layer control it does not give: its `round_to` has no floor (a
kept count can round to 0), its importances normalise and average over every layer of a group (including
the next layers' input weights), its `pruning_ratio_dict` applies to a module's whole sub-tree, and its
per-step schedule reinterprets ratios. Scoring ourselves keeps the counts and the choice as documented.

Semantics, for each named layer (a name that is a container stands for every Conv2d/Linear inside it; an
exact layer name wins over a container's):

* A *group* is a set of output channels that must be removed together: a layer's outputs, plus the outputs
  of every layer they are added to (residual additions, in the dependency graph). Each group is pruned
  once, with the **largest** ratio any configured member asks for; its criterion and round_to come from
  that member's config (ties: larger round_to, then the first name in sorted order). The group's channels
  are ranked by the **sum over its Conv2d/Linear members** of the criterion (configured or not, because
  all of them lose the channel). The following layers' inputs, BatchNorms and concatenations shrink with it.
* round(ratio * n) channels are removed from a group of n; the kept count is then rounded down to a
  multiple of round_to but kept >= round_to. If round_to > n no multiple fits, so the count is not rounded
  and only kept >= 1. A group is never emptied.
* Criteria, per output channel of a member: l1 / l2 = norm of the filter's weights (bias excluded);
  taylor = |sum over the filter of w * dL/dw|, L = mean cross-entropy of the model (in eval mode) on
  `context.calibration` (l1 without calibration data). bn_scale = |gamma| summed over the group's
  BatchNorms: the one right after each member conv, or, in pre-activation nets (DenseNet-BC), those that
  normalise the channels after a concatenation; l1 of the members where the group has no BatchNorm.
  The lowest-scoring channels go; equal scores go in channel order (a stable sort): deterministic.
* A group that reaches the model's output (the classifier's out_features, or any layer whose output is
  the model output) is never pruned, even if named.

The model is changed in place and returned: plain, smaller modules, no masks, no hooks, the same
state_dict keys. Module train/eval flags and parameters' requires_grad are restored; tracing and the
taylor pass run in eval mode, so BatchNorm running statistics are not updated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autocomp.errors import AutocompError
from autocomp.primitives.configs import Channels
from autocomp.primitives.registry import CompressContext, model_handler

LAYER_TYPES = (nn.Conv2d, nn.Linear)
CALIBRATION_CHUNK = 256  # rows per forward/backward in the taylor pass


def kept_channels(n: int, ratio: float, round_to: int = 1) -> int:
    """How many of `n` channels stay: n - round(ratio * n), rounded down to a multiple of round_to.

    At least round_to, unrounded where round_to > n, and never below 1.
    """
    kept = n - int(round(ratio * n))
    if 1 < round_to <= n:
        kept = max(round_to, kept // round_to * round_to)
    return min(n, max(1, kept))


@dataclass
class _Part:
    """A Conv2d/Linear layer (or a BatchNorm) whose output channels belong to a group."""

    name: str
    module: nn.Module
    idxs: list[int]  # its channels in the group
    root_idxs: list  # the same channels, numbered as the group's root layer numbers them


def _layer_configs(model: nn.Module, configs: Mapping[str, Channels]) -> dict[str, Channels]:
    """Non-identity configs per Conv2d/Linear layer name; containers expand to the layers inside them."""
    exact: dict[str, Channels] = {}
    expanded: dict[str, Channels] = {}
    for name in sorted(configs):
        config = configs[name]
        if not isinstance(config, Channels):
            raise TypeError(f"channel pruning got a {type(config).__name__} config for '{name}'")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise AutocompError(f"policy names layer '{name}', which the model does not have") from None
        if isinstance(module, LAYER_TYPES):
            exact[name] = config
            continue
        for sub, part in module.named_modules():
            if isinstance(part, LAYER_TYPES):
                expanded[f"{name}.{sub}" if name else sub] = config
    merged = {**expanded, **exact}
    return {name: c for name, c in merged.items() if not c.is_identity()}


def _filter_norms(module: nn.Module, p: int) -> torch.Tensor:
    return module.weight.detach().flatten(1).double().norm(p=p, dim=1)


def _taylor_grads(model: nn.Module, calibration: tuple[torch.Tensor, torch.Tensor]) -> dict[nn.Module, torch.Tensor]:
    """d(mean cross-entropy)/d(weight) of every Conv2d/Linear, in eval mode, leaving no .grad behind."""
    layers = [m for m in model.modules() if isinstance(m, LAYER_TYPES)]
    weights = [m.weight for m in layers]
    inputs, labels = calibration
    totals: list[torch.Tensor | None] = [None] * len(weights)
    with torch.enable_grad():
        for start in range(0, len(inputs), CALIBRATION_CHUNK):
            x, y = inputs[start : start + CALIBRATION_CHUNK], labels[start : start + CALIBRATION_CHUNK]
            loss = nn.functional.cross_entropy(model(x), y, reduction="sum") / len(inputs)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            totals = [t if g is None else (g if t is None else t + g) for t, g in zip(totals, grads)]
    return {m: g.detach() for m, g in zip(layers, totals) if g is not None}


def _scores(part: _Part, criterion: str, grads: dict[nn.Module, torch.Tensor] | None) -> torch.Tensor:
    """Per-channel criterion of a Conv2d/Linear member's channels in the group (l1 where it cannot be had)."""
    weight = part.module.weight.detach().double()
    if criterion == "l2":
        return weight.flatten(1).norm(p=2, dim=1)[part.idxs]
    if criterion == "taylor" and grads is not None and part.module in grads:
        return (weight * grads[part.module].double()).flatten(1).sum(1).abs()[part.idxs]
    return weight.flatten(1).norm(p=1, dim=1)[part.idxs]


def _group_parts(
    graph: tp.DependencyGraph, group, names: dict[nn.Module, str], out_width: int
) -> tuple[list[_Part], list[_Part], bool, list[str]]:
    """What a channel group holds: its layers, its BatchNorms, and whether it reaches the output.

    The group's Conv2d/Linear output-channel members, its affine BatchNorms, whether it reaches the model
    output, and the members nothing traced consumes although they cannot be the output layer.
    """
    reaches_output = False
    untraced: list[str] = []
    members: list[_Part] = []
    bns: list[_Part] = []
    for item in group.items:
        dep, target = item.dep, item.dep.target
        if target.type == tp.ops.OPTYPE.OUTPUT:
            reaches_output = True
        if not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        module = target.module
        part = _Part(names.get(module, ""), module, list(item.idxs), list(item.root_idxs))
        if isinstance(module, LAYER_TYPES):
            if not target.outputs:  # nothing consumes it: it produces the model output...
                reaches_output = True
                if module.weight.shape[0] != out_width:  # ...unless its width says it cannot
                    untraced.append(part.name)
            members.append(part)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            bns.append(part)
    return members, bns, reaches_output, untraced


def _plan(graph, group, layer_configs, names, grads, out_width) -> tuple[nn.Module, object, list[int]] | None:
    """(root layer, its out-channel pruning function, root channels to remove) for one group, or None."""
    members, bns, reaches_output, untraced = _group_parts(graph, group, names, out_width)
    lost = [name for name in untraced if name in layer_configs]
    if lost:  # e.g. a .detach() or a Python-side op in forward cut the trace: say so, never skip silently
        raise AutocompError(f"channel pruning cannot follow the outputs of layer(s) {', '.join(lost)} through "
                            "the model's forward (a detach or an untraced operation cuts the graph)")
    configured = [layer_configs[name] for name in sorted(m.name for m in members) if name in layer_configs]
    if not configured or reaches_output:
        return None
    config = max(configured, key=lambda c: (c.ratio, c.round_to))  # the first in name order among equals
    root = group.items[0]
    n = len(root.idxs)
    n_remove = n - kept_channels(n, config.ratio, config.round_to)
    if n_remove <= 0:
        return None
    score = torch.zeros(n, dtype=torch.float64)
    if config.criterion == "bn_scale" and bns:
        scored = [(bn, bn.module.weight.detach().double().abs()[bn.idxs]) for bn in bns]
    else:
        scored = [(m, _scores(m, config.criterion, grads)) for m in members]
    for part, values in scored:
        if len(part.root_idxs) != len(values) or any(r is None for r in part.root_idxs):
            continue  # channels that do not map back to the root's (not seen in plain CNNs)
        score.index_add_(0, torch.tensor(part.root_idxs, dtype=torch.long), values)
    order = torch.argsort(score, stable=True)
    remove = sorted(int(i) for i in order[:n_remove])
    return root.dep.target.module, root.dep.handler, remove


@model_handler(Channels)
def prune_channels(model: nn.Module, configs: Mapping[str, Channels], context: CompressContext) -> nn.Module:
    """Remove output channels of the named layers (see the module docstring); returns `model`, changed in place."""
    layer_configs = _layer_configs(model, configs)
    if not layer_configs:
        return model
    if context.example is None:
        raise AutocompError("channel pruning needs an example input batch (compress(..., example=...))")
    training = {m: m.training for m in model.modules()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    names = {m: name for name, m in model.named_modules()}
    try:
        model.eval()
        grads = None
        if context.calibration is not None and any(c.criterion == "taylor" for c in layer_configs.values()):
            grads = _taylor_grads(model, context.calibration)
        # a tuple, so Torch-Pruning calls model(example) (a bare tensor it first tries as model(*example))
        example = (context.example,) if isinstance(context.example, torch.Tensor) else context.example
        with torch.no_grad():
            try:
                out_width = model(*example).shape[1]
            except Exception as err:
                raise AutocompError(f"channel pruning: the model does not run on the example input: {err}") from err
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
            missing = [n for n in layer_configs if model.get_submodule(n) not in graph.module2node]
            if missing:
                raise AutocompError(f"channel pruning cannot follow the outputs of layer(s) {', '.join(missing)} "
                                    "through the model's forward (a detach or an untraced operation cuts the graph)")
            # score every group on the unpruned model first, so the result does not depend on pruning order
            plans = [_plan(graph, g, layer_configs, names, grads, out_width)
                     for g in graph.get_all_groups(root_module_types=LAYER_TYPES)]
            for plan in plans:
                if plan is None:
                    continue
                root, prune_fn, remove = plan
                group = graph.get_pruning_group(root, prune_fn, idxs=remove)
                if graph.check_pruning_group(group):  # False would empty some coupled layer: leave it whole
                    group.prune(record_history=False)
    finally:
        for module, flag in training.items():
            module.training = flag
    for name, p in model.named_parameters():
        p.requires_grad_(requires_grad.get(name, True))
    return model


__all__ = ["kept_channels", "prune_channels"]
