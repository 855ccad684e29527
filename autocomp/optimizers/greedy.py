"""Greedy per-layer sensitivity (AIMET's greedy compression-ratio selection), as an ask/tell optimizer.

1. reference: every knob at its least compressive value;
2. sensitivity: each knob alone moved through its grid (the others at reference): one measured curve of
   objective changes per knob and layer;
3. selection: for a tolerance t on the first objective, each knob takes its most rewarding value (largest
   sum of normalised gains in the other objectives) whose own loss in the first objective is at most t.
   Losses add up across knobs, so t sweeps from zero to the largest loss seen; with `target`, the first
   combined candidate asked is the smallest t whose predicted second objective reaches `target` x the
   reference (e.g. 0.1 = a tenth of the reference size).

It runs out of candidates after the sweep (the runner then stops early); its front can seed Optuna or
DEAP through their `initial` setting (`autocomp search ... --seed-from runs/GREEDY_RUN`).
"""

from __future__ import annotations

import json
import math
import os
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autocomp.optimizers.base import Optimizer, Params, SearchContext, Told
from autocomp.space import BoundSpace


def sensitivity_queue(space: BoundSpace, levels: int, seed: int) -> tuple[Params, list[Params]]:
    """The candidates of a sensitivity phase: the reference, then each knob alone moved through its grid.

    Knobs that are names (`compresses == 0`, no "more compressive") stay at the reference.

    Args:
        space: The bound space searched.
        levels: At most this many values of each knob's grid besides the reference one, evenly spread.
        seed: Orders the one-knob moves (the measurements, and so what is built from them, are the same).

    Returns:
        The reference (every knob at its least compressive value) and the queue to ask: the reference
        first, then the one-knob moves in seeded order.
    """
    reference = {p.name: p.least_compressive() for p in space.params}
    moves: list[Params] = []
    for p in space.params:
        if p.compresses:
            values = p.ordered()
            picks = np.unique(np.round(np.linspace(1, len(values) - 1, min(levels, len(values) - 1))))
            moves += [{**reference, p.name: values[int(i)]} for i in picks if len(values) > 1]
    order = np.random.default_rng(seed).permutation(len(moves))
    return reference, [dict(reference)] + [moves[i] for i in order]


