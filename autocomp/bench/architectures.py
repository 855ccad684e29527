"""`autocomp bench architectures`: do efficient-block substitutions add points to the Pareto front?

Per model (LeNet-5 on MNIST, ResNet-20 on CIFAR-10), two searches at the same budget, seed and settings
(search_spaces/architectures_<model>.yaml; TPE over accuracy, size_bytes and measured latency_ms, each
candidate fine-tuned briefly with distillation, 2 Ray workers):

- substitution: the file as written (substitute + prune + quantize);
- prune+quantize: the same file with every `substitute` knob removed.

Both runs' complete trials are projected on accuracy vs size_bytes and accuracy vs latency_ms; the 2-D
front of the union of the two runs says, per projection, how many of its points each arm contributed. The
two fronts are drawn together (runs/bench-architectures/<model>.png). Accuracy is the validation accuracy
each candidate was searched by; latency is the median forward pass measured on this machine, and since the
two runs are timed minutes apart, `latency_checks` says how far the machine drifted between them (and
compares substituted with unchanged candidates inside one run, where no drift separates them). A rerun
reuses finished searches of the same space and budget and only redoes the comparison.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from autocomp.bench.common import BenchResult, finished_run, publish
from autocomp.bench.search import SPACE_FILE
from autocomp.config import RunSpec
from autocomp.pareto import pareto_front
from autocomp.runner import Trial
from autocomp.session import read_spec, run_spec_search
from autocomp.store import RunStore, write_atomic

COLUMNS = ("model", "arm", "trials", "complete", "front_size", "front_latency", "union_size_points",
           "union_latency_points", "best_accuracy", "smallest_within_1pt", "fastest_within_1pt", "minutes")
ARMS = ("substitution", "prune+quantize")


def space_file(model: str) -> Path:
    return SPACE_FILE.with_name(f"architectures_{model}.yaml")


def without_substitution(spec: RunSpec) -> RunSpec:
    """The same search space minus every `substitute` knob."""
    groups = tuple(replace(g, knobs=tuple(k for k in g.knobs if k.primitive != "substitute"))
                   for g in spec.space.groups)
    return replace(spec, space=replace(spec.space, groups=groups))


def _share_cached_baselines(out: Path, runs_dir: Path) -> None:
    """Copy baselines other benches trained into this bench's cache, so none is trained twice.

    Those are runs/*/.cache/baseline-<key>.pt, named by what trained them, so the same model and training
    are not trained twice.
    """
    cache = out / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    for found in runs_dir.glob("*/.cache/baseline-*.pt"):
        if not (cache / found.name).exists():
            shutil.copyfile(found, cache / found.name)


def union_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Non-dominated (maximize accuracy, minimize cost) points of (arm, accuracy, cost)."""
    keep = pareto_front([(a, c) for _, a, c in points], ["maximize", "minimize"])
    return [points[i] for i in keep]


def _search(spec: RunSpec, arm: str, model: str, out: Path, data_dir: str | None, trials: int,
            workers: int) -> dict[str, Any]:
    """One arm's search; a finished run of the same space and budget is read back instead.

    Its journal and baseline are read back, so the comparison can be redone without repeating the searches.
    """
    start = time.perf_counter()
    run_dir = out / f"{model}-{arm.replace('+', '-')}"
    if finished_run(run_dir, spec, trials):
        info = json.loads((run_dir / "run.json").read_text())
        done = [Trial.from_record(r) for r in RunStore(run_dir).trials()]
        return {"arm": arm, "trials": len(done), "complete": [t for t in done if t.status == "complete"],
                "baseline": info["baseline"], "minutes": info.get("bench_minutes"), "reused": True}
    shutil.rmtree(run_dir, ignore_errors=True)
    result = run_spec_search(spec, optimizer=None, trials=trials, seed=0, runs_dir=out, name=run_dir.name,
                             data_dir=data_dir, progress=False, execution={"workers": workers})
    minutes = (time.perf_counter() - start) / 60
    info = json.loads((run_dir / "run.json").read_text())
    write_atomic(run_dir / "run.json", json.dumps({**info, "bench_minutes": minutes}, indent=1) + "\n")
    return {"arm": arm, "trials": len(result.trials), "complete": [t for t in result.trials if t.status == "complete"],
            "baseline": result.baseline, "minutes": minutes, "reused": False}


def _plain(trial: Any) -> bool:
    """No substitution in this candidate: its dense structure is the uncompressed model's."""
    return all(v == "none" for k, v in trial.params.items() if k.endswith("substitute.block"))


