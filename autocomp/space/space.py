"""SearchSpace (groups of layers, each with primitives and knob domains) and its binding to a model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from autocomp.errors import SpaceError
from autocomp.layers import ATTENTION, attention_kind, layer_kind, module_kind
from autocomp.primitives.configs import CONFIGS
from autocomp.primitives.coverage import refusal
from autocomp.schema import At, LinedMap, plain, read_yaml
from autocomp.space.groups import COMPRESSIBLE, Group, KnobSpec, Where, domain_problem
from autocomp.space.params import Choice, Domain, Param
from autocomp.space.schema import dump_groups, read_groups


def _ends(domain: Domain) -> tuple[Any, ...]:
    """The values a domain can take at its ends (every value of a Choice)."""
    return tuple(domain.values) if isinstance(domain, Choice) else (domain.low, domain.high)


@dataclass(frozen=True, kw_only=True)
class Coverage:
    """Whether one primitive can compress one selected layer: `reason` is None, or why it cannot."""

    layer: str
    primitive: str
    group: str
    reason: str | None
    where: Where = field(default_factory=Where, compare=False)  # the primitive's line in the space file


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """What may be searched, before it is bound to a concrete model."""

    groups: tuple[Group, ...]

    @classmethod
    def from_yaml(cls, text: str, *, file: str = "<string>") -> SearchSpace:
        """The space a YAML text describes: a list of groups, or a mapping with a `groups:` list.

        The rest of a run file, if present, is ignored here. For example::

            - name: fc
              layers: ["type:Linear"]
              primitives: {prune: {ratio: {float: [0.0, 0.9]}}, quantize: {bits: {choice: [4, 8]}}}

        Raises:
            SpaceError: naming the line, key and value of what is wrong.
        """
        doc = read_yaml(text, file)
        at = At(file, 1, "")
        if isinstance(doc, LinedMap) and "groups" in doc:
            return cls(groups=read_groups(doc["groups"], at.value_of(doc, "groups")))
        return cls(groups=read_groups(doc, At(file, 1, "groups")))

    @classmethod
    def from_dict(cls, groups: Any) -> SearchSpace:
        """The space of plain Python data shaped like the YAML: a list of group dicts, or {"groups": [...]}."""
        return cls.from_yaml(yaml.safe_dump(plain(groups), sort_keys=False), file="<dict>")

    def to_dict(self) -> list[dict[str, Any]]:
        """The groups as plain data (`from_dict` reads it back)."""
        return dump_groups(self.groups)

    def _selected(self, model: Any) -> tuple[dict[str, Any], list[list[str]]]:
        """The model's compressible modules by name, and each group's selected layers (selector errors raised)."""
        everything = [(n, m) for n, m in model.named_modules()
                      if layer_kind(m) in COMPRESSIBLE or attention_kind(m) is not None]
        layers_only = [(n, m) for n, m in everything if layer_kind(m) in COMPRESSIBLE]
        selected: list[list[str]] = []
        for group in self.groups:
            # attention modules as a whole are candidates only where a primitive of the group applies to them
            whole = any(ATTENTION in CONFIGS[k.primitive].APPLIES_TO for k in group.knobs if k.primitive in CONFIGS)
            modules = everything if whole else layers_only
            layers: list[str] = []
            for selector in group.selectors:
                hits = [n for n, m in modules if selector.matches(n, m)]
                if not hits:
                    names = ", ".join(n for n, _ in modules) or "none"
                    raise SpaceError(
                        f"selector matches no compressible layer (the model's are: {names})",
                        file=selector.where.file, line=selector.where.line,
                        key=f"groups.{group.name}.layers", value=selector.text,
                    )
                layers += [n for n in hits if n not in layers]
            selected.append(layers)
        return dict(everything), selected

    def coverage(self, model: Any, *, example: Any = None) -> list[Coverage]:
        """For each selected layer and primitive: whether the primitive can compress it, before anything runs.

        Each primitive's `supports` hook decides (see `autocomp.primitives.coverage`); `example` (an input
        batch) lets hooks that must run the model (channel removal's dependency analysis) do so. Selector
        errors raise a SpaceError; refusals are rows with a reason (`bind` raises on the first).
        """
        modules, selected = self._selected(model)
        return self._coverage(model, modules, selected, example)

    def _coverage(self, model: Any, modules: dict[str, Any], selected: list[list[str]], example: Any
                  ) -> list[Coverage]:
        rows: list[Coverage] = []
        for group, layers in zip(self.groups, selected):
            firsts: dict[str, KnobSpec] = {}
            for knob in group.knobs:  # one row per primitive, at its first knob's line
                firsts.setdefault(knob.primitive, knob)
            for spec in firsts.values():
                config = CONFIGS.get(spec.primitive)
                for layer in layers:
                    module = modules[layer]
                    reason = None if config is None else refusal(config, module, layer, model, example,
                                                                  kind=module_kind(module))
                    rows.append(Coverage(layer=layer, primitive=spec.primitive, group=group.name, reason=reason,
                                         where=spec.where))
        return rows

    def bind(self, model: Any, *, example: Any = None, coverage: list[Coverage] | None = None) -> BoundSpace:
        """Resolve selectors against `model` (an nn.Module) into named, typed per-layer params.

        `example` (an input batch) lets primitives that must run the model check their layers (see `coverage`);
        `coverage`, rows already computed by `coverage(model, example=...)`, spares running those checks again.

        Raises:
            SpaceError: a selector that matches nothing, a layer two groups configure for one primitive, a
                knob outside its primitive's range, or a layer a primitive refuses (named, with the reason).
        """
        types, selected = self._selected(model)
        if coverage is None:
            coverage = self._coverage(model, types, selected, example)
        refused = {(row.layer, row.primitive): row.reason for row in coverage if row.reason is not None}
        owner: dict[tuple[str, str], str] = {}  # (layer, primitive) -> the one group that configures it
        params: list[Param] = []
        for group, layers in zip(self.groups, selected):
            primitives = dict.fromkeys(spec.primitive for spec in group.knobs)
            for layer in layers:  # two groups may select a layer for different primitives, never the same one
                for primitive in primitives:
                    first = owner.setdefault((layer, primitive), group.name)
                    if first != group.name:
                        raise SpaceError(
                            f"layer '{layer}' is selected by two groups ('{first}' and '{group.name}') for "
                            f"primitive '{primitive}'", file=group.where.file, line=group.where.line,
                            key=f"groups.{group.name}.layers", value=layer,
                        )
            for spec in group.knobs:
                key = f"groups.{group.name}.primitives.{spec.primitive}.{spec.knob}"
                if spec.primitive not in CONFIGS or spec.knob not in CONFIGS[spec.primitive].KNOBS:
                    raise SpaceError("unknown primitive or knob", file=spec.where.file, line=spec.where.line,
                                     key=key, value=f"{spec.primitive}.{spec.knob}")
                problem = domain_problem(spec.domain, CONFIGS[spec.primitive].KNOBS[spec.knob])
                if problem:  # the YAML loader checks this too; spaces built in Python meet it here
                    raise SpaceError(problem[0], file=spec.where.file, line=spec.where.line, key=key,
                                     value=problem[1])
                allowed = CONFIGS[spec.primitive].APPLIES_TO
                limits = CONFIGS[spec.primitive].KIND_LIMITS.get(spec.knob, {})
                default = getattr(CONFIGS[spec.primitive](), spec.knob) if limits else None
                for layer in layers:
                    kind = module_kind(types[layer])
                    if kind not in allowed:
                        raise SpaceError(
                            f"primitive '{spec.primitive}' applies to {'/'.join(allowed)} layers, "
                            f"but '{layer}' is a {kind}",
                            file=spec.where.file, line=spec.where.line,
                            key=f"groups.{group.name}.primitives.{spec.primitive}", value=layer,
                        )
                    reason = refused.get((layer, spec.primitive))
                    if reason is not None:  # the primitive's own check (its `supports` hook) refused the layer
                        raise SpaceError(
                            f"primitive '{spec.primitive}' cannot compress layer '{layer}' ({kind}): {reason}",
                            file=spec.where.file, line=spec.where.line,
                            key=f"groups.{group.name}.primitives.{spec.primitive}", value=layer,
                        )
                    why = limits.get(type(types[layer]).__name__) or limits.get(kind or "")
                    if why and any(value != default for value in _ends(spec.domain)):
                        raise SpaceError(
                            f"'{layer}' ({type(types[layer]).__name__}) takes {spec.primitive}.{spec.knob} "
                            f"{default} only: {why} (select it in a group without this knob)",
                            file=spec.where.file, line=spec.where.line, key=key, value=layer,
                        )
                knob = f"{spec.primitive}.{spec.knob}"
                compresses = CONFIGS[spec.primitive].KNOBS[spec.knob].compresses
                if group.shared:
                    params.append(Param(name=f"{group.name}.{knob}", domain=spec.domain,
                                        primitive=spec.primitive, knob=knob, layers=tuple(layers),
                                        compresses=compresses))
                else:
                    params += [Param(name=f"{layer}.{knob}", domain=spec.domain, primitive=spec.primitive,
                                     knob=knob, layers=(layer,), compresses=compresses) for layer in layers]
        param_names = [p.name for p in params]
        duplicates = sorted({n for n in param_names if param_names.count(n) > 1})
        if duplicates:
            raise SpaceError(f"parameter names collide: {duplicates} (give groups distinct names)")
        return BoundSpace(params=tuple(params), layers=tuple(dict.fromkeys(layer for layer, _ in owner)))


@dataclass(frozen=True)
class BoundSpace:
    """A space bound to one model: the flat list of parameters an optimizer searches."""

    params: tuple[Param, ...]
    layers: tuple[str, ...]

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """One candidate drawn uniformly from every parameter's domain."""
        return {p.name: p.sample(rng) for p in self.params}

    def contains(self, candidate: Mapping[str, Any]) -> bool:
        """Whether `candidate` sets exactly this space's parameters, each inside its domain."""
        return set(candidate) == {p.name for p in self.params} and all(
            p.domain.contains(candidate[p.name]) for p in self.params
        )

    def knobs(self) -> dict[str, list[Param]]:
        """Params grouped by "<primitive>.<knob>": the same knob on different layers."""
        out: dict[str, list[Param]] = {}
        for p in self.params:
            out.setdefault(p.knob, []).append(p)
        return out