class SensitivitySearch(Optimizer):
    """Measure each knob alone (the sensitivity phase), then ask candidates built from those measurements.

    The shared machinery of `greedy` and `knapsack`: subclasses build the second phase's candidates in
    `_combinations`, called once, when every sensitivity point has been told. After them the optimizer has
    nothing more to ask (the runner then stops early).

    The measurements are a cached step of the run: when the phase ends they are written to the run
    directory as `sensitivity.json` (see `sensitivity_doc`) with a heat map `sensitivity.png`, and an
    optimizer built on a run directory (or given `sensitivity`, a file or run directory) that already holds
    a `sensitivity.json` of the same space, objectives' directions and `levels` reuses it instead of
    measuring again. Only reuse one measured with the same model, data and objectives.

    `sensitivity: fisher` (where the subclass sets FISHER) skips the phase: the runner's gradient proxies
    (`SearchContext.proxies`, see autocomp/proxies.py) stand in for the measurements, and sensitivity.json
    holds them (`fisher`) instead of measured drops.
    """

    FISHER = False  # whether `sensitivity: fisher` is supported

    @classmethod
    def wants_proxies(cls, settings: Mapping[str, Any]) -> bool:
        """True with `sensitivity: fisher`: the runner then computes the gradient proxies."""
        return cls.FISHER and settings.get("sensitivity") == FISHER

    def __init__(self, space: BoundSpace, *, directions: Sequence[str], seed: int = 0,
                 context: SearchContext | None = None, levels: int = 10, sensitivity: str | None = None) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        self.levels = levels
        self.reference, self.queue = sensitivity_queue(space, levels, seed)
        self.measured: list[tuple[Params, list[float] | None]] = []
        self.phase = "sensitivity"
        self.outstanding = 0
        self.cached: str | None = None  # the file the measurements were read from, if any
        if sensitivity == FISHER and not self.FISHER:
            raise ValueError(f"sensitivity: fisher is not supported by {self.name or type(self).__name__} "
                             "(knapsack and the guided searches take it)")
        self.source = FISHER if sensitivity == FISHER else MEASURED
        if self.source == FISHER:
            self.queue = []  # no sensitivity phase: the proxies stand in for it
        sensitivity = None if sensitivity in (FISHER, MEASURED) else sensitivity
        source = sensitivity or (str(Path(self.context.workdir) / SENSITIVITY_FILE) if self.context.workdir else None)
        if self.source == FISHER:
            source = None
        if source:
            path = Path(source) / SENSITIVITY_FILE if Path(source).is_dir() else Path(source)
            if sensitivity and not path.is_file():
                raise ValueError(f"sensitivity: no {SENSITIVITY_FILE} at '{source}'")
            cached = read_cached(path, self._identity())
            if cached is not None:
                self.measured, self.queue, self.cached = cached, [], str(path)
            elif sensitivity:
                raise ValueError(f"sensitivity: '{path}' was measured on another space, objectives or levels")

    def _identity(self) -> dict[str, Any]:
        """What a cached sensitivity file must match: the space's params, the directions and `levels`."""
        return json.loads(json.dumps({"params": [[p.name, repr(p.domain)] for p in self.space.params],
                                      "directions": list(self.directions), "levels": self.levels}))

    def ask(self, n: int) -> list[Params]:
        """Next sensitivity points; once all are told, the combined candidates (then none)."""
        if not self.queue and self.phase == "sensitivity" and self.outstanding == 0:
            self.save_sensitivity()
            self.queue = self._combinations()
            self.phase = "combined"
        picks, self.queue = self.queue[:n], self.queue[n:]
        self.outstanding += len(picks)
        return picks

    def tell(self, results: Sequence[Told]) -> None:
        """Record the sensitivity measurements; results of combined candidates are not needed."""
        for told in results:
            self.outstanding = max(0, self.outstanding - 1)
            if self.phase == "sensitivity":
                self.measured.append((dict(told.params), list(told.values) if told.values is not None else None))

    @abstractmethod
    def _combinations(self) -> list[Params]:
        """The second phase's candidates, from `self.measured` (every sensitivity point told)."""

    def _signed(self, values: Sequence[float]) -> np.ndarray:
        """Objective values with maximize positive, so larger is always better."""
        return np.array([v if d == "maximize" else -v for v, d in zip(values, self.directions)])

    def one_knob_moves(self) -> tuple[list[float] | None, list[tuple[str, Any, list[float]]]]:
        """The measured reference and the measured one-knob moves.

        Returns:
            The reference's objective values (None when it failed: nothing to measure against) and, in the
            order told, (param name, value, objective values) of each one-knob move that did not fail.
        """
        ref = next((v for p, v in self.measured if p == self.reference and v is not None), None)
        moves = []
        for params, values in self.measured:
            changed = [k for k in params if params[k] != self.reference[k]]
            if len(changed) != 1 or values is None:  # a failed setting is never chosen
                continue
            moves.append((changed[0], params[changed[0]], values))
        return ref, moves

    def sensitivity_doc(self) -> dict[str, Any]:
        """The measurements as `sensitivity.json`: per layer, knob and value, the first objective's drop.

        `knobs[knob]` holds `values` (columns, least compressive first), `drop` (one row per layer: the first
        objective's loss against the reference with only that value changed, positive = worse, None = not
        measured or failed) and `delta` (every objective's measured value minus the reference's). `layers`
        names the rows (a layer, or a group sharing the knob). `cache` is what a later run reuses.
        """
        ref, moves = self.one_knob_moves()
        by_name = {p.name: p for p in self.space.params}
        owners = list(dict.fromkeys(_owner(p) for p in self.space.params if p.compresses))
        found: dict[str, dict[str, dict[Any, list[list[float]]]]] = {}
        for name, value, values in moves:
            p = by_name[name]
            found.setdefault(p.knob, {}).setdefault(_owner(p), {}).setdefault(value, []).append(list(values))
        knobs: dict[str, Any] = {}
        for knob, params in self.space.knobs().items():
            if not any(p.compresses for p in params):
                continue
            columns = list(dict.fromkeys(v for p in params for v in [p.least_compressive(), *(
                v for v in p.ordered() if any(v == w for w in found.get(knob, {}).get(_owner(p), {}))
                or repr(v) in self.context.proxies.get(p.name, {}))]))
            drop: list[list[float | None]] = []
            delta: list[list[list[float] | None]] = []
            for owner in owners:
                cells = found.get(knob, {}).get(owner, {})
                mine = next((p for p in params if _owner(p) == owner), None)
                row_drop: list[float | None] = []
                row_delta: list[list[float] | None] = []
                for column in columns:
                    if ref is None or mine is None:
                        row_drop.append(None)
                        row_delta.append(None)
                    elif column == mine.least_compressive():  # the identity change: the reference itself
                        row_drop.append(0.0)
                        row_delta.append([0.0] * len(ref))
                    elif column in cells:
                        mean = np.mean(cells[column], axis=0)
                        row_delta.append([float(m - r) for m, r in zip(mean, ref)])
                        row_drop.append(float(self._signed(ref)[0] - self._signed(mean)[0]))
                    else:
                        row_drop.append(None)
                        row_delta.append(None)
                drop.append(row_drop)
                delta.append(row_delta)
            knobs[knob] = {"values": columns, "drop": drop, "delta": delta}
            if self.context.proxies:
                knobs[knob]["fisher"] = self._proxy_rows(params, owners, columns)
        doc: dict[str, Any] = {
            "layers": owners, "knobs": knobs, "reference": list(ref) if ref is not None else None,
            "shows": f"drop in objective 1 ({self.directions[0]}) with only that value changed",
            "evaluations": len(self.measured), "source": self.source}
        if self.context.proxies:
            doc["fisher"] = {"shows": "0.5 * sum(Fisher diagonal * weight change^2): predicted loss increase "
                                      "with only that value changed (autocomp/proxies.py)",
                             **{k: v for k, v in self.context.proxy_info.items() if k in ("trace", "weights", "seconds",
                                                                                          "rows")}}
        if self.source == MEASURED:  # a proxy-only file must never pass for measurements
            doc["cache"] = {**self._identity(), "measured": [[p, v] for p, v in self.measured]}
        return json.loads(json.dumps(doc))

    def _proxy_rows(self, params: Sequence[Any], owners: list[str], columns: list[Any]) -> list[list[float | None]]:
        """Per owner and column, the Fisher-predicted loss of that knob value alone (None: not predicted)."""
        rows: list[list[float | None]] = []
        for owner in owners:
            mine = next((p for p in params if _owner(p) == owner), None)
            entries = self.context.proxies.get(mine.name, {}) if mine is not None else {}
            rows.append([entries.get(repr(c), {}).get("loss") for c in columns])
        return rows

    def save_sensitivity(self) -> None:
        """Write `sensitivity.json` and `sensitivity.png` to the run directory (nothing without one)."""
        if not self.context.workdir or not (self.measured or self.context.proxies):
            return
        doc = self.sensitivity_doc()
        folder = Path(self.context.workdir)
        tmp = folder / (SENSITIVITY_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, folder / SENSITIVITY_FILE)  # atomic: a resumed run never reads half a file
        heat_map(doc, folder / "sensitivity.png")

    def state_dict(self) -> dict[str, Any]:
        """The queue, the measurements so far, the phase and how many asks are outstanding."""
        return {"queue": self.queue, "measured": self.measured, "phase": self.phase,
                "outstanding": self.outstanding}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.queue = [dict(p) for p in state["queue"]]
        self.measured = [(dict(p), v) for p, v in state["measured"]]
        self.phase = state["phase"]
        self.outstanding = int(state["outstanding"])


