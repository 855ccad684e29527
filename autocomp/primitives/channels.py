"""Structured channel pruning: physically remove output channels (filters / neurons) of Conv and Linear layers.

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

import copy
import math
import sys
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autocomp.errors import AutocompError
from autocomp.layers import named_layer
from autocomp.outputs import logits, per_position
from autocomp.primitives.configs import Channels
from autocomp.primitives.registry import CompressContext, model_handler, supports

LAYER_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)
CALIBRATION_CHUNK = 256  # rows per forward/backward in the taylor pass
ANALYSIS_SECONDS = 30.0  # the dependency analysis of one model may take this long; longer, it is refused


def kept_channels(n: int, ratio: float, round_to: int = 1) -> int:
    """How many of `n` channels stay: n - round(ratio * n), rounded down to a multiple of round_to.

    At least round_to, unrounded where round_to > n, and never below 1.
    """
    kept = n - int(round(ratio * n))
    if 1 < round_to <= n:
        kept = max(round_to, kept // round_to * round_to)
    return min(n, max(1, kept))


class AnalysisTimeout(AutocompError):
    """The dependency analysis ran past its time limit."""


class AnalysisDiverged(AutocompError):
    """A channel group of the dependency analysis grew without bound (its index mappings never settle)."""


# (dependency, indices) items one channel group may hold. A plain group holds a few per layer it touches (a
# residual stream: a few hundred in a deep net); on grouped-query attention (Llama, Mistral, Qwen2) the
# index mappings through repeat_kv never settle and Torch-Pruning's group grows past 10^5 items for minutes
GROUP_ITEMS_LIMIT = 20_000


def _has_pruning_op(self: Any, dep: Any, idxs: Any) -> bool:
    """Torch-Pruning's `Group.has_pruning_op` (is this (target, handler, indices) already in the group?).

    The same answer from a set kept beside the group instead of a scan of it (the scan made the analysis
    quadratic in the group's size), and a group past GROUP_ITEMS_LIMIT stops the analysis.
    """
    items = self._group
    if len(items) > GROUP_ITEMS_LIMIT:
        raise AnalysisDiverged(f"channel removal's dependency analysis does not converge: a channel group "
                               f"grew past {GROUP_ITEMS_LIMIT} dependencies (e.g. grouped-query attention)")
    seen = self.__dict__.setdefault("_autocomp_seen", set())
    done = self.__dict__.get("_autocomp_done", 0)
    if done > len(items):  # items were replaced: start over
        seen.clear()
        done = 0
    for known, known_idxs in items[done:]:
        seen.add((known.target, known.handler, tuple(known_idxs)))
    self._autocomp_done = len(items)
    return (dep.target, dep.handler, tuple(idxs)) in seen


tp.dependency.group.Group.has_pruning_op = _has_pruning_op


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise AnalysisTimeout inside the block once it has run `seconds`.

    Torch-Pruning's analysis is Python loops that can explode (one group of a 2-layer Llama ran for
    minutes), so a profile hook checks the clock every few thousand calls; unlike SIGALRM it works in any
    thread and leaves the executor's own trial timeout alone.
    """
    end = time.monotonic() + seconds
    calls = 0
    previous = sys.getprofile()

    def watch(frame, event, arg) -> None:
        nonlocal calls
        if event == "call":
            calls += 1
            if calls % 4096 == 0 and time.monotonic() > end:
                raise AnalysisTimeout(f"channel removal's dependency analysis did not finish in {seconds:g} s")

    sys.setprofile(watch)
    try:
        yield
    finally:
        sys.setprofile(previous)


def _is_grouped(module: nn.Module) -> bool:
    """A grouped conv whose groups constrain channel counts (depthwise ones follow their input instead)."""
    return (isinstance(module, (nn.Conv2d, nn.Conv1d)) and module.groups > 1
            and not module.groups == module.out_channels)  # Torch-Pruning's own depthwise test


def _channel_groups(group) -> int:
    """The lcm of the group counts of the grouped convs whose inputs or outputs are the group's channels."""
    count = 1
    for item in group.items:
        module = item.dep.target.module
        if _is_grouped(module):
            count = math.lcm(count, module.groups)
    return count


def _pattern(score: torch.Tensor, n_remove: int, chunks: int) -> list[int]:
    """The `n_remove` lowest-scoring channels, as the same offsets in each of `chunks` equal chunks.

    Torch-Pruning's grouped-conv pruning keeps one group's offsets for every group, so each chunk must lose the
    same ones; an offset is scored by its sum over the chunks.
    """
    n = score.numel()
    if chunks <= 1:
        return sorted(int(i) for i in torch.argsort(score, stable=True)[:n_remove])
    size = n // chunks
    offsets = torch.argsort(score.view(chunks, size).sum(0), stable=True)[: n_remove // chunks]
    return sorted(g * size + int(k) for g in range(chunks) for k in offsets)


def _balanced(graph: tp.DependencyGraph, group, remove: list[int], names: dict[nn.Module, str]) -> str | None:
    """Why removing root channels `remove` would leave some grouped conv invalid, or None if it would not."""
    removed = set(remove)
    for item in group.items:
        module = item.dep.target.module
        if not _is_grouped(module):
            continue
        width = module.out_channels if graph.is_out_channel_pruning_fn(item.dep.handler) else module.in_channels
        size = width // module.groups
        gone = [idx for idx, root in zip(item.idxs, item.root_idxs) if root in removed]
        per_chunk = [sorted(i % size for i in gone if i // size == g) for g in range(module.groups)]
        if any(offsets != per_chunk[0] for offsets in per_chunk):
            return (f"grouped conv '{names.get(module, '?')}' (groups={module.groups}) takes "
                    "these channels only in part (e.g. after a concatenation): removing them would unbalance "
                    "its groups")
    return None


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
        module = named_layer(model, name)
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
            scores, targets = per_position(logits(model(x)), y)
            loss = nn.functional.cross_entropy(scores, targets, reduction="sum") / len(inputs)
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
    kept = kept_channels(n, config.ratio, config.round_to)
    chunks = _channel_groups(group)
    if chunks > 1:  # grouped convs: each of their groups keeps as many channels (the coverage check refuses n % chunks)
        if n % chunks:
            return None
        kept = max(chunks, kept // chunks * chunks)
    n_remove = n - kept
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
    remove = _pattern(score, n_remove, chunks)
    if _balanced(graph, group, remove, names) is not None:
        return None  # the coverage check refuses such layers before a search; compress leaves them whole
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
                out = logits(model(*example))  # (B, C), or (B, T, C) per position
                out_width = out.shape[-1] if out.dim() == 3 else out.shape[1]
            except Exception as err:
                raise AutocompError(f"channel pruning: the model does not run on the example input: {err}") from err
        # no time limit here: a limit would make the same policy compress or fail with the machine's load
        # (search vs export); the coverage check (`analyse`, before any search) refuses models past it
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


@dataclass
class Analysis:
    """What channel removal can do on one model: the layers it refuses (with why) and the analysis's seconds."""

    seconds: float
    refused: dict[str, str] = field(default_factory=dict)  # layer name -> reason
    error: str | None = None  # a reason that refuses every layer (the analysis ran too long, or failed)


_ANALYSES: weakref.WeakKeyDictionary[nn.Module, dict[Any, Analysis]] = weakref.WeakKeyDictionary()


def _example_key(example: Any) -> Any:
    items = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    return tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else repr(x) for x in items)


def analyse(model: nn.Module, example: Any, *, seconds: float = ANALYSIS_SECONDS) -> Analysis:
    """Which Conv2d/Linear layers of `model` channel removal refuses, found on a copy before anything runs.

    Traces the dependency graph on `example` (an input batch) and, per channel group: refuses groups whose
    grouped convs cannot stay valid (their channels do not split into whole groups, or reach them only in part),
    and dry-runs the smallest removal, refusing the group's layers if the model then fails to run or changes its
    output shape (e.g. attention head reshapes). All within `seconds`, else every layer is refused. Cached per
    model and example shape.
    """
    key = _example_key(example)
    cached = _ANALYSES.get(model, {}).get(key)
    if cached is not None:
        return cached
    start = time.monotonic()
    try:
        with _deadline(seconds):
            result = Analysis(seconds=0.0, refused=_refusals(model, example))
    except (AnalysisTimeout, AnalysisDiverged) as err:
        result = Analysis(seconds=0.0, error=str(err))
    except Exception as err:  # a model Torch-Pruning cannot trace: refused, with Torch-Pruning's words
        result = Analysis(seconds=0.0, error=f"the dependency analysis failed: {type(err).__name__}: {err}")
    result.seconds = time.monotonic() - start
    if result.error:
        result.error = result.error.splitlines()[0][:300]
    _ANALYSES.setdefault(model, {})[key] = result
    return result


def _traced(model: nn.Module, example: tuple) -> tuple[nn.Module, tp.DependencyGraph, dict[nn.Module, str]]:
    work = copy.deepcopy(model).eval()
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(work, example_inputs=example, verbose=False)
    return work, graph, {m: name for name, m in work.named_modules()}


def _refusals(model: nn.Module, example: Any) -> dict[str, str]:
    example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    work, graph, names = _traced(model, example)
    with torch.no_grad():
        shape = tuple(logits(work(*example)).shape)
    width = shape[-1] if len(shape) == 3 else (shape[1] if len(shape) > 1 else -1)  # classes: (B, C) or (B, T, C)
    cut = "its outputs cannot be followed through the model's forward (a detach or an untraced operation)"
    refused = {name: cut for name, m in work.named_modules()
               if isinstance(m, LAYER_TYPES) and m not in graph.module2node}
    trials: list[tuple[list[str], str, int, int]] = []  # (members, root name, channels, channel groups)
    for group in graph.get_all_groups(root_module_types=LAYER_TYPES):
        members, _, reaches_output, untraced = _group_parts(graph, group, names, width)
        refused.update(dict.fromkeys(untraced, cut))
        if reaches_output:
            continue  # never pruned (the documented no-op), not refused
        n, chunks = len(group.items[0].idxs), _channel_groups(group)
        member_names = [m.name for m in members]
        if chunks > 1 and n % chunks:
            reason: str | None = f"its {n} channels do not split into the {chunks} groups of its grouped convs"
        else:
            remove = _pattern(torch.arange(n, dtype=torch.float64), chunks, chunks)  # the smallest removal
            reason = _balanced(graph, group, remove, names)
        if reason:
            refused.update(dict.fromkeys(member_names, reason))
        elif len(remove) < n:
            trials.append((member_names, names[group.items[0].dep.target.module], n, chunks))
    # dry runs: remove the fewest channels group by group, then (on a fresh copy) half of each group's; a
    # forward that fails refuses that group's layers. Both, because a view with -1 can absorb one lost channel
    # and not more (LeViT's subsampling attention), and head reshapes can take whole heads and not one channel.
    for size in ("fewest", "half"):
        if size == "half":
            work, graph, names = _traced(model, example)
        for members, root_name, n, chunks in trials:
            if any(m in refused for m in members):
                continue
            count = chunks if size == "fewest" else n - kept_channels(n, 0.5, chunks)
            if count < 1 or count >= n:
                continue
            remove = _pattern(torch.arange(n, dtype=torch.float64), count, chunks)
            work, graph, names = _dry_run(model, example, work, graph, names, members, root_name, remove, shape,
                                          refused)
    return refused


def _dry_run(model: nn.Module, example: tuple, work: nn.Module, graph: tp.DependencyGraph,
             names: dict[nn.Module, str], members: list[str], root_name: str, remove: list[int],
             shape: tuple[int, ...], refused: dict[str, str]) -> tuple[nn.Module, tp.DependencyGraph,
                                                                       dict[nn.Module, str]]:
    """Remove `remove` from the group of `root_name` on `work` and run it.

    A failure (or a changed output shape) refuses `members`, and a fresh copy is returned to go on with.
    """
    root = work.get_submodule(root_name)
    try:
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs=remove)
        if not graph.check_pruning_group(group):
            return work, graph, names
        group.prune(record_history=False)
        with torch.no_grad():
            got = tuple(logits(work(*example)).shape)
        if got != shape:
            raise AutocompError(f"the model's output shape becomes {list(got)} (was {list(shape)})")
    except Exception as err:
        reason = f"removing its channels breaks the model's forward: {type(err).__name__}: {err}"
        refused.update(dict.fromkeys(members, reason.splitlines()[0][:300]))
        return _traced(model, example)  # start the rest again on an intact copy
    return work, graph, names


@supports(Channels)
def channels_supports(module: Any, name: str, model: Any, example: Any) -> str | None:
    """Channel removal's coverage: the layers `analyse` refuses (nothing is checked without an example input)."""
    if example is None:
        return None
    analysis = analyse(model, example)
    return analysis.error or analysis.refused.get(name)


__all__ = ["ANALYSIS_SECONDS", "Analysis", "AnalysisDiverged", "AnalysisTimeout", "analyse", "channels_supports",
           "kept_channels", "prune_channels"]
