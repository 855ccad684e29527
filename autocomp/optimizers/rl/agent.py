"""RL search: a TD3 or DDPG agent (stable-baselines3) rolls out CompressionEnv episodes (AMC / HAQ).

The runner evaluates episodes in batches, so the agent is driven off-policy by hand instead of by
`model.learn()`: ask(n) rolls out n episodes with the current actor plus exploration noise (uniform random
actions for the first `warmup` episodes; then Gaussian noise whose sigma decays per episode); tell()
turns each evaluated episode's objectives into a reward, stores its transitions in SB3's replay buffer
(the reward on the last step, discount 1, as AMC) and runs `model.train()` gradient steps.

Rewards: mode `resource` (the default; AMC's resource-constrained) = -error, error = 1 - first objective,
with the env clipping actions to `budget`: a fraction of the uncompressed resource, or a range
[low, high] from which each episode draws its own, log-uniform (default 1%-25%, so the agent learns the
whole front, not one point). Mode `accuracy` (AMC's accuracy-guaranteed) = -error x log(cost), cost =
the second objective: one trade-off point. A moving average baseline is subtracted (AMC). Failed or
infeasible episodes get the worst reward seen.

The agent's own networks use torch (SB3); the user's model never reaches this module. SB3 draws from the
global numpy and torch generators, so every call runs inside this optimizer's saved generator states
(and on one thread).
"""

from __future__ import annotations

import base64
import io
import math
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.logger import configure

from autocomp.optimizers.base import Optimizer, Params, Told
from autocomp.optimizers.guided import GUIDE_SETTINGS, guide_wants_proxies, make_guide
from autocomp.optimizers.rl.env import CompressionEnv
from autocomp.space.params import Choice, Param

AGENTS = {"td3": TD3, "ddpg": DDPG}
MODES = ("accuracy", "resource")
# without a budget, resource mode draws each episode's from 1% to 25% of the uncompressed resource
DEFAULT_BUDGETS = (0.01, 0.25)


