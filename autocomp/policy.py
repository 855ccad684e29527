"""A frozen compression policy: for each layer, the primitive configs to apply to it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autocomp.errors import AutocompError
from autocomp.primitives.configs import CONFIGS, STAGES, PrimitiveConfig

if TYPE_CHECKING:
    from autocomp.space import BoundSpace


@dataclass(frozen=True)
class Policy:
    """Layer name -> configs in stage order. Layers a policy does not name are left as they are."""

    layers: tuple[tuple[str, tuple[PrimitiveConfig, ...]], ...]

    @staticmethod
    def coerce(policy: PolicyLike) -> Policy:
        """`policy` itself, or the Policy its dict form (`Trial.policy`, `Policy.to_dict()`) describes."""
        if isinstance(policy, Policy):
            return policy
        if isinstance(policy, Mapping):
            return Policy.from_dict(policy)
        raise AutocompError(f"expected a Policy or its dict form, got {type(policy).__name__}")

    @staticmethod
    def of(mapping: Mapping[str, tuple[PrimitiveConfig, ...] | list[PrimitiveConfig]]) -> Policy:
        """The policy giving each layer its configs (in any order; one of each primitive at most)."""
        order = {cls: i for i, cls in enumerate(STAGES)}
        items = []
        for layer in sorted(mapping):
            configs = tuple(sorted(mapping[layer], key=lambda c: order[type(c)]))
            if len({type(c) for c in configs}) != len(configs):
                raise AutocompError(f"policy gives layer '{layer}' the same primitive twice")
            items.append((layer, configs))
        return Policy(tuple(items))

    @staticmethod
    def from_params(space: BoundSpace, params: Mapping[str, Any]) -> Policy:
        """Turn an optimizer's param dict into a policy, using the space to know which knob is which."""
        knobs: dict[str, dict[str, dict[str, Any]]] = {}
        for param in space.params:
            if param.name not in params:
                raise AutocompError(f"candidate lacks parameter '{param.name}'")
            primitive, knob = param.knob.split(".", 1)
            for layer in param.layers:
                knobs.setdefault(layer, {}).setdefault(primitive, {})[knob] = params[param.name]
        return Policy.from_dict(knobs)

    def to_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{layer: {primitive: {knob: value}}}: the JSON form trials journal and `from_dict` reads."""
        return {layer: {c.NAME: c.knobs() for c in configs} for layer, configs in self.layers}

    @staticmethod
    def from_dict(data: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Policy:
        """The policy `to_dict` wrote."""
        mapping = {}
        for layer, primitives in data.items():
            configs = []
            for name, knobs in primitives.items():
                if name not in CONFIGS:
                    raise AutocompError(f"policy names unknown primitive '{name}' for layer '{layer}'")
                configs.append(CONFIGS[name](**knobs))
            mapping[layer] = configs
        return Policy.of(mapping)

    def for_layer(self, layer: str) -> tuple[PrimitiveConfig, ...]:
        """The configs this policy gives `layer` (none when it does not name it)."""
        for name, configs in self.layers:
            if name == layer:
                return configs
        return ()

    def fingerprint(self) -> str:
        """A stable hash of the policy, for caching and duplicate detection."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# what `compress` and `export` accept as a policy: a Policy, or its dict form (a trial's `.policy`)
PolicyLike = Policy | Mapping[str, Mapping[str, Mapping[str, Any]]]
