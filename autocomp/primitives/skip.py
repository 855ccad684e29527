"""Residual-branch removal: a ResNet block turned into its shortcut.

A named layer's branch is taken out of the network and its addition becomes the shortcut alone.

Residual networks tolerate losing a block (Veit et al. 2016), and depth is the knob channel removal lacks:
on this machine ResNet-20's first stage runs at 32x32 and takes about half the forward pass, but cutting
its convolutions' output channels below 16 saves nothing (measured in the latency table); removing a whole
block removes its convolutions, BatchNorms, inner ReLU and addition from what the runtime executes.

On the model's torch.fx graph: from the named layer's call, follow its output through single-use ops that
are not layers (its BatchNorm, an activation) to the first addition; the addition's other operand, which
must not depend on the layer, is the shortcut. The addition's uses are given the shortcut instead, and
every op left without a use (the whole branch, from its first layer on) is removed, with the modules only
it called. The result is a GraphModule with the same qualified names for what stays, so later primitives,
packed files and the runtimes see it as any other model. Exact: its outputs equal the original's with that
branch's output replaced by zeros before the addition.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import torch
from torch import fx, nn

from autocomp.errors import AutocompError
from autocomp.primitives.configs import Skip
from autocomp.primitives.registry import CompressContext, model_handler, supports

ADDITIONS = {operator.add, operator.iadd, torch.add}
LAYER_TYPES = (nn.Conv2d, nn.Linear)


def _is_addition(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADDITIONS) or (
        node.op == "call_method" and node.target in ("add", "add_", "__add__"))


def _depends_on(node: fx.Node, ancestor: fx.Node) -> bool:
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current is ancestor:
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return False


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return seen


def _layer_calls(traced: fx.GraphModule, nodes: set[fx.Node]) -> int:
    return sum(n.op == "call_module" and isinstance(traced.get_submodule(n.target), LAYER_TYPES) for n in nodes)


def _remove_branch(traced: fx.GraphModule, layer: str) -> None:
    graph = traced.graph
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        raise AutocompError(f"skip: layer '{layer}' is called {len(calls)} times in the model's graph; "
                            "a branch can be removed only where the layer runs once")
    start = current = calls[0]
    while True:
        users = list(current.users)
        if len(users) != 1:
            raise AutocompError(f"skip: the output of layer '{layer}' is used {len(users)} times before any "
                                "residual addition; only a branch that ends in one addition can be removed")
        (user,) = users
        if _is_addition(user):
            break
        if user.all_input_nodes != [current]:  # e.g. a concatenation: not a residual branch
            raise AutocompError(f"skip: layer '{layer}' feeds '{user.name}', which combines it with other "
                                "values, not a residual addition")
        if user.op == "call_module" and isinstance(traced.get_submodule(user.target), LAYER_TYPES):
            raise AutocompError(f"skip: layer '{layer}' feeds layer '{user.target}' before any residual "
                                "addition; name the branch's last layer")
        current = user
    others = [n for n in user.all_input_nodes if n is not current]
    if len(others) != 1 or _depends_on(others[0], start) or len(user.args) != 2 or user.kwargs:
        raise AutocompError(f"skip: the addition after layer '{layer}' does not add one shortcut to its "
                            "branch")
    # The branch is the operand with more layers of its own than the other (ResNet's 1x1 projection shortcut
    # has one, the branch two): naming the shortcut's layer would remove the branch's partner, and two such
    # layers of one addition could not both be removed.
    mine, theirs = _ancestors(current), _ancestors(others[0])
    if _layer_calls(traced, mine - theirs) <= _layer_calls(traced, theirs - mine):
        raise AutocompError(f"skip: layer '{layer}' is on the shortcut of its residual addition (the other operand "
                            "holds as many layers or more); name a layer of the branch")
    user.replace_all_uses_with(others[0])
    graph.erase_node(user)


@model_handler(Skip)
def skip_branches(model: nn.Module, configs: Mapping[str, Skip], context: CompressContext) -> nn.Module:
    """Remove the residual branch of each named layer (see the module docstring); returns a GraphModule."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:
        raise AutocompError(f"skip needs a model torch.fx can trace: {type(err).__name__}: {err}") from None
    for layer in sorted(configs):
        _remove_branch(traced, layer)
    traced.graph.eliminate_dead_code()
    traced.delete_all_unused_submodules()
    traced.recompile()
    traced.training = model.training  # the modules it kept keep their own flags
    return traced


@supports(Skip)
def skip_supports(module: nn.Module, name: str, model: nn.Module, example: object = None) -> str | None:
    """Why layer `name` has no residual branch skip can remove, or None if it has one.

    Refused where torch.fx cannot trace the model or the layer's output reaches no addition with a shortcut;
    each layer is checked on a fresh trace, before anything runs.
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:
        return f"torch.fx cannot trace the model: {type(err).__name__}: {err}".splitlines()[0]
    try:
        _remove_branch(traced, name)
    except AutocompError as err:
        return str(err).splitlines()[0]
    return None


__all__ = ["skip_branches", "skip_supports"]
