"""`autocomp finalize`: retrain chosen Pareto points longer, select one on validation, test once, export.

The search scores candidates after short fine-tuning; the points worth shipping then get what Deep
Compression gave its models: longer retraining (distilled from the original when kd_alpha > 0), pruning
reached in steps with retraining between them (`iterations`). Every choice is made on the validation split:
which points to retrain (spread along the front, or the ones named), and which retrained point is
`selected` (the smallest within `tolerance` of the uncompressed model's validation value of the task's
primary metric: accuracy for classification, perplexity for a language model...). Only then is
the test split measured, once per retrained point, and reported as it falls. Each finalized model is
written as a packed artifact whose length is the size reported for it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.artifacts import artifact_meta, pack_model, write_bytes
from autocomp.compress import compress
from autocomp.devices import on_device, resolve_device
from autocomp.errors import RunError
from autocomp.finetune import FineTuneSpec, finetune_as_evaluated
from autocomp.metrics import count_params
from autocomp.policy import Policy
from autocomp.primitives import Prune
from autocomp.report import metric_text, pareto_table
from autocomp.session import load_run_calibration, load_run_model, load_run_splits, run_info, run_spec, run_task
from autocomp.store import write_atomic
from autocomp.tasks import CLASSIFICATION, Task

FINAL = "final.json"


def pruning_only(policy: Policy, fraction: float) -> Policy:
    """The policy's unstructured pruning at `fraction` of each ratio, nothing else (a step towards it)."""
    return Policy.of({name: tuple(replace(c, ratio=c.ratio * fraction) for c in configs if isinstance(c, Prune))
                      for name, configs in policy.layers})


def choose(front: list[dict[str, Any]], top: int, ids: list[int] | None) -> list[dict[str, Any]]:
    """The trials named by `ids`, or `top` points spread evenly along the front (both ends included)."""
    if ids:
        by_id = {t["id"]: t for t in front}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise RunError(f"trials {missing} are not on the Pareto front (front: {sorted(by_id)})")
        return [by_id[i] for i in ids]
    if top >= len(front):
        return list(front)
    if top == 1:
        return [front[0]]
    return [front[round(k * (len(front) - 1) / (top - 1))] for k in range(top)]


