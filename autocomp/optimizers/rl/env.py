"""CompressionEnv: a Gymnasium environment with one step per compressible layer (AMC / HAQ style).

Observation (all in [0, 1]): the layer's index, type (conv or not), in/out channels, kernel, stride,
params and FLOPs (each over the model's largest), the resource already removed by earlier steps, the
resource the later layers still hold, the episode's budget (1 without one), and the previous action.
Action: one number in [0, 1] per knob kind of the space (0 = least, 1 = most compressive setting),
mapped to this layer's own knobs.

Resource-constrained mode clips each action as AMC does: the layer must compress at least enough that,
with every later layer at its most compressive setting, the model meets `budget` x the uncompressed
resource (size or FLOPs, by the analytic cost model below). `budget` may be a range [low, high]: each
episode then draws its own budget (log-uniform, or as `reset(options={"budget": b})` says) and sees it
in the observation, so one policy learns the whole trade-off (a front, not one point). The episode's
reward comes from `reward_fn` (params -> float) when given; the RL optimizer instead reads
`info["params"]` at the end of an episode and rewards it later, when the evaluator's result is told.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from autocomp.optimizers.base import LayerProfile, Params
from autocomp.space import BoundSpace
from autocomp.space.params import Choice, Param

RESOURCES = ("size", "flops")
FEATURES = 11  # observation entries before the previous action


def knob_value(param: Param, a: float) -> Any:
    """The value of `param` an action `a` in [0, 1] selects (0 least compressive, 1 most)."""
    a = min(max(float(a), 0.0), 1.0)
    if isinstance(param.domain, Choice):
        values = param.ordered()
        return values[min(int(round(a * (len(values) - 1))), len(values) - 1)]
    if param.compresses < 0:
        a = 1.0 - a
    return param.domain.from_unit(a)


def layer_cost(profile: LayerProfile, settings: dict[str, Any], resource: str, in_kept: float) -> float:
    """Analytic estimate of a layer's size (bits) or FLOPs under `settings` ("<primitive>.<knob>" -> value).

    Size: weights kept (channels, low rank, unstructured pruning) x bits; FLOPs: dense multiply-adds kept
    (channels and low rank; unstructured zeros save no dense FLOPs). `in_kept` is the fraction of input
    channels the previous layer kept.
    """
    out_kept = 1.0 - float(settings.get("channels.ratio", 0.0))
    kept = out_kept * in_kept
    rank = float(settings.get("lowrank.rank_ratio", 1.0))
    if rank < 1.0:
        m, n = profile.out_channels, profile.in_channels * profile.kernel * profile.kernel
        factored = rank * min(m, n) * (m + n) / max(m * n, 1)
        kept *= min(1.0, factored)  # the primitive skips a factorisation that would not shrink the layer
    if resource == "flops":
        return profile.flops * kept
    density = 1.0 - float(settings.get("prune.ratio", 0.0))
    bits = min(float(settings.get("quantize.bits", 32)), float(settings.get("share.bits", 32)))
    return profile.params * kept * density * bits


class CompressionEnv(gym.Env):
    """One episode compresses the model: a step sets one layer's knobs (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, space: BoundSpace, layers: Sequence[LayerProfile] = (), *,
                 reward_fn: Callable[[Params], float] | None = None,
                 budget: float | Sequence[float] | None = None, resource: str = "size") -> None:
        if resource not in RESOURCES:
            raise ValueError(f"resource must be one of {', '.join(RESOURCES)}, not '{resource}'")
        bounds = None if budget is None else [budget] * 2 if isinstance(budget, (int, float)) else list(budget)
        if bounds is not None and (len(bounds) != 2 or not 0.0 < bounds[0] <= bounds[1] <= 1.0):
            raise ValueError(f"budget is a fraction of the uncompressed {resource} in (0, 1], or a range "
                             f"[low, high] of such fractions, not {budget}")
        self.space, self.reward_fn, self.resource = space, reward_fn, resource
        self.bounds = (float(bounds[0]), float(bounds[1])) if bounds else None
        self.budget: float | None = self.bounds[1] if self.bounds else None
        known = {p.name: p for p in layers}
        # one step per layer that decides a parameter (a group-shared parameter is decided at its first layer)
        self.units: list[tuple[LayerProfile, list[Param]]] = []
        for name in space.layers:
            own = [p for p in space.params if p.layers[0] == name]
            if own:
                profile = known.get(name) or LayerProfile(name=name, kind="Linear", in_channels=1, out_channels=1,
                                                          params=1, flops=1)
                self.units.append((profile, own))
        order = {p.name: i for i, p in enumerate(layers)}
        self.units.sort(key=lambda u: order.get(u[0].name, len(order)))
        self.knobs = sorted({p.knob for p in space.params})
        self.action_space = gym.spaces.Box(0.0, 1.0, shape=(len(self.knobs),), dtype=np.float32)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(FEATURES + len(self.knobs),), dtype=np.float32)
        profiles = [u[0] for u in self.units]
        self.scale = {f: max([getattr(p, f) for p in profiles] + [1]) for f in
                      ("in_channels", "out_channels", "kernel", "stride", "params", "flops")}
        self.full = [layer_cost(p, {}, resource, 1.0) for p in profiles]
        self.total = max(sum(self.full), 1e-12)
        self._reset_state()

    def _reset_state(self) -> None:
        self.t = 0
        self.params: Params = {}
        self.costs: list[float] = []
        self.in_kept = 1.0
        self.prev = np.zeros(len(self.knobs), dtype=np.float32)

    def _settings(self, unit: int, action: np.ndarray) -> dict[str, Any]:
        return {p.knob: knob_value(p, action[self.knobs.index(p.knob)]) for p in self.units[unit][1]}

    def _cost(self, unit: int, action: np.ndarray, in_kept: float) -> tuple[float, float]:
        settings = self._settings(unit, action)
        return (layer_cost(self.units[unit][0], settings, self.resource, in_kept),
                1.0 - float(settings.get("channels.ratio", 0.0)))

    def observation(self) -> np.ndarray:
        """The current layer's features, progress, budget and previous action, each in [0, 1]."""
        p = self.units[min(self.t, len(self.units) - 1)][0]
        s = self.scale
        removed = sum(self.full[: self.t]) - sum(self.costs)
        later = sum(self.full[self.t + 1:])
        obs = [self.t / max(len(self.units) - 1, 1), float(p.kind == "Conv2d"), p.in_channels / s["in_channels"],
               p.out_channels / s["out_channels"], p.kernel / s["kernel"], p.stride / s["stride"],
               p.params / s["params"], p.flops / s["flops"], removed / self.total, later / self.total,
               1.0 if self.budget is None else self.budget]
        return np.clip(np.array(obs + list(self.prev), dtype=np.float32), 0.0, 1.0)

    def clip(self, action: np.ndarray) -> np.ndarray:
        """AMC's budget rule: compress this layer at least as much as the budget needs.

        Every compressive knob of the action moves towards 1 together.
        """
        if self.budget is None:
            return action
        most = np.ones(len(self.knobs), dtype=np.float32)
        rest, kept = 0.0, self._cost(self.t, most, self.in_kept)[1]
        for u in range(self.t + 1, len(self.units)):  # later layers at their most compressive
            cost, kept = self._cost(u, most, kept)
            rest += cost
        allowed = self.budget * self.total - sum(self.costs) - rest

        def moved(s: float) -> np.ndarray:
            return action + s * (1.0 - action)

        if self._cost(self.t, action, self.in_kept)[0] <= allowed:
            return action
        low, high = 0.0, 1.0
        for _ in range(30):
            mid = (low + high) / 2
            if self._cost(self.t, moved(mid), self.in_kept)[0] <= allowed:
                high = mid
            else:
                low = mid
        return moved(high).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode at the first layer; with a budget range, draw its budget (or take `options["budget"]`)."""
        super().reset(seed=seed)
        self._reset_state()
        if self.bounds:
            low, high = self.bounds
            if options and "budget" in options:
                self.budget = min(max(float(options["budget"]), low), high)
            else:
                self.budget = float(math.exp(self.np_random.uniform(math.log(low), math.log(high))))
        return self.observation(), {}

    def step(self, action: np.ndarray):
        """Set this layer's knobs from the (budget-clipped) action; the last step's info holds the episode's params."""
        action = self.clip(np.clip(np.asarray(action, dtype=np.float32), 0.0, 1.0))
        cost, out_kept = self._cost(self.t, action, self.in_kept)
        self.costs.append(cost)
        for p in self.units[self.t][1]:
            self.params[p.name] = knob_value(p, action[self.knobs.index(p.knob)])
        self.in_kept = out_kept
        self.prev = action.astype(np.float32)
        self.t += 1
        done = self.t >= len(self.units)
        info: dict[str, Any] = {"action": action}
        reward = 0.0
        if done:
            info["params"] = dict(self.params)
            info["estimated"] = sum(self.costs) / self.total  # the cost model's fraction of the original
            if self.reward_fn is not None:
                reward = float(self.reward_fn(dict(self.params)))
        obs = self.observation() if not done else np.zeros(self.observation_space.shape, dtype=np.float32)
        if not math.isfinite(reward):
            reward = -1.0
        return obs, reward, done, False, info
