"""`autocomp bench efficiency`: what the allocator and the guided searches cost to reach plain TPE's front.

LeNet-300-100 on full MNIST (`--data-dir`), no fine-tuning, the space and hypervolume of `bench search`
(search_spaces/lenet300_mnist.yaml; (accuracy, log10 size_bytes), reference (0.90, log10 fp32 bytes)).
Per seed, each strategy runs `budget` real evaluations (the knapsack allocator stops after its sweep):

- knapsack: the sensitivity phase and one allocation per budget of the sweep;
- tpe: plain TPE (random start-up trials);
- tpe-guided / nsga2-guided: `guided: true` (the allocator's measurements and solutions first, then asks
  screened by the additive surrogate; see autocomp/optimizers/guided.py);
- knapsack-fisher / tpe-guided-fisher: the same with `sensitivity: fisher`: no sensitivity phase, the
  runner's gradient proxies (autocomp/proxies.py) predict each knob's loss and the packed size each
  change gives, so the reference and the allocations are the only evaluations before the search.

For each: the evaluations (and the evaluation seconds) to first reach plain TPE's final hypervolume of the
same seed (counted from the first trial, the sensitivity phase included), the final hypervolume, and for the
guided ones the surrogate's error on every candidate it let through (accuracy in points; size relative) and
the share of proposed candidates it screened out; `proxy_s` is the proxies' wall time, to compare with
`eval_s_median`, one evaluation's. Medians over seeds.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import autocomp
from autocomp.bench import search as search_bench
from autocomp.bench.common import BenchResult, cached_baseline, publish
from autocomp.runtimes import LatencySpec
from autocomp.zoo.train import TrainSpec

LEVELS, SWEEP = 4, 20  # the sensitivity phase measures 4 values per knob; the allocator sweeps 20 budgets
STRATEGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "knapsack": ("knapsack", {"levels": LEVELS, "sweep": SWEEP}),
    "knapsack-fisher": ("knapsack", {"sensitivity": "fisher", "sweep": SWEEP}),
    "tpe": ("tpe", {}),
    "tpe-guided": ("tpe", {"guided": True, "levels": LEVELS, "sweep": SWEEP}),
    "tpe-guided-fisher": ("tpe", {"guided": True, "sensitivity": "fisher", "sweep": SWEEP}),
    "nsga2-guided": ("nsga2", {"guided": True, "levels": LEVELS, "sweep": SWEEP}),
}
GUIDED = ("tpe-guided", "tpe-guided-fisher", "nsga2-guided")
QUICK_BUDGET = 40
REDUCTION = 5.0  # target: the best guided reaches plain TPE's final hypervolume with this many times fewer evals
COLUMNS = ("strategy", "evals", "hv_final", "evals_to_tpe_hv", "eval_s_to_tpe_hv", "wall_s", "reached",
           "acc_err_median", "acc_err_p90", "size_relerr_median", "size_relerr_p90", "screened_share",
           "proxy_s", "eval_s_median")


def evals_to_reach(curve: list[float], target: float) -> int | None:
    """The first k (1-based) whose hypervolume reaches `target` (within 1e-12), None when none does."""
    return next((k + 1 for k, hv in enumerate(curve) if hv >= target - 1e-12), None)


def _median(values: list[Any]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def run(*, quick: bool, data_dir: str | None, runs_dir: str, log: Callable[[str], None] = print) -> BenchResult:
    """Run every strategy for each seed and collect evaluations to plain TPE's hypervolume and surrogate errors."""
    budget = QUICK_BUDGET if quick else 300
    seeds = (0,) if quick else (0, 1, 2)
    train = TrainSpec(epochs=1, lr=1e-3) if quick else TrainSpec(epochs=10, lr=1e-3)
    model, splits = cached_baseline("lenet300", "mnist", data_dir, train, runs_dir, subset=2000 if quick else None,
                                    log=log)
    val = (splits.val[0][:1000], splits.val[1][:1000]) if quick else splits.val
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    levels = 2 if quick else LEVELS
    strategies = {k: (o, {**s, "levels": levels} if "levels" in s else s) for k, (o, s) in STRATEGIES.items()}
    result = BenchResult("efficiency", {
        "quick": quick, "model": "lenet300", "space": "search_spaces/lenet300_mnist.yaml", "seeds": list(seeds),
        "budget": budget, "strategies": {k: {"optimizer": o, "settings": s} for k, (o, s) in strategies.items()},
        "hypervolume": f"over (accuracy, log10 size_bytes), reference ({search_bench.REFERENCE_ACCURACY}, "
                       f"log10 {fp32_bytes})", "val_rows": len(val[1]),
        "reach": "evaluations from the first trial (sensitivity phase included) to plain TPE's final hypervolume "
                 "of the same seed", "errors": "surrogate prediction at ask time vs measured, candidates it let "
                                               "through: accuracy absolute, size_bytes relative",
    })
    workdir = Path(runs_dir) / "bench-efficiency" / "runs"
    shutil.rmtree(workdir, ignore_errors=True)  # a bench measures from scratch
    space = search_bench.space()
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in strategies}
    for seed in seeds:
        curves: dict[str, list[float]] = {}
        for label, (optimizer, settings) in strategies.items():
            start = time.perf_counter()
            res = autocomp.search(model, val, space=space, optimizer=optimizer, optimizer_settings=settings,
                                  trials=budget, seed=seed, runs_dir=workdir, name=f"{label}-s{seed}", progress=False,
                                  latency=LatencySpec(repeats=1, warmup=0),
                                  calibration_data=(splits.train[0][:256], splits.train[1][:256]))
            wall = time.perf_counter() - start
            trials = sorted(res.trials, key=lambda t: t.id)
            curves[label] = search_bench.hv_curve(trials, fp32_bytes, list(range(1, len(trials) + 1)))
            row: dict[str, Any] = {"strategy": label, "seed": seed, "evals": len(trials),
                                   "hv_final": curves[label][-1] if trials else 0.0, "wall_s": wall,
                                   "eval_seconds": [t.seconds for t in trials]}
            sensitivity = workdir / f"{label}-s{seed}" / "sensitivity.json"
            if sensitivity.is_file():  # the gradient proxies' wall time (the fisher rows' whole sensitivity step)
                row["proxy_s"] = json.loads(sensitivity.read_text()).get("fisher", {}).get("seconds")
            row["eval_s_median"] = statistics.median(t.seconds for t in trials) if trials else None
            surrogate = workdir / f"{label}-s{seed}" / "surrogate.json"
            if surrogate.is_file():
                summary = json.loads(surrogate.read_text())["summary"]
                error = summary.get("error", {})
                row.update(acc_err_median=error.get("median", [None])[0], acc_err_p90=error.get("p90", [None])[0],
                           size_relerr_median=error.get("relative_median", [None, None])[1],
                           size_relerr_p90=error.get("relative_p90", [None, None])[1],
                           screened_share=summary["screened_share"])
            per[label].append(row)
            log(f"  seed {seed} {label:13s} {len(trials):4d} evals  hv {row['hv_final']:.4f}  wall {wall:.0f} s")
        target = curves["tpe"][-1]
        for label in strategies:
            row = per[label][-1]
            k = evals_to_reach(curves[label], target)
            row["evals_to_tpe_hv"] = k
            row["eval_s_to_tpe_hv"] = sum(row["eval_seconds"][:k]) if k else None
        # what is done so far, should the bench be stopped before the last seed
        partial = Path(runs_dir) / "bench-efficiency" / "partial.json"
        partial.write_text(json.dumps({k: [{c: v for c, v in r.items() if c != "eval_seconds"} for r in rows]
                                       for k, rows in per.items()}, indent=1) + "\n")
    for label in strategies:
        rows = per[label]
        reached = [r["evals_to_tpe_hv"] for r in rows]
        table = {"strategy": label, "reached": f"{sum(k is not None for k in reached)}/{len(rows)}"}
        for column in COLUMNS:
            if column not in table:
                table[column] = _median([r.get(column) for r in rows])
        result.rows.append(table)
    result.settings["per_seed"] = {k: [{c: v for c, v in r.items() if c != "eval_seconds"} for r in rows]
                                   for k, rows in per.items()}
    # the target: plain TPE's evaluations over the best guided optimizer's, median over seeds (a seed that
    # never reached it counts as the whole budget)
    def reduction(label: str) -> float:
        return statistics.median(budget / (r["evals_to_tpe_hv"] or budget) for r in per[label])

    best = max(GUIDED, key=reduction)
    result.target(f"best_guided_{best}_fewer_evals_than_tpe_to_its_final_hv", reduction(best), ">=", REDUCTION)
    knapsack_hv = statistics.median(r["hv_final"] for r in per["knapsack"])
    for label in GUIDED:
        hv = statistics.median(r["hv_final"] for r in per[label])
        result.target(f"{label}_final_hv_minus_knapsack", hv - knapsack_hv, ">=", 0.0)
    return result


def main(*, quick: bool, data_dir: str | None, runs_dir: str) -> BenchResult:
    """Run the bench and publish its table, targets and results.json."""
    return publish(run(quick=quick, data_dir=data_dir, runs_dir=runs_dir), COLUMNS, runs_dir)
