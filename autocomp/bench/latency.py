"""`autocomp bench latency`: hardware-aware search on ResNet-20 / CIFAR-10, in PyTorch and ONNX Runtime.

Per runtime (PyTorch eager fp32, ONNX Runtime fp32):
1. Prediction: the per-layer latency table (calibrated on the uncompressed model and 8 random policies)
   predicts 50 other random candidates of search_spaces/latency_resnet20.yaml (channel removal, residual
   blocks removed), each then measured whole: median absolute predicted-vs-measured error (target <= 10%).
2. A latency-constrained search: TPE maximizing validation accuracy under latency_ms <= 0.5x the
   baseline's measured latency (predicted by the table; a candidate predicted over it is skipped before
   fine-tuning and not counted), short fine-tuning for each of 60 candidates, started from the
   least-compressed uniform policy (one channel ratio everywhere, no block removed) within the budget.
   At the end the search's 5 most accurate distinct candidates, the whole uniform ladder and the
   uncompressed model are timed interleaved; the budget is half the uncompressed median of those rounds,
   the search's answer its most accurate candidate within it, the uniform reference the least-compressed
   ladder policy within it.
   Target: the answer is more accurate on the test split than the uniform reference.
Latency is timed on a quiet machine: the 50 candidates one after another in this process.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from autocomp.bench.common import BenchResult, finished_run, publish
from autocomp.bench.search import SPACE_FILE
from autocomp.compress import compress
from autocomp.config import RunSpec
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
from autocomp.runner import Trial
from autocomp.session import prepare_baseline, read_spec, run_spec_search, spec_splits
from autocomp.store import RunStore

RUNTIMES = ("torch", "onnx")
COLUMNS = ("runtime", "candidates", "median_err_%", "p90_err_%", "max_err_%", "evaluated", "scored", "budget_ms",
           "search_ms", "search_test_acc", "search_uniform_ratio", "uniform_ratio", "uniform_ms", "uniform_test_acc",
           "minutes")


def space_file() -> Path:
    return SPACE_FILE.with_name("latency_resnet20.yaml")


def _rows(splits) -> tuple[torch.Tensor, torch.Tensor]:
    return splits.train[0][:256], splits.train[1][:256]


def prediction_error(model, spec: RunSpec, splits, runtime: str, *, candidates: int, runs_dir: Path,
                     scale: float = 1.0, log=print) -> dict[str, Any]:
    """Median |predicted - measured| / measured over random candidates the table was not calibrated on.

    The table and its calibration are the ones the search under `runs_dir` made and cached, `scale` the
    anchor that search set from the uncompressed model timed then.
    """
    lat = spec.latency
    conditions = Conditions.here(runtime, lat.batch_size, lat.threads)
    bound = spec.space.bind(model)
    rows = _rows(splits)
    example, batch = splits.val[0][:1], latency_batch(splits.val[0], lat.batch_size)
    # the policies the search (seed 0) calibrated on: the fit is found in the cache, not made again
    table = calibrated_table(model, example, batch, conditions, calibration_policies(bound, 0), calibration=rows,
                             saved=[cache_path(runs_dir, conditions)], warmup=lat.warmup, repeats=lat.repeats,
                             log=log)
    table.scale = scale
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
    return {"candidates": candidates, "anchor_scale": scale, "median_err_%": 100 * errors[len(errors) // 2],
            "p90_err_%": 100 * errors[int(0.9 * (len(errors) - 1))], "max_err_%": 100 * errors[-1],
            "table_entries": len(table.entries), "calibration": table.calibrations[key], "points": points}


def uniform_params(bound, ratio: float) -> dict[str, Any]:
    """One channel ratio for every layer (each layer's nearest allowed value), nothing else compressed."""
    return {p.name: p.domain.nearest(ratio) if p.knob == "channels.ratio" else p.least_compressive()
            for p in bound.params}


def measuring_evaluator(model, spec: RunSpec, splits) -> CompressionEvaluator:
    """Latency timed whole (no table), candidates fine-tuned as the search's are."""
    return CompressionEvaluator(model, splits.val, latency=replace(spec.latency, table=False),
                                calibration=_rows(splits), train=splits.train, finetune=spec.finetune)


LADDER = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)  # the uniform policies' channel ratios, least compressed first


