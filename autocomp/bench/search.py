"""`autocomp bench search`: every search strategy against the random and uniform baselines, same budget.

LeNet-300-100 on MNIST, the space of search_spaces/lenet300_mnist.yaml (per layer: SVD rank, pruning
ratio, weight bits), objectives validation accuracy (no fine-tuning) and packed size_bytes. Each strategy
runs `budget` evaluations per seed; the figures at a smaller budget are read off the first trials of the
same run (no strategy here plans by its budget, so that is what a shorter run would have produced).

Hypervolume is over (accuracy, log10 size_bytes), reference point (0.90, log10 of the fp32 bytes): a
point counts only if it keeps 90% accuracy and is smaller than the uncompressed model, and halving the
size counts the same anywhere on the axis.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import autocomp
from autocomp.bench.common import BenchResult, cached_baseline, publish
from autocomp.config import load_run_spec
from autocomp.metrics import accuracy
from autocomp.pareto import hypervolume
from autocomp.runtimes import LatencySpec
from autocomp.zoo import DATASETS, MODELS
from autocomp.zoo.train import TrainSpec

STRATEGIES = ("random", "uniform", "greedy", "tpe", "nsga2", "rl")
SEARCHED = ("tpe", "nsga2", "rl")
SPACE_FILE = Path(__file__).resolve().parents[2] / "search_spaces" / "lenet300_mnist.yaml"
REFERENCE_ACCURACY = 0.90
QUICK_BUDGETS = (30, 60)  # --quick: evaluations per strategy (the smaller read off the same run's first trials)
COLUMNS = ("strategy", "budget", "hv_median", "hv_min", "hv_max", "best_ratio_0.5pt", "evals", "wall_s")


def space():
    """The bench's search space, from search_spaces/lenet300_mnist.yaml (needs a repository checkout)."""
    if not SPACE_FILE.is_file():  # an installed package without the repository's search_spaces/
        raise FileNotFoundError(f"{SPACE_FILE} not found: run the bench from a checkout")
    return load_run_spec(SPACE_FILE, models=MODELS, datasets=DATASETS).space


def hypervolumes(trials: Sequence[Any], metric: str, direction: str, reference: tuple[float, float],
                 checkpoints: Sequence[int] | None = None) -> list[float]:
    """Hypervolume over (metric, log10 size_bytes) of the complete trials among the first k, for each k.

    Args:
        trials: Trials in the order they were asked.
        metric: The first objective's metric name, e.g. accuracy or perplexity.
        direction: Its direction, "maximize" or "minimize" (size always minimized).
        reference: (metric, log10 size_bytes) bounding the volume: points beyond it count for nothing.
        checkpoints: The k's (default: every k, 1 to len(trials)).

    Returns:
        One hypervolume per checkpoint.
    """
    scored = objective_points(trials, metric)
    out = []
    for k in range(1, len(trials) + 1) if checkpoints is None else checkpoints:
        points = [q for q in scored[:k] if q is not None]
        out.append(hypervolume(points, reference, (direction, "minimize")))
    return out


def objective_points(trials: Sequence[Any], metric: str) -> list[tuple[float, float] | None]:
    """Each trial's (metric, log10 size_bytes), None for one that did not complete."""
    return [(float(t.metrics[metric]), math.log10(t.metrics["size_bytes"])) if t.status == "complete" else None
            for t in trials]


def best_ratio(trials: list[Any], base_accuracy: float, drop: float = 0.005) -> float:
    """The best compression ratio within `drop` of the baseline's accuracy (1.0: none, the model as is)."""
    ok = [t.metrics["compression_ratio"] for t in trials
          if t.status == "complete" and t.metrics["accuracy"] >= base_accuracy - drop]
    return max(ok, default=1.0)


