"""`autocomp bench latency`: hardware-aware search on ResNet-20 / CIFAR-10, in PyTorch and ONNX Runtime.

Per runtime (PyTorch eager fp32, ONNX Runtime fp32):
1. Prediction: the per-layer latency table (calibrated on the uncompressed model and 8 random policies)
   predicts 50 other random candidates of search_spaces/latency_resnet20.yaml (channel removal, low rank),
   each then measured whole: median absolute predicted-vs-measured error (target <= 10%).
2. A latency-constrained search (latency_ms <= 0.5x the baseline's measured latency, latency predicted by
   the table, short fine-tuning per candidate), its front measured whole; against it the uniform policy
   (one channel ratio everywhere, fine-tuned the same way) that fits the same measured budget, which is
   also the search's first candidate. Target: the search's best candidate within budget (measured) is
   more accurate on the test split than that uniform one.
Latency is timed on a quiet machine: the 50 candidates one after another in this process.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocomp.bench.common import BenchResult, publish
from autocomp.bench.search import SPACE_FILE
from autocomp.compress import compress
from autocomp.evaluate import CompressionEvaluator
from autocomp.latency_table import (
    Conditions,
    cache_path,
    calibrated_table,
    calibration_policies,
    measure_model,
    model_key,
)
from autocomp.metrics import accuracy, latency_batch
from autocomp.policy import Policy
from autocomp.session import prepare_baseline, read_spec, run_spec_search, spec_splits
from autocomp.space.spec import RunSpec

RUNTIMES = ("torch", "onnx")
COLUMNS = ("runtime", "candidates", "median_err_%", "p90_err_%", "max_err_%", "budget_ms", "search_ms",
           "search_test_acc", "uniform_ratio", "uniform_ms", "uniform_test_acc", "minutes")


def space_file() -> Path:
    return SPACE_FILE.with_name("latency_resnet20.yaml")


def _rows(splits) -> tuple[torch.Tensor, torch.Tensor]:
    return splits.train[0][:256], splits.train[1][:256]


def prediction_error(model, spec: RunSpec, splits, runtime: str, *, candidates: int, runs_dir: Path,
                     log=print) -> dict[str, Any]:
    """Median |predicted - measured| / measured over random candidates the table was not calibrated on
    (the table and its calibration are the ones the search under `runs_dir` made and cached)."""
    lat = spec.latency
    conditions = Conditions.here(runtime, lat.batch_size, lat.threads)
    bound = spec.space.bind(model)
    rows = _rows(splits)
    example, batch = splits.val[0][:1], latency_batch(splits.val[0], lat.batch_size)
    # the policies the search (seed 0) calibrated on: the fit is found in the cache, not made again
    table = calibrated_table(model, example, batch, conditions, calibration_policies(bound, 0), calibration=rows,
                             saved=[cache_path(runs_dir, conditions)], warmup=lat.warmup, repeats=lat.repeats,
                             log=log)
    key = model_key(model, example)

    rng = np.random.default_rng(1)  # other candidates than the calibration's
    errors, points = [], []
    for _ in range(candidates):
        policy = Policy.from_params(bound, bound.sample(rng))
        compressed = compress(model, policy, example=example, calibration=rows)
        predicted = table.predict(compressed, example, key)
        measured = statistics.median(measure_model(compressed, batch, conditions, calibration=rows[0],
                                                   warmup=lat.warmup, repeats=lat.repeats))
        errors.append(abs(predicted - measured) / measured)
        points.append({"predicted_ms": predicted, "measured_ms": measured})
    table.save(cache_path(runs_dir, conditions))
    errors.sort()
    return {"candidates": candidates, "median_err_%": 100 * errors[len(errors) // 2],
            "p90_err_%": 100 * errors[int(0.9 * (len(errors) - 1))], "max_err_%": 100 * errors[-1],
            "table_entries": len(table.entries), "calibration": table.calibrations[key], "points": points}


def uniform_params(bound, ratio: float) -> dict[str, Any]:
    """One channel ratio for every layer (each layer's nearest allowed value), nothing else compressed."""
    return {p.name: p.domain.nearest(ratio) if p.knob == "channels.ratio" else p.least_compressive()
            for p in bound.params}


def uniform_at_budget(model, spec: RunSpec, splits, log=print) -> dict[str, Any]:
    """The least-compressed uniform policy whose measured latency is within half the uncompressed model's,
    fine-tuned as the search's candidates are, with its test accuracy."""
    evaluator = CompressionEvaluator(model, splits.val, latency=replace(spec.latency, table=False),
                                     calibration=_rows(splits), train=splits.train, finetune=spec.finetune)
    bound = spec.space.bind(model)
    budget = 0.5 * evaluator.measured_latency(model)["latency_ms"]
    for ratio in np.arange(0.125, 0.76, 0.125):
        params = uniform_params(bound, float(ratio))
        policy = Policy.from_params(bound, params)
        compressed = compress(model, policy, example=evaluator.example, calibration=evaluator.calibration)
        measured = evaluator.measured_latency(compressed)["latency_ms"]
        log(f"  uniform channels {ratio:.3f}: {measured:.3f} ms (budget {budget:.3f})")
        if measured <= budget:
            tuned = evaluator.compressed(policy)
            return {"uniform_ratio": float(ratio), "uniform_ms": measured, "uniform_budget_ms": budget,
                    "uniform_params": params, "uniform_val_acc": accuracy(tuned, splits.val),
                    "uniform_test_acc": accuracy(tuned, splits.test)}
    return {"uniform_ratio": None, "uniform_ms": None, "uniform_budget_ms": budget, "uniform_params": None,
            "uniform_val_acc": 0.0, "uniform_test_acc": 0.0}


def constrained_search(spec: RunSpec, runtime: str, *, trials: int, workers: int, data_dir: str | None,
                       out: Path, initial: list[dict[str, Any]]) -> dict[str, Any]:
    """TPE under latency_ms <= 0.5x, started (as AMC-style searches are) from the uniform policy."""
    name = f"search-{runtime}"
    shutil.rmtree(out / name, ignore_errors=True)
    settings = {**spec.optimizer.settings.get("tpe", {}), "initial": initial}
    result = run_spec_search(spec, optimizer="tpe", optimizer_settings=settings, trials=trials, seed=0,
                             runs_dir=out, name=name, data_dir=data_dir, progress=False,
                             execution={"workers": workers})
    budget = 0.5 * result.baseline["latency_ms"]  # the baseline's measured latency
    within = [t for t in result.pareto if result.latency_measured.get(t.id, float("inf")) <= budget]
    best = max(within, key=lambda t: t.metrics["accuracy"], default=None)
    info = json.loads((result.run_dir / "run.json").read_text())
    return {
        "budget_ms": budget, "baseline_ms": result.baseline["latency_ms"], "trials": len(result.trials),
        "front": len(result.pareto), "front_within_budget_measured": len(within),
        "front_prediction": result.latency_prediction, "search_trial": best.id if best else None,
        "search_ms": result.latency_measured[best.id] if best else None,
        "search_predicted_ms": best.metrics["latency_ms"] if best else None,
        "search_val_acc": best.metrics["accuracy"] if best else 0.0,
        "search_test_acc": result.test_accuracy.get(best.id, 0.0) if best else 0.0,
        "search_policy": best.policy if best else None, "calibration": info.get("latency_calibration"),
        "baseline_test_acc": result.baseline.get("test_accuracy"), "run_dir": str(result.run_dir),
    }


def main(quick: bool = False, data_dir: str | None = None, runs_dir: str = "runs") -> BenchResult:
    out = Path(runs_dir) / "bench-latency"
    spec = read_spec(space_file())
    candidates, trials, workers = (6, 6, 2) if quick else (50, 30, 2)
    if quick:  # every code path in a few minutes: a short baseline, tiny fine-tuning
        spec = replace(spec, train=replace(spec.train, epochs=1), finetune=replace(spec.finetune, steps=3),
                       latency=replace(spec.latency, repeats=5, warmup=1))
    result = BenchResult("latency", {"space": str(space_file()), "candidates": candidates, "trials": trials,
                                     "workers": workers, "latency": vars(spec.latency), "quick": quick})
    splits = spec_splits(spec, data_dir)
    (out / "baseline").mkdir(parents=True, exist_ok=True)
    model = prepare_baseline(spec, splits, out / "baseline", out / ".cache")  # the one the searches load
    for runtime in RUNTIMES:
        start = time.perf_counter()
        spec_rt = replace(spec, latency=replace(spec.latency, runtime=runtime))
        uniform = uniform_at_budget(model, spec_rt, splits)
        initial = [uniform["uniform_params"]] if uniform["uniform_params"] else []
        search = constrained_search(spec_rt, runtime, trials=trials, workers=workers, data_dir=data_dir, out=out,
                                    initial=initial)
        errors = prediction_error(model, spec_rt, splits, runtime, candidates=candidates, runs_dir=out)
        row = {"runtime": runtime, **errors, **search, **uniform, "minutes": (time.perf_counter() - start) / 60}
        result.rows.append(row)
        print(f"{runtime}: prediction median error {row['median_err_%']:.1f}% over {candidates}; search "
              f"{row['search_test_acc']:.4f} at {row['search_ms']} ms vs uniform {row['uniform_test_acc']:.4f} at "
              f"{row['uniform_ms']} ms (budget {row['budget_ms']:.3f} ms)")
        result.target(f"{runtime}_median_prediction_error_%", row["median_err_%"], "<=", 10.0)
        result.target(f"{runtime}_search_minus_uniform_test_acc", row["search_test_acc"] - row["uniform_test_acc"],
                      ">", 0.0)
    return publish(result, COLUMNS, runs_dir)


__all__ = ["main", "prediction_error", "uniform_at_budget", "uniform_params"]
