"""What every benchmark shares: the results.json contract, machine description, timing, cached baselines.

Benchmarks report medians and ratios measured in one run, never a single absolute time as a claim.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.config import RunSpec, dump_run_spec
from autocomp.metrics import accuracy
from autocomp.runner import machine_info
from autocomp.store import write_atomic
from autocomp.zoo import Splits, build_model, load_dataset, train_baseline
from autocomp.zoo.train import TrainSpec

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
}
MIN_REPEATS = 3  # independent repetitions a timing target is judged on (their median)


@dataclass
class BenchResult:
    """One benchmark's table, settings and targets, written as results.json (DESIGN.md's contract)."""

    name: str
    settings: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def target(self, name: str, value: float, op: str, bound: float) -> None:
        """Record a target: met when `value op bound` holds (op one of >=, <=, >, <, ==)."""
        self.targets[name] = {"value": value, "target": f"{op} {bound}", "met": bool(OPS[op](value, bound))}

    def timed_target(self, name: str, samples: Sequence[float], op: str, bound: float) -> None:
        """A timing target, judged on the median of independent repetitions.

        At least 3 repetitions (one timing flips between runs), with their spread (min, max) and count beside it.
        """
        if len(samples) < MIN_REPEATS:
            raise ValueError(f"timing target '{name}': {len(samples)} repetitions, at least {MIN_REPEATS} needed")
        self.target(name, statistics.median(samples), op, bound)
        self.targets[name].update(spread=[min(samples), max(samples)], repeats=len(samples),
                                  samples=list(samples))

    def write(self, runs_dir: str | os.PathLike) -> Path:
        """Write results.json (with the machine's description) to `runs_dir/bench-NAME`; returns that folder."""
        out = Path(runs_dir) / f"bench-{self.name}"
        out.mkdir(parents=True, exist_ok=True)
        doc = {"name": self.name, "machine": machine_info(), "settings": self.settings, "rows": self.rows,
               "targets": self.targets}
        write_atomic(out / "results.json", json.dumps(doc, indent=1, default=str) + "\n")
        return out


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The rows as a plain-text table of `columns` (floats to 4 significant digits, ints with separators)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "-" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def format_targets(targets: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per target: MET or MISS, its value (with the spread of timed ones) and the target."""
    def spread(t: Mapping[str, Any]) -> str:
        return f" [{t['spread'][0]:.4g}-{t['spread'][1]:.4g}, median of {t['repeats']}]" if "spread" in t else ""

    return "\n".join(f"  {'MET ' if t['met'] else 'MISS'}  {name}: {t['value']:.4g}{spread(t)} (target {t['target']})"
                     for name, t in targets.items())


def publish(result: BenchResult, columns: Sequence[str], runs_dir: str | os.PathLike,
            also: Sequence[str] = ()) -> BenchResult:
    """Print the table and the targets, write results.json, and say where it (and `also`) went."""
    print(format_table(result.rows, columns))
    print("targets:")
    print(format_targets(result.targets))
    out = result.write(runs_dir)
    print("results: " + "  ".join(str(out / name) for name in ("results.json", *also)))
    return result


def cached_baseline(model_name: str, dataset: str, data_dir: str | None, train: TrainSpec, runs_dir: str | os.PathLike,
                    *, subset: int | None = None, model_kwargs: Mapping[str, Any] | None = None,
                    log: Callable[[str], None] = print) -> tuple[nn.Module, Splits]:
    """A seeded baseline trained on a fixed budget, cached under runs_dir/.cache (weights only)."""
    splits = load_dataset(dataset, data_dir, val_fraction=0.1, seed=0)
    if subset:
        splits = Splits((splits.train[0][:subset], splits.train[1][:subset]), splits.val,
                        (splits.test[0][: subset // 2], splits.test[1][: subset // 2]), splits.description)
    model = build_model(model_name, model_kwargs)
    key = f"{model_name}-{dataset}-{len(splits.train[1])}-e{train.epochs}-s{train.seed}-lr{train.lr}"
    path = Path(runs_dir) / ".cache" / f"bench-{key}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        log(f"{model_name}: cached baseline {path}")
    else:
        start = time.perf_counter()
        log(f"{model_name}: training a baseline on {len(splits.train[1])} {dataset} images, {train.epochs} epochs")
        train_baseline(model, splits.train, train)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
        log(f"{model_name}: trained in {time.perf_counter() - start:.0f} s, "
            f"test accuracy {accuracy(model.eval(), splits.test):.4f}")
    return model.eval(), splits


def finished_run(run_dir: Path, spec: RunSpec, trials: int) -> bool:
    """Whether `run_dir` holds a finished search of this very space file and trial budget.

    A bench reads it back instead of searching again, so a comparison can be redone alone.
    """
    try:
        info = json.loads((run_dir / "run.json").read_text())
        same_space = (run_dir / "space.yaml").read_text() == dump_run_spec(spec)
        return same_space and (run_dir / "pareto.json").is_file() and info["settings"]["trials"] == trials
    except (OSError, ValueError, KeyError):
        return False