SENSITIVITY_FILE = "sensitivity.json"
FISHER, MEASURED = "fisher", "measured"  # where the sensitivities come from (the `sensitivity` setting)


def _owner(param: Any) -> str:
    """The layer (or group) a param belongs to: its name without ".<primitive>.<knob>"."""
    return str(param.name[: -len(param.knob) - 1]) if param.name.endswith("." + param.knob) else str(param.name)


def read_cached(path: Path, identity: dict[str, Any]) -> list[tuple[Params, list[float] | None]] | None:
    """The measurements of a `sensitivity.json` whose cache identity is `identity`; None when it is not.

    Args:
        path: The file (absent or unreadable: None).
        identity: The space's params, directions and levels it must have been measured for.

    Returns:
        The (params, values) measured, in the order told, or None.
    """
    try:
        cache = json.loads(path.read_text())["cache"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(cache, dict) or any(cache.get(k) != v for k, v in identity.items()):
        return None
    return [(dict(p), None if v is None else [float(x) for x in v]) for p, v in cache.get("measured", [])]


def heat_map(doc: dict[str, Any], path: Path) -> None:
    """Save a per-layer heat map of `doc`'s drops (one panel per knob) as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    knobs = doc["knobs"]
    if not knobs:
        return
    # one row of panels per matrix that holds a number: measured drops, then Fisher predictions
    matrices = [m for m in ("drop", "fisher") if any(
        v is not None for spec in knobs.values() for row in spec.get(m, []) for v in row)] or ["drop"]
    trace = doc.get("fisher", {}).get("trace", {})
    labels = [f"{name} (tr {trace[name]:.3g})" if name in trace else name for name in doc["layers"]]
    fig, axes = plt.subplots(len(matrices), len(knobs), squeeze=False,
                             figsize=(4.2 * len(knobs), (1.2 + 0.45 * len(doc["layers"])) * len(matrices)))
    for row_axes, matrix in zip(axes, matrices):
        for ax, (knob, spec) in zip(row_axes, knobs.items()):
            cells = spec.get(matrix) or [[None] * len(spec["values"]) for _ in doc["layers"]]
            grid = np.array([[math.nan if v is None else v for v in row] for row in cells], dtype=float)
            image = ax.imshow(np.ma.masked_invalid(grid), cmap="OrRd", aspect="auto")
            ax.set_xticks(range(len(spec["values"])), [str(v) for v in spec["values"]], rotation=45, fontsize=7)
            ax.set_yticks(range(len(doc["layers"])), labels if matrix == "fisher" else doc["layers"], fontsize=7)
            ax.set_title(f"{knob}: {'measured drop' if matrix == 'drop' else 'Fisher-predicted loss'}", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.05)
    shows = doc.get("fisher", {}).get("shows") if matrices == ["fisher"] else doc.get("shows")
    fig.suptitle(shows or "sensitivity", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class GreedySensitivity(SensitivitySearch):
    """Measure each knob alone, then combine the knobs' best values at a sweep of loss tolerances."""

    name = "greedy"
    SETTINGS = {"levels": int, "sweep": int, "target": float, "sensitivity": str}

    def __init__(self, space, *, directions, seed=0, context=None, levels: int = 10, sweep: int = 30,
                 target: float | None = None, sensitivity: str | None = None) -> None:
        if levels < 2 or sweep < 1:
            raise ValueError("levels must be at least 2 and sweep at least 1")
        super().__init__(space, directions=directions, seed=seed, context=context, levels=levels,
                         sensitivity=sensitivity)
        self.sweep, self.target = sweep, target

    def _combinations(self) -> list[Params]:
        ref, measured = self.one_knob_moves()
        if ref is None:
            return []  # the reference failed: nothing to measure sensitivities against
        base = self._signed(ref)
        scale = np.maximum(np.abs(base), 1e-12)
        moves: dict[str, list[tuple[Any, float, float]]] = {}  # param -> (value, loss, gain)
        for name, value, values in measured:
            delta = (self._signed(values) - base) / scale
            loss = max(0.0, -float(delta[0]))
            gain = float(delta[1:].sum()) if len(delta) > 1 else float(delta[0])
            moves.setdefault(name, []).append((value, loss, gain))
        if len(self.directions) == 1:  # one objective: each knob at its own best value
            best = {k: max(v, key=lambda m: m[2]) for k, v in moves.items()}
            return [{**self.reference, **{k: m[0] for k, m in best.items() if m[2] > 0}}]
        losses = sorted({m[1] for v in moves.values() for m in v}) or [0.0]
        tolerances = [0.0] + [float(t) for t in np.quantile(losses, np.linspace(0, 1, self.sweep))]
        out: list[Params] = []
        scored: list[tuple[float, Params, float]] = []
        for t in sorted(set(tolerances)):
            candidate, predicted = dict(self.reference), 0.0
            for k, options in moves.items():
                allowed = [m for m in options if m[1] <= t and m[2] > 0]
                if allowed:
                    pick = max(allowed, key=lambda m: m[2])
                    candidate[k] = pick[0]
                    predicted += pick[2]
            if candidate not in out:
                out.append(candidate)
                scored.append((t, candidate, predicted))
        if self.target is not None and len(self.directions) > 1:
            # predicted second objective relative to the reference: 1 - summed relative gains
            meets = [c for t, c, g in scored if 1.0 - g <= self.target]
            if meets:
                out.remove(meets[0])
                out.insert(0, meets[0])
        return out