def latency_checks(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Latency compared where it is comparable.

    Within the substitution run: the median latency of the
    candidates with a substituted block over that of the ones without (same run, same machine state).
    Across the runs: the same median over the structurally unchanged candidates of each (prune and
    quantize leave a dense runtime's work as it is), i.e. how far the machine drifted between them.
    """
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    sub, plain = runs
    substituted = median([t.metrics["latency_ms"] for t in sub["complete"] if not _plain(t)])
    unchanged = median([t.metrics["latency_ms"] for t in sub["complete"] if _plain(t)])
    other = median([t.metrics["latency_ms"] for t in plain["complete"]])
    return {"substituted_over_unchanged_same_run": substituted / unchanged if substituted and unchanged else None,
            "drift_between_runs": unchanged / other if unchanged and other else None}


def compare(model: str, data_dir: str | None, out: Path, *, trials: int, workers: int,
            quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    spec = read_spec(space_file(model))
    if quick:
        spec = replace(spec, train=replace(spec.train, epochs=1), finetune=replace(spec.finetune, steps=3))
    runs = [_search(spec, ARMS[0], model, out, data_dir, trials, workers),
            _search(without_substitution(spec), ARMS[1], model, out, data_dir, trials, workers)]
    base = runs[0]["baseline"]
    rows, fronts = [], {}
    for metric in ("size_bytes", "latency_ms"):
        points = [(r["arm"], t.metrics["accuracy"], t.metrics[metric]) for r in runs for t in r["complete"]]
        fronts[metric] = union_front(points)
    for r in runs:
        ts = r["complete"]
        close = [t for t in ts if t.metrics["accuracy"] >= base["accuracy"] - 0.01]
        own = {m: union_front([(r["arm"], t.metrics["accuracy"], t.metrics[m]) for t in ts])
               for m in ("size_bytes", "latency_ms")}
        rows.append({
            "model": model, "arm": r["arm"], "trials": r["trials"], "complete": len(ts),
            "front_size": len(own["size_bytes"]), "front_latency": len(own["latency_ms"]),
            "union_size_points": sum(p[0] == r["arm"] for p in fronts["size_bytes"]),
            "union_latency_points": sum(p[0] == r["arm"] for p in fronts["latency_ms"]),
            "best_accuracy": max((t.metrics["accuracy"] for t in ts), default=None),
            "smallest_within_1pt": min((t.metrics["size_bytes"] for t in close), default=None),
            "fastest_within_1pt": min((t.metrics["latency_ms"] for t in close), default=None),
            "minutes": r["minutes"],
            "own_front": {m: [[a, c] for _, a, c in sorted(f, key=lambda p: p[2])] for m, f in own.items()},
        })
    plot(out / f"{model}.png", model, rows, base)
    where = {m: [[arm, a, c] for arm, a, c in sorted(f, key=lambda p: p[2])] for m, f in fronts.items()}
    return rows, {"baseline": {k: base[k] for k in ("accuracy", "size_bytes", "latency_ms")}, "union_front": where,
                  "latency": latency_checks(runs), "reused_runs": [r["arm"] for r in runs if r["reused"]]}


def plot(path: Path, model: str, rows: list[dict[str, Any]], baseline: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in ((axes[0], "size_bytes", "packed bytes"), (axes[1], "latency_ms", "latency (ms)")):
        for row, (marker, line, color) in zip(rows, (("o", "-", "tab:blue"), ("s", "--", "tab:red"))):
            front = row["own_front"][metric]
            xs, ys = [c for _, c in front], [a for a, _ in front]
            ax.step(xs, ys, line, where="post", color=color, label=row["arm"])
            ax.plot(xs, ys, marker, color=color)
        ax.axhline(baseline["accuracy"], color="grey", lw=0.8, ls=":", label="uncompressed")
        ax.set_xscale("log" if metric == "size_bytes" else "linear")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=8)
    fig.suptitle(f"{model}: substitution-enabled vs prune+quantize search, same budget")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main(quick: bool = False, data_dir: str | None = None, runs_dir: str = "runs") -> BenchResult:
    """Run both arms' searches per model (`quick`: small budgets) and publish the comparison."""
    out = Path(runs_dir) / "bench-architectures"
    _share_cached_baselines(out, Path(runs_dir))
    budgets = {"lenet5": 6, "resnet20": 4} if quick else {"lenet5": 60, "resnet20": 30}
    result = BenchResult("architectures", {"budgets": budgets, "workers": 2, "quick": quick, "arms": ARMS})
    for model, trials in budgets.items():
        rows, detail = compare(model, data_dir, out, trials=trials, workers=2, quick=quick)
        result.rows += rows
        result.settings[model] = detail
        added = {m: rows[0][f"union_{m}_points"] for m in ("size", "latency")}
        lat = detail["latency"]
        print(f"{model}: substitution adds {added['size']} of the union's size-front points and "
              f"{added['latency']} of its latency-front points -> {out / (model + '.png')}; latency of "
              f"substituted / unchanged candidates in one run: {lat['substituted_over_unchanged_same_run']}; "
              f"drift between the runs: {lat['drift_between_runs']}")
    return publish(result, COLUMNS, runs_dir, also=[f"{m}.png" for m in budgets])


__all__ = ["main", "union_front", "without_substitution"]