def uniform_ladder(bound) -> dict[str, dict[str, Any]]:
    """Name -> the parameters of each uniform policy, least compressed first."""
    return {f"uniform {r:.3f}": uniform_params(bound, r) for r in LADDER}


def uniform_seed(model, spec: RunSpec, splits, log=print) -> dict[str, Any] | None:
    """The search's first candidate: the least-compressed uniform policy within half the uncompressed latency.

    The ladder and the uncompressed model are timed interleaved.
    """
    evaluator = measuring_evaluator(model, spec, splits)
    bound = spec.space.bind(model)
    ladder = uniform_ladder(bound)
    timed = interleaved_latency(evaluator, {"baseline": model, **_compressed(model, bound, ladder, evaluator)},
                                rounds=3)
    log("  uniform seed, timed interleaved: " + ", ".join(f"{k} {v:.3f} ms" for k, v in timed.items()))
    return next((ladder[n] for n in ladder if timed[n] <= 0.5 * timed["baseline"]), None)


def _compressed(model, bound, params: dict[str, dict[str, Any]], evaluator: CompressionEvaluator) -> dict[str, Any]:
    return {name: compress(model, Policy.from_params(bound, p), example=evaluator.example,
                           calibration=evaluator.calibration) for name, p in params.items()}


def interleaved_latency(evaluator: CompressionEvaluator, models: dict[str, Any], rounds: int = 5) -> dict[str, float]:
    """Median latency (ms) of each model over `rounds` rounds that time every model once in turn.

    So a change in the machine's load reaches all of them alike (the same model timed minutes apart drifts
    by several percent here, the size of the margins compared).
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, compressed in models.items():
            times[name] += evaluator.latency_times(compressed)
    return {name: statistics.median(t) for name, t in times.items()}


def constrained_search(spec: RunSpec, runtime: str, *, trials: int, workers: int, data_dir: str | None,
                       out: Path, initial: list[dict[str, Any]]) -> Any:
    """TPE maximizing accuracy under latency_ms <= 0.5x (AMC's resource-constrained setting).

    Started from the uniform policy; candidates predicted over the budget are skipped before fine-tuning. A
    finished search of the same file and budget is read back instead, so the comparison can be redone alone.
    """
    run_dir = out / f"search-{runtime}"
    if finished_run(run_dir, spec, trials):
        pareto = json.loads((run_dir / "pareto.json").read_text())
        return SimpleNamespace(trials=[Trial.from_record(r) for r in RunStore(run_dir).trials()], run_dir=run_dir,
                               latency_prediction=pareto.get("latency_prediction"), reused=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    settings = {**spec.optimizer.settings.get("tpe", {}), "initial": initial}
    return run_spec_search(spec, optimizer="tpe", optimizer_settings=settings, trials=trials, seed=0,
                           runs_dir=out, name=run_dir.name, data_dir=data_dir, progress=False,
                           execution={"workers": workers})


def compare_at_budget(model, spec: RunSpec, splits, result, *, top: int = 5, log=print) -> dict[str, Any]:
    """The search's answer against the uniform reference at half the uncompressed latency, on the test split.

    The search's `top` distinct feasible trials by validation accuracy, the uniform ladder and the
    uncompressed model are timed interleaved. The budget is half the uncompressed model's median in these
    rounds; the search's answer is its most accurate (validation) candidate within it, the uniform
    reference the least-compressed ladder policy within it; both are measured on the test split.
    """
    evaluator = measuring_evaluator(model, spec, splits)
    scored = sorted((t for t in result.trials if t.feasible and not t.copied),
                    key=lambda t: -t.metrics["accuracy"])[:top]
    bound = spec.space.bind(model)
    ladder = uniform_ladder(bound)
    candidates = {f"trial {t.id}": t.params for t in scored}
    timed = interleaved_latency(evaluator, {"baseline": model,
                                            **_compressed(model, bound, {**candidates, **ladder}, evaluator)})
    budget = 0.5 * timed["baseline"]
    log("  timed interleaved: " + ", ".join(f"{k} {v:.3f} ms" for k, v in timed.items()) + f" (budget {budget:.3f})")
    best = next((t for t in scored if timed[f"trial {t.id}"] <= budget), None)  # scored: by validation accuracy
    uniform = next((n for n in ladder if timed[n] <= budget), None)

    def tested(policy: Policy | None) -> tuple[float, float]:
        if policy is None:
            return 0.0, 0.0
        tuned = evaluator.compressed(policy)
        return accuracy(tuned, splits.val), accuracy(tuned, splits.test)

    search_val, search_test = tested(Policy.from_params(bound, best.params) if best else None)
    uniform_val, uniform_test = tested(Policy.from_params(bound, ladder[uniform]) if uniform else None)
    ratios = {v for k, v in best.params.items() if k.endswith("channels.ratio")} if best else set()
    info = json.loads((result.run_dir / "run.json").read_text())
    return {
        "budget_ms": budget, "baseline_ms": timed["baseline"], "trials": len(result.trials),
        "evaluated": sum(t.evaluated for t in result.trials),
        "scored": sum(t.status == "complete" and not t.copied for t in result.trials),
        "skipped_infeasible": sum(t.status == "infeasible" and not t.copied for t in result.trials),
        "reused_search": getattr(result, "reused", False), "timed_interleaved_ms": timed,
        "front_prediction": result.latency_prediction,
        "search_trial": best.id if best else None, "search_ms": timed[f"trial {best.id}"] if best else None,
        "search_predicted_ms": best.metrics["latency_ms"] if best else None,
        "search_val_acc": search_val, "search_test_acc": search_test, "search_policy": best.policy if best else None,
        # the answer's channel ratio when it is one for every group (its other knobs, removed blocks, may differ)
        "search_uniform_ratio": next(iter(ratios)) if len(ratios) == 1 else None,
        "uniform_ratio": float(uniform.split()[1]) if uniform else None,
        "uniform_ms": timed[uniform] if uniform else None, "uniform_val_acc": uniform_val,
        "uniform_test_acc": uniform_test,
        "calibration": info.get("latency_calibration"), "anchor": info.get("latency_anchor"),
        "baseline_test_acc": accuracy(model, splits.test), "run_dir": str(result.run_dir),
    }


def main(quick: bool = False, data_dir: str | None = None, runs_dir: str = "runs") -> BenchResult:
    """Run the latency bench (`quick`: every code path in a few minutes) and publish its results."""
    out = Path(runs_dir) / "bench-latency"
    spec = read_spec(space_file())
    candidates, trials, workers = (6, 6, 2) if quick else (50, 60, 2)  # trials: fine-tuned candidates
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
        seed = uniform_seed(model, spec_rt, splits)
        searched = constrained_search(spec_rt, runtime, trials=trials, workers=workers, data_dir=data_dir, out=out,
                                      initial=[seed] if seed else [])
        compared = compare_at_budget(model, spec_rt, splits, searched)
        errors = prediction_error(model, spec_rt, splits, runtime, candidates=candidates, runs_dir=out,
                                  scale=compared["anchor"]["scale"])
        row = {"runtime": runtime, **errors, **compared, "minutes": (time.perf_counter() - start) / 60}
        result.rows.append(row)
        print(f"{runtime}: prediction median error {row['median_err_%']:.1f}% over {candidates}; search "
              f"{row['search_test_acc']:.4f} at {row['search_ms']} ms vs uniform {row['uniform_ratio']} "
              f"{row['uniform_test_acc']:.4f} at {row['uniform_ms']} ms (budget {row['budget_ms']:.3f} ms, "
              "timed interleaved)")
        result.target(f"{runtime}_median_prediction_error_%", row["median_err_%"], "<=", 10.0)
        result.target(f"{runtime}_search_minus_uniform_test_acc", row["search_test_acc"] - row["uniform_test_acc"],
                      ">", 0.0)
    return publish(result, COLUMNS, runs_dir)


__all__ = ["compare_at_budget", "interleaved_latency", "main", "prediction_error", "uniform_params",
           "uniform_seed"]