def plot(median: dict[str, list[float]], checkpoints: list[int], path: Path) -> None:
    """Plot each strategy's median hypervolume against evaluations and save it as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in median.items():
        ax.plot(checkpoints, values, label=name, marker="o" if name in SEARCHED else None, markersize=3)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("hypervolume (accuracy x log10 bytes), median of seeds")
    ax.set_title("LeNet-300-100 / MNIST: search strategies at equal budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(*, quick: bool, data_dir: str | None, runs_dir: str, log: Callable[[str], None] = print) -> BenchResult:
    """Run every strategy for each seed and budget (`quick`: fewer, smaller) and collect hypervolumes."""
    budgets = QUICK_BUDGETS if quick else (100, 300)
    seeds = (0,) if quick else (0, 1, 2)
    train = TrainSpec(epochs=1, lr=1e-3) if quick else TrainSpec(epochs=10, lr=1e-3)
    model, splits = cached_baseline("lenet300", "mnist", data_dir, train, runs_dir,
                                    subset=2000 if quick else None, log=log)
    val = (splits.val[0][:1000], splits.val[1][:1000]) if quick else splits.val
    params = sum(p.numel() for p in model.parameters())
    fp32_bytes = 4 * params
    base_accuracy = accuracy(model, val)
    result = BenchResult("search", {
        "quick": quick, "model": "lenet300", "space": "search_spaces/lenet300_mnist.yaml", "seeds": list(seeds),
        "budgets": list(budgets), "objectives": ["accuracy (validation, no fine-tuning)", "size_bytes"],
        "hypervolume": f"over (accuracy, log10 size_bytes), reference ({REFERENCE_ACCURACY}, "
                       f"log10 {fp32_bytes})", "base_accuracy": base_accuracy, "fp32_bytes": fp32_bytes,
        "val_rows": len(val[1]),
    })
    checkpoints = sorted({*range(10, budgets[-1] + 1, 10), *budgets})
    workdir = Path(runs_dir) / "bench-search" / "runs"
    shutil.rmtree(workdir, ignore_errors=True)  # a bench measures from scratch
    curves: dict[str, list[list[float]]] = {}
    finals: dict[str, dict[int, list[float]]] = {}
    searched = space()
    for strategy in STRATEGIES:
        per_budget: dict[int, dict[str, list]] = {b: {"hv": [], "ratio": [], "evals": []} for b in budgets}
        walls = []
        for seed in seeds:
            start = time.perf_counter()
            res = autocomp.search(model, val, space=searched, optimizer=strategy, trials=budgets[-1], seed=seed,
                                  runs_dir=workdir, name=f"{strategy}-s{seed}", progress=False,
                                  latency=LatencySpec(repeats=1, warmup=0),
                                  calibration_data=(splits.train[0][:256], splits.train[1][:256]))
            walls.append(time.perf_counter() - start)
            trials = sorted(res.trials, key=lambda t: t.id)
            curve = hypervolumes(trials, "accuracy", "maximize", (REFERENCE_ACCURACY, math.log10(fp32_bytes)),
                                 checkpoints)
            curves.setdefault(strategy, []).append(curve)
            for b in budgets:
                per_budget[b]["hv"].append(curve[checkpoints.index(b)])
                per_budget[b]["ratio"].append(best_ratio(trials[:b], base_accuracy))
                per_budget[b]["evals"].append(min(b, len(trials)))
        finals[strategy] = {b: per_budget[b]["hv"] for b in budgets}
        for b in budgets:
            ratios = per_budget[b]["ratio"]
            hv = per_budget[b]["hv"]
            row = {"strategy": strategy, "budget": b, "hv_median": statistics.median(hv), "hv_min": min(hv),
                   "hv_max": max(hv), "best_ratio_0.5pt": statistics.median(ratios),
                   "evals": statistics.median(per_budget[b]["evals"]), "wall_s": statistics.median(walls)}
            result.rows.append(row)
            log(f"  {strategy:8s} budget {b:4d}  hv {row['hv_median']:.4f} [{row['hv_min']:.4f}, "
                f"{row['hv_max']:.4f}]  best ratio @0.5pt {row['best_ratio_0.5pt']:.1f}  wall {row['wall_s']:.0f} s")
    top = budgets[-1]
    med = {s: statistics.median(finals[s][top]) for s in STRATEGIES}
    for s in SEARCHED:
        for baseline in ("random", "uniform"):
            result.target(f"{s}_hv_over_{baseline}_at_{top}", med[s] - med[baseline], ">", 0.0)
    best = max(SEARCHED, key=lambda s: med[s])
    half = checkpoints.index(min(checkpoints, key=lambda c: abs(c - top // 2)))
    early = statistics.median(c[half] for c in curves[best]) / med[best] if med[best] > 0 else 0.0
    result.target(f"best_searched_{best}_hv_fraction_at_{checkpoints[half]}", early, ">=", 0.95)
    out = Path(runs_dir) / "bench-search"
    out.mkdir(parents=True, exist_ok=True)
    median = {s: [statistics.median(r[i] for r in runs) for i in range(len(checkpoints))] for s, runs in curves.items()}
    plot(median, checkpoints, out / "hypervolume.png")
    result.settings["curves"] = {"evaluations": checkpoints, "median_hv": median}
    return result


def main(*, quick: bool, data_dir: str | None, runs_dir: str) -> BenchResult:
    """Run the bench and publish its table, targets, results.json and hypervolume.png."""
    return publish(run(quick=quick, data_dir=data_dir, runs_dir=runs_dir), COLUMNS, runs_dir,
                   also=("hypervolume.png",))
