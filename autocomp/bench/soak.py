"""`autocomp bench soak`: 10,000 trials through the search loop, in process and on Ray workers.

The candidates are scored by the analytic fake evaluator (autocomp.testing.fake: microseconds each), so
what is exercised is everything around an evaluation: the random optimizer's asks, the executor's
dispatch and collection, the journal append (fsynced) and checkpoint after every trial, pareto.json at the
end. The evaluator also reports its process's resident memory and open file descriptors, so the workers
are watched from inside; the driver samples itself every `every` trials.

Reported per executor: the slope of resident memory against trials (least squares over the samples after
the first 10%, MB per 1,000 trials) for the driver and each worker; the driver's Python heap left once the
run returns and its trials are dropped (tracemalloc; the driver holds every trial while it runs, for the
front and the optimizers, so its resident memory rises with them by design); the growth of open file
descriptors; and whether the journal holds
every trial exactly once and pareto.json is exactly the non-dominated set of the journal (recomputed here
by a sort-and-sweep, not by the code under test).
"""

from __future__ import annotations

import gc
import shutil
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from autocomp.bench.common import BenchResult, publish
from autocomp.execution import InProcessExecutor
from autocomp.objective import as_objectives
from autocomp.optimizers import make_optimizer
from autocomp.runner import JOURNAL_COPY, run_loop, write_front
from autocomp.store import RunStore
from autocomp.testing.conformance import reference_space
from autocomp.testing.fake import AnalyticEvaluator, full_size, process_usage

COLUMNS = ("executor", "trials", "seconds", "trials_per_s", "driver_mb_per_1k", "driver_heap_left_kb",
           "driver_fd_growth", "worker_mb_per_1k", "worker_fd_growth", "workers", "journal_ok", "pareto_ok", "front")
OBJECTIVES = as_objectives(("accuracy", "size_bytes"))
MB_PER_1K_BOUND = 1.0  # "flat": under 1 MB per 1,000 trials, i.e. < 1 kB kept per trial
HEAP_LEFT_KB_BOUND = 256.0  # what 10,000 trials may leave in the driver's heap after the run: < 26 B each
QUICK = (400, 20)  # --quick: trials per executor, sampled every


class _SampledStore(RunStore):
    """A run store that samples the driver's memory and descriptors every `every` appends."""

    every, appended = 100, 0
    samples: list[dict[str, float]]

    def append(self, record: dict[str, Any]) -> None:
        super().append(record)
        self.appended += 1
        if self.appended % self.every == 0:
            self.samples.append({"trials": self.appended, **process_usage()})


def slope_per_1k(trials: list[float], values: list[float]) -> float:
    """Least-squares slope of values against trials, per 1,000 trials, after the first 10% (warm-up)."""
    start = int(0.1 * len(trials))
    x, y = np.asarray(trials[start:], float), np.asarray(values[start:], float)
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0] * 1000)


def growth(values: list[float]) -> float:
    """Most minus the first after warm-up (descriptors are counts: any leak shows as a rise)."""
    tail = values[int(0.1 * len(values)):]
    return float(max(tail) - tail[0]) if tail else 0.0


def sweep_front(records: list[dict[str, Any]]) -> set[int]:
    """Non-dominated (max accuracy, min size) trial ids by sorting, independently of autocomp.pareto."""
    points = sorted((-r["metrics"]["accuracy"], r["metrics"]["size_bytes"], r["id"]) for r in records)
    front, best_size, last = set(), float("inf"), None
    for neg_acc, size, trial_id in points:
        if size < best_size or (neg_acc, size) == last:  # a duplicate of a front point is on it too
            front.add(trial_id)
            best_size, last = min(best_size, size), (neg_acc, size)
    return front