def retrain(model: nn.Module, policy: Policy, train: tuple[torch.Tensor, torch.Tensor], spec: FineTuneSpec, *,
            iterations: int, calibration: tuple[torch.Tensor, torch.Tensor],
            task: Task = CLASSIFICATION, device: torch.device | None = None, precision: str = "fp32") -> nn.Module:
    """Iterative prune and retrain, ending with the whole policy applied and retrained.

    Iterations-1 steps of pruning only (ratios i/iterations of the policy's), each retrained for
    epochs/iterations, then the whole policy and retraining for the rest. Compression runs on the CPU,
    retraining on `device` at `precision`; the model is returned on the CPU.
    """
    where = device or torch.device("cpu")
    teacher = on_device(model, where)

    def tuned(net: nn.Module, epochs: int) -> nn.Module:
        return finetune_as_evaluated(net.to(where), train, replace(spec, epochs=epochs), teacher=teacher,
                                     task=task, device=where, precision=precision).cpu()

    current, step_epochs = model, max(1, spec.epochs // iterations)
    for i in range(1, iterations):
        current = tuned(compress(current, pruning_only(policy, i / iterations), example=calibration[0][:1],
                                 calibration=calibration), step_epochs)
    final = compress(current, policy, example=calibration[0][:1], calibration=calibration)
    return tuned(final, max(1, spec.epochs - step_epochs * (iterations - 1)))


def select(rows: list[dict[str, Any]], baseline_value: float, tolerance: float, metric: str = "accuracy",
           maximize: bool = True) -> dict[str, Any]:
    """The retrained point to ship, chosen on validation only.

    The smallest whose validation `metric` is within `tolerance` (in the metric's units) of the uncompressed
    model's; if none is, the best by that metric.
    """
    sign = 1.0 if maximize else -1.0
    within = [r for r in rows if sign * r[metric] >= sign * baseline_value - tolerance]
    if within:
        return min(within, key=lambda r: r["size_bytes"])
    return max(rows, key=lambda r: sign * r[metric])



def finalize_run(run_dir: str | os.PathLike, *, top: int = 3, trial_ids: list[int] | None = None,
                 epochs: int = 10, lr: float | None = None, kd_alpha: float | None = None, iterations: int = 1,
                 schedule: str = "cosine", optimizer: str | None = None, tolerance: float = 0.001,
                 log=print) -> list[dict[str, Any]]:
    """Retrain the chosen Pareto points of a finished CLI run, select one on validation, test, export.

    Writes final.json: the retrained rows (the task's validation metrics, then its test metrics measured
    after the selection), `selected` (the id `select` chose with `tolerance` on the task's primary metric,
    on validation) and the uncompressed baseline measured the same way (the model as trained).
    `schedule` "cosine" (default) lets each retraining step's lr decay to 0, so the weights settle at
    the end instead of stopping mid-stride at a constant lr; "constant" keeps the run's lr throughout.
    `optimizer` (adam | sgd, with momentum 0.9) defaults to the run's finetune.optimizer.
    """
    run_dir = Path(run_dir)
    info, spec = run_info(run_dir), run_spec(run_dir)
    try:
        pareto = json.loads((run_dir / "pareto.json").read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir}: no pareto.json yet (the run has not finished)") from None
    chosen = choose(pareto["trials"], top, trial_ids)
    task = run_task(run_dir)
    metric = task.PRIMARY
    maximize = task.METRICS[metric] == "maximize"
    device = resolve_device(spec.execution.device)  # retrained and measured where the search ran, at its precision
    precision = spec.execution.precision

    def measure(net: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        return task.evaluate(on_device(net, device), data, device=device, precision=precision)
    splits = load_run_splits(run_dir)
    model, calibration = load_run_model(run_dir), load_run_calibration(run_dir)
    tuning = replace(spec.finetune, epochs=epochs, steps=None, early_stop="none", schedule=schedule,
                     optimizer=optimizer or spec.finetune.optimizer,
                     lr=lr if lr is not None else spec.finetune.lr,
                     kd_alpha=kd_alpha if kd_alpha is not None else spec.finetune.kd_alpha)
    fp32_bytes = 4 * count_params(model)[0]
    out_dir = run_dir / "final"
    out_dir.mkdir(exist_ok=True)
    rows, models = [], {}
    for trial in chosen:
        start = time.perf_counter()
        policy = Policy.from_dict(trial["policy"])
        final = retrain(model, policy, splits.train, tuning, iterations=iterations, calibration=calibration,
                        task=task, device=device, precision=precision)
        meta = artifact_meta(info["model_ref"], policy, info["input_shape"])
        path = out_dir / f"trial-{trial['id']}.acz"
        size = write_bytes(path, pack_model(final, meta, entropy=info["signature"].get("entropy", False)))
        row = {"id": trial["id"], "policy": trial["policy"], "size_bytes": size,
               "compression_ratio": fp32_bytes / size, **measure(final, splits.val),
               f"search_{metric}": trial["metrics"][metric], "artifact": str(path),
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        models[row["id"]] = final
        log(f"trial {trial['id']}: val {metric} {row[f'search_{metric}']:.4f} -> {row[metric]:.4f}, "
            f"{size:,} B ({row['compression_ratio']:.1f}x) -> {path}")
    # the uncompressed model's packed file, as the search's baseline row: every size here is a file's length
    unpacked = len(pack_model(model, artifact_meta(info["model_ref"], Policy.of({}), info["input_shape"]),
                              entropy=info["signature"].get("entropy", False)))
    baseline = {**measure(model, splits.val), "size_bytes": unpacked,
                "compression_ratio": fp32_bytes / unpacked}
    selected = select(rows, baseline[metric], tolerance, metric, maximize)
    # the choice is made: now, and only now, the test split (once per model, reported as it falls)
    for row, tested in [(baseline, model), *((row, models[row["id"]]) for row in rows)]:
        row.update({f"test_{name}": value for name, value in measure(tested, splits.test).items()})
    sign = 1.0 if maximize else -1.0
    within = sign * selected[metric] >= sign * baseline[metric] - tolerance
    rule = "the smallest within" if within else "none is within"
    log(f"selected on validation ({rule} {tolerance:.2g} of the baseline's {metric} "
        f"{metric_text(metric, baseline[metric])}{'' if within else ': the best'}): trial {selected['id']}, "
        f"{selected['compression_ratio']:.1f}x, val {metric_text(metric, selected[metric])}, "
        f"test {metric_text(metric, selected[f'test_{metric}'])} (baseline test "
        f"{metric_text(metric, baseline[f'test_{metric}'])})")
    doc = {"settings": {"epochs": epochs, "iterations": iterations, "tolerance": tolerance,
                        "finetune": vars(tuning)},
           "task": task.NAME, "metric": metric,
           "baseline": baseline, "selected": selected["id"],
           "selection": f"on validation: the smallest retrained point within tolerance of the baseline's "
                        f"validation {metric}, else the best; test measured after",
           "trials": rows}
    write_atomic(run_dir / FINAL, json.dumps(doc, indent=1) + "\n")
    log(final_table(doc))
    return rows


def final_table(doc: dict[str, Any]) -> str:
    """The finalized rows after the uncompressed baseline (both measured as they are), and the selection."""
    text = ("finalized (retrained; every row, the baseline too, measured on validation, then once on test):\n"
            + pareto_table(doc["trials"], baseline=doc["baseline"], metric=doc.get("metric", "accuracy")))
    if doc.get("selected") is not None:
        text += f"\nselected on validation: trial {doc['selected']}"
    return text


__all__ = ["FINAL", "choose", "final_table", "finalize_run", "pruning_only", "retrain", "select"]