class RLSearch(Optimizer):
    """AMC/HAQ-style search: a TD3 or DDPG agent picks each layer's knobs in turn, rewarded per episode."""

    name = "rl"
    SETTINGS = {"agent": str, "mode": str, "resource": str, "budget": (float, list), "warmup": int, "noise": float,
                "noise_decay": float, "hidden": int, "lr": float, "batch_size": int, "updates": int,
                **GUIDE_SETTINGS}

    def __init__(self, space, *, directions, seed=0, context=None, agent: str = "td3", mode: str = "resource",
                 resource: str = "size", budget: float | list[float] | None = None, warmup: int = 20,
                 noise: float = 0.5,
                 noise_decay: float = 0.97, hidden: int = 64, lr: float = 1e-3, batch_size: int = 64,
                 updates: int = 0, **guide: Any) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        # guided: the allocator's measurements and solutions are replayed as the first episodes, in place of
        # the random warmup, and later episodes are screened by the surrogate (autocomp.optimizers.guided)
        self.guide = make_guide(self, dict(guide))
        if agent not in AGENTS:
            raise ValueError(f"agent must be one of {', '.join(AGENTS)}, not '{agent}'")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not '{mode}'")
        if mode == "resource" and budget is None:
            budget = list(DEFAULT_BUDGETS)
        if len(self.directions) > 1 and (self.directions[0], self.directions[1]) != ("maximize", "minimize"):
            raise ValueError("rl reads the first objective as accuracy (maximize) and the second as a cost "
                             "(minimize)")
        self.mode, self.warmup, self.noise, self.noise_decay = mode, warmup, noise, noise_decay
        self.env = CompressionEnv(space, self.context.layers, budget=budget if mode == "resource" else None,
                                  resource=resource)
        self.updates = updates or len(self.env.units)  # gradient steps per told episode
        self.batch_size = batch_size
        self.np_state = np.random.RandomState(seed).get_state()
        self.torch_state = torch.Generator().manual_seed(seed).get_state()
        with self._generators():
            self.model = AGENTS[agent]("MlpPolicy", self.env, learning_rate=lr, buffer_size=100_000,
                                       learning_starts=0, batch_size=batch_size, gamma=1.0, seed=seed,
                                       policy_kwargs={"net_arch": [hidden, hidden]}, device="cpu", verbose=0)
        self.model.set_logger(configure(None, [""]))
        self.episodes = 0  # rolled out
        self.baseline: float | None = None
        self.worst: float | None = None
        self.pending: list[dict[str, Any]] = []  # asked episodes: params + transitions

    @contextmanager
    def _generators(self) -> Iterator[None]:
        outside_np, outside_torch, outside_py = np.random.get_state(), torch.get_rng_state(), random.getstate()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # batches of 64 through a 64-wide MLP: threads only add waiting
        np.random.set_state(self.np_state)
        torch.set_rng_state(self.torch_state)
        try:
            yield
        finally:
            self.np_state, self.torch_state = np.random.get_state(), torch.get_rng_state()
            np.random.set_state(outside_np)
            torch.set_rng_state(outside_torch)
            random.setstate(outside_py)  # SB3 seeds Python's generator too
            torch.set_num_threads(threads)

    def sigma(self) -> float:
        """The exploration noise now: `noise` decayed by `noise_decay` per episode after the warmup."""
        return self.noise * self.noise_decay ** max(0, self.episodes - self.warmup)

    @classmethod
    def wants_proxies(cls, settings: Mapping[str, Any]) -> bool:
        """True when guided with `sensitivity: fisher` (the runner then computes the gradient proxies)."""
        return guide_wants_proxies(settings)

    def ask(self, n: int) -> list[Params]:
        """Up to `n` episodes (each a policy): guided, the allocator's replayed first, then screened rollouts."""
        if self.guide is None:
            return self._rollouts(n)
        return self.guide.ask(n, self._rollouts, self._reject, on_start=self._replay_all)

    def _replay_all(self, picks: list[Params]) -> None:
        with self._generators():
            for params in picks:
                self._replay(params)

    def _reject(self, params: Params, predicted: list[float]) -> None:
        """A screened-out episode: trained on with its predicted objectives (never evaluated)."""
        self._learn([Told(params, tuple(predicted))])

    def _replay(self, params: Params) -> None:
        """Store the episode that sets exactly `params` (the actions that select its values), without noise.

        The budget the agent observes is the episode's own estimated cost, so the env's budget rule keeps
        every replayed action as it is.
        """
        self.env.reset(options={"budget": 1.0})  # no draw: the budget is set from the episode below
        if self.env.bounds:
            cost = sum(self.env._cost(u, self._action_of(params, u), 1.0)[0] for u in range(len(self.env.units)))
            self.env.budget = min(1.0, cost / self.env.total * (1 + 1e-6) + 1e-12)
        obs = self.env.observation()
        steps, done = [], False
        for unit in range(len(self.env.units)):
            action = self._action_of(params, unit)
            nxt, _, done, _, info = self.env.step(action)
            steps.append({"obs": obs.tolist(), "action": info["action"].tolist(), "next": nxt.tolist()})
            obs = nxt
        self.episodes += 1
        self.pending.append({"params": dict(params), "steps": steps})

    def _action_of(self, params: Params, unit: int) -> np.ndarray:
        """The action of step `unit` that selects `params`' values of that layer's knobs."""
        action = np.zeros(len(self.env.knobs), dtype=np.float32)
        for p in self.env.units[unit][1]:
            action[self.env.knobs.index(p.knob)] = _action_for(p, params[p.name])
        return action

    def _rollouts(self, n: int) -> list[Params]:
        """Roll out `n` episodes with the actor plus exploration noise (random during an unguided warmup)."""
        out = []
        with self._generators():
            for _ in range(n):
                budget = None
                if self.env.bounds:  # drawn here, from this optimizer's saved generator
                    low, high = self.env.bounds
                    budget = float(math.exp(np.random.uniform(math.log(low), math.log(high))))
                obs, _ = self.env.reset(options={"budget": budget} if budget is not None else None)
                steps, done, info = [], False, {}
                while not done:
                    if self.episodes < self.warmup and self.guide is None:
                        action = np.random.uniform(0.0, 1.0, len(self.env.knobs)).astype(np.float32)
                    else:
                        action, _ = self.model.predict(obs, deterministic=True)
                        action = np.clip(action + np.random.normal(0.0, self.sigma(), action.shape), 0.0, 1.0)
                    nxt, _, done, _, info = self.env.step(action.astype(np.float32))
                    steps.append({"obs": obs.tolist(), "action": info["action"].tolist(), "next": nxt.tolist()})
                    obs = nxt
                self.episodes += 1
                self.pending.append({"params": info["params"], "steps": steps})
                out.append(info["params"])
        return out

    def _reward(self, told: Told) -> float | None:
        if told.values is None or told.violation > 0:
            return None
        if len(told.values) == 1:
            return float(told.values[0]) if self.directions[0] == "maximize" else -float(told.values[0])
        error = 1.0 - float(told.values[0])
        if self.mode == "resource":
            return -error
        return -error * math.log(max(float(told.values[1]), 1.0 + 1e-9))

    def tell(self, results: list[Told]) -> None:
        """Store each episode's transitions with its reward (less the moving baseline), then train the agent.

        Guided, a result no rollout asked for (a neighbour of the front the guide picked) is replayed as an
        episode first, so the agent learns from every real evaluation; like the guided start's, a replayed
        episode counts towards the episodes that decay the exploration noise.
        """
        if self.guide is not None:
            self.guide.tell(results)
            adopted = [t.params for t in results if self.space.contains(t.params)
                       and not any(e["params"] == t.params for e in self.pending)]
            if adopted:
                self._replay_all(adopted)
        self._learn(results)

    def _learn(self, results: list[Told]) -> None:
        trained = 0
        with self._generators():
            for told in results:
                i = next((k for k, e in enumerate(self.pending) if e["params"] == told.params), None)
                if i is None:
                    continue
                episode = self.pending.pop(i)
                reward = self._reward(told)
                if reward is None:
                    reward = self.worst if self.worst is not None else -1.0
                self.worst = reward if self.worst is None else min(self.worst, reward)
                self.baseline = reward if self.baseline is None else 0.95 * self.baseline + 0.05 * reward
                advantage = reward - self.baseline
                for k, step in enumerate(episode["steps"]):
                    last = k == len(episode["steps"]) - 1
                    action = self.model.policy.scale_action(np.array(step["action"], dtype=np.float32))
                    self.model.replay_buffer.add(
                        np.array([step["obs"]], dtype=np.float32), np.array([step["next"]], dtype=np.float32),
                        np.array([action]), np.array([advantage if last else 0.0]), np.array([last]), [{}])
                trained += self.updates
            if trained and self.model.replay_buffer.size() >= self.batch_size:
                self.model.train(gradient_steps=trained, batch_size=self.batch_size)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, replay buffer and generators (base64 of a torch.save), plus episode bookkeeping."""
        buffer = self.model.replay_buffer
        tensors = {
            "policy": self.model.policy.state_dict(),
            "actor_optimizer": self.model.actor.optimizer.state_dict(),
            "critic_optimizer": self.model.critic.optimizer.state_dict(),
            "buffer": {k: torch.from_numpy(np.ascontiguousarray(getattr(buffer, k)[: buffer.size()]))
                       for k in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")},
            "torch_rng": self.torch_state,
        }
        blob = io.BytesIO()
        torch.save(tensors, blob)
        kind, keys, pos, has_gauss, cached = self.np_state
        return {
            "nets": base64.b64encode(blob.getvalue()).decode(), "episodes": self.episodes,
            "baseline": self.baseline, "worst": self.worst, "pending": self.pending,
            "n_updates": self.model._n_updates, "buffer_pos": buffer.pos, "buffer_full": buffer.full,
            "np_rng": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
            "guide": self.guide.state_dict() if self.guide is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved (tensors loaded with weights_only)."""
        # weights_only: tensors and plain containers only, nothing executable is unpickled
        tensors = torch.load(io.BytesIO(base64.b64decode(state["nets"])), weights_only=True)
        self.model.policy.load_state_dict(tensors["policy"])
        self.model.actor.optimizer.load_state_dict(tensors["actor_optimizer"])
        self.model.critic.optimizer.load_state_dict(tensors["critic_optimizer"])
        buffer = self.model.replay_buffer
        for k, v in tensors["buffer"].items():
            getattr(buffer, k)[: len(v)] = v.numpy()
        buffer.pos, buffer.full = int(state["buffer_pos"]), bool(state["buffer_full"])
        self.torch_state = tensors["torch_rng"]
        kind, keys, pos, has_gauss, cached = state["np_rng"]
        self.np_state = (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)
        self.model._n_updates = int(state["n_updates"])
        self.episodes, self.baseline, self.worst = state["episodes"], state["baseline"], state["worst"]
        self.pending = state["pending"]
        if self.guide is not None and state.get("guide"):
            self.guide.load_state_dict(state["guide"])


def _action_for(param: Param, value: Any) -> float:
    """The action in [0, 1] whose `knob_value` is `value` (the inverse of env.knob_value on the grid)."""
    if isinstance(param.domain, Choice):
        values = param.ordered()
        return values.index(value) / max(len(values) - 1, 1) if value in values else 0.0
    a = float(param.domain.to_unit(value))
    return 1.0 - a if param.compresses < 0 else a