def soak(executor_name: str, run_dir: Path, trials: int, every: int, workers: int) -> dict[str, Any]:
    """Run `trials` random-search trials on one executor; returns its row: rate, memory and fd growth, checks."""
    space = reference_space()
    evaluator = AnalyticEvaluator(space.layers)
    shutil.rmtree(run_dir, ignore_errors=True)
    store = _SampledStore.create(run_dir, space_yaml="# the conformance reference space\n", run_info={})
    store.every, store.samples = every, [{"trials": 0, **process_usage()}]
    if executor_name == "inprocess":
        executor = InProcessExecutor(evaluator)
    else:
        from autocomp.execution.ray_executor import RayExecutor

        executor = RayExecutor(evaluator, workers=workers, threads=1, log_dir=run_dir / "ray-logs")
    optimizer = make_optimizer("random", space, directions=[o.direction for o in OBJECTIVES], seed=0)
    tracemalloc.start()  # the driver's Python heap: what the run leaves behind once its trials are dropped
    gc.collect()
    heap_before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    try:
        done = run_loop(store, space, optimizer, executor, OBJECTIVES, (), trials, progress=False)
        seconds = time.perf_counter() - start
        write_front(store, done, OBJECTIVES, {"accuracy": 0.99, "size_bytes": full_size(space)}, title="soak")
        del done
        gc.collect()
        heap_left_kb = (tracemalloc.get_traced_memory()[0] - heap_before) / 1024
    finally:
        tracemalloc.stop()
        executor.close()
        store.close()
    records = RunStore(run_dir).trials()
    by_worker: dict[float, list[dict[str, float]]] = {}
    for r in records:
        by_worker.setdefault(r["metrics"]["pid"], []).append({"trials": r["id"], **r["metrics"]})
    worker_slopes = [slope_per_1k([s["trials"] for s in rows], [s["rss_mb"] for s in rows])
                     for rows in by_worker.values()]
    worker_fds = [growth([s["open_fds"] for s in rows]) for rows in by_worker.values()]
    samples = store.samples
    pareto = RunStore(run_dir).read_json("pareto.json")
    return {
        "executor": executor_name if executor_name == "inprocess" else f"ray {workers}x1", "trials": len(records),
        "seconds": seconds, "trials_per_s": len(records) / seconds,
        "driver_mb_per_1k": slope_per_1k([s["trials"] for s in samples], [s["rss_mb"] for s in samples]),
        "driver_fd_growth": growth([s["open_fds"] for s in samples]), "driver_heap_left_kb": heap_left_kb,
        "worker_mb_per_1k": max(worker_slopes), "worker_fd_growth": max(worker_fds), "workers": len(by_worker),
        # every id once; `trials` evaluated (an ask repeating an earlier one is answered from the journal)
        "journal_ok": sorted(r["id"] for r in records) == list(range(len(records)))
        and sum(not r["worker"].startswith(JOURNAL_COPY) for r in records) == trials
        and all(r["status"] == "complete" for r in records),
        "pareto_ok": {t["id"] for t in pareto["trials"]}
        == sweep_front([r for r in records if not r["worker"].startswith(JOURNAL_COPY)]),
        "front": len(pareto["trials"]),
        "driver_rss_mb": [[s["trials"], round(s["rss_mb"], 2)] for s in samples],
        "driver_open_fds": [[s["trials"], s["open_fds"]] for s in samples],
    }


def main(quick: bool = False, data_dir: str | None = None, runs_dir: str = "runs") -> BenchResult:
    """Run the soak on each executor (`quick`: fewer trials) and publish its results."""
    trials, every = QUICK if quick else (10_000, 100)
    out = Path(runs_dir) / "bench-soak"
    result = BenchResult("soak", {"trials": trials, "sample_every": every, "optimizer": "random",
                                  "evaluator": "analytic fake (autocomp.testing.fake)", "quick": quick})
    # a short run first, so that one-time costs (imports, matplotlib's font cache) are not counted as kept
    soak("inprocess", out / "warm-up", max(trials // 20, 50), every, workers=1)
    for name in ("inprocess", "ray"):
        row = soak(name, out / name, trials, every, workers=2)
        result.rows.append(row)
        key = row["executor"].replace(" ", "_")
        result.target(f"{key}_journal_and_pareto_correct", float(row["journal_ok"] and row["pareto_ok"]), ">=", 1)
        # the driver holds every trial while it runs (the front and the optimizers need them): its resident
        # memory rises with them by design; a leak is what its heap still holds once they are dropped
        result.target(f"{key}_driver_heap_left_kb", row["driver_heap_left_kb"], "<", HEAP_LEFT_KB_BOUND)
        if name == "ray":  # in process the worker is the driver
            result.target(f"{key}_worker_mb_per_1k_trials", row["worker_mb_per_1k"], "<", MB_PER_1K_BOUND)
        result.target(f"{key}_fd_growth", max(row["driver_fd_growth"], row["worker_fd_growth"]), "<=", 0)
    return publish(result, COLUMNS, runs_dir)


__all__ = ["main", "slope_per_1k", "soak", "sweep_front"]
