"""`autocomp bench deep-compression`: reach Deep Compression's LeNet results by search, not by hand.

Han et al. 2016 (Tables 2-3) pruned, quantized and Huffman-coded LeNet-300-100 40x (1.64% -> 1.58% test
error) and LeNet-5 39x (0.80% -> 0.74%), choosing each layer's settings by hand and retraining. Here, per
model: the bench's own seeded baseline, a TPE search over per-layer pruning ratios and bit widths
(search_spaces/deep_compression_<model>.yaml: each candidate fine-tuned briefly with distillation,
weak ones stopped by successive halving, Huffman-coded artifacts, 2 Ray workers), then `finalize` of front
points spread over a wide band below the baseline's validation accuracy (retraining recovers 1 pt and
more), iterative prune-and-retrain with distillation. Every choice is made on validation: which points to
retrain, and which retrained point is reported (finalize's selection: the smallest within 0.1 pt of the
baseline's validation accuracy). The test split is measured once for the retrained points, after that
choice, and the target is judged on the selected point's test error as it falls. The table is the selected
point's per-layer breakdown, read from its artifact.

A distillation row (Hinton et al. 2015, scaled down): a 784-30-10 student trained on labels only and the
same student trained on LeNet-300-100's softened outputs, same epochs and seed; test errors of both.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp.bench.common import BenchResult, format_table, publish
from autocomp.bench.search import SPACE_FILE
from autocomp.finalize import finalize_run
from autocomp.finetune import FineTuneSpec, finetune
from autocomp.metrics import accuracy, count_params
from autocomp.packed import tensor_report
from autocomp.session import load_run_model, load_run_splits, read_spec, run_spec_search

PAPER = {"lenet300": {"ratio": 40.0, "error_before": 0.0164, "error_after": 0.0158},
         "lenet5": {"ratio": 39.0, "error_before": 0.0080, "error_after": 0.0074}}
# the bench's targets: beyond the paper's ratios, at <= the baseline's test error + 0.1 pt
TARGET_RATIO = {"lenet300": 60.0, "lenet5": 50.0}
TOLERANCE = 0.001  # 0.1 pt: finalize selects on validation with it, the target checks test with it
# how far below the baseline's validation accuracy a front point may score and still be retrained
SLACKS = {"lenet300": (0.003, 0.006, 0.010, 0.015), "lenet5": (0.003, 0.008, 0.015)}
TARGET_ERROR = {"lenet300": 0.018, "lenet5": 0.010}  # the bench's baselines must be at least this good
COLUMNS = ("model", "trials", "pruned", "finalized", "baseline_err", "test_err", "selected_ratio", "ratio",
           "size_bytes", "paper_ratio", "minutes")
LAYER_COLUMNS = ("layer", "weights", "kept_%", "weight_bits", "index_bits", "bytes", "size_%")


# finalize's retraining where it is not the run's own (Adam at finetune.lr), chosen on validation: SGD with
# momentum reached a higher validation accuracy on LeNet-300-100 (98.13% vs 98.02% for Adam, trial 206 of
# the bench's search; lr 0.05 over 0.01: 98.13% vs 98.00%)
RETRAIN = {"lenet300": {"optimizer": "sgd", "lr": 0.05}}


def space_file(model: str) -> Path:
    return SPACE_FILE.with_name(f"deep_compression_{model}.yaml")


def layer_table(artifact: Path) -> list[dict[str, Any]]:
    """Deep Compression's table: per weight tensor, kept %, bits, index bits and size vs fp32."""
    rows = []
    for r in tensor_report(artifact.read_bytes()):
        if len(r["shape"]) < 2:
            continue
        rows.append({"layer": r["name"].removesuffix(".weight"), "weights": r["numel"],
                     "kept_%": round(100 * r["density"], 2), "weight_bits": r["value_bits"],
                     "index_bits": r["index_bits"], "bytes": r["bytes"],
                     "size_%": round(100 * r["bytes"] / (4 * r["numel"]), 2)})
    return rows


def pick(run_dir: Path, baseline_accuracy: float, slacks: tuple[float, ...]) -> list[int]:
    """For each slack, the smallest front point whose search (validation) accuracy is within it of the baseline's.

    Retraining recovers accuracy, so points well below the baseline are worth retraining.
    """
    front = json.loads((run_dir / "pareto.json").read_text())["trials"]
    picked: list[int] = []
    for slack in slacks:
        close = [t for t in front if t["metrics"]["accuracy"] >= baseline_accuracy - slack]
        if close:
            best = min(close, key=lambda t: t["metrics"]["size_bytes"])["id"]
            picked += [best] if best not in picked else []
    return picked or [front[0]["id"]]


def compress_model(model: str, data_dir: str | None, out: Path, *, trials: int, finalize_epochs: int,
                   iterations: int, workers: int, quick: bool) -> dict[str, Any]:
    start = time.perf_counter()
    spec = read_spec(space_file(model))
    if quick:  # every code path, on small data, in seconds
        spec = replace(spec, train=replace(spec.train, epochs=1),
                       finetune=replace(spec.finetune, steps=5, startup=2))
    shutil.rmtree(out / model, ignore_errors=True)  # a bench run starts from scratch (baselines stay cached)
    result = run_spec_search(spec, optimizer=None, trials=trials, seed=0, runs_dir=out, name=model,
                             data_dir=data_dir, progress=False, execution={"workers": workers})
    run_dir = result.run_dir
    chosen = pick(run_dir, result.baseline["accuracy"], SLACKS[model])
    finalize_run(run_dir, trial_ids=chosen, epochs=finalize_epochs, iterations=iterations, tolerance=TOLERANCE,
                 **RETRAIN.get(model, {}))
    final = json.loads((run_dir / "final.json").read_text())
    return summarize(model, final, trials=len(result.trials),
                     pruned=sum(t.status == "pruned" for t in result.trials),
                     minutes=(time.perf_counter() - start) / 60)


def summarize(model: str, final: dict[str, Any], *, trials: int, pruned: int, minutes: float) -> dict[str, Any]:
    """The bench's row for one model: the point finalize selected on validation, its test error as it fell.

    The target's error bound is the baseline's test error + 0.1 pt; a selected point past it counts as ratio 0.
    """
    rows, base = final["trials"], final["baseline"]
    selected = next(r for r in rows if r["id"] == final["selected"])
    base_error, error = 1 - base["test_accuracy"], 1 - selected["test_accuracy"]
    return {
        "model": model, "trials": trials, "pruned": pruned, "finalized": len(rows),
        "baseline_val_acc": base["accuracy"], "baseline_err": base_error, "val_acc": selected["accuracy"],
        "test_err": error, "within_error": error <= base_error + TOLERANCE,
        "ratio": selected["compression_ratio"] if error <= base_error + TOLERANCE else 0.0,
        "selected_ratio": selected["compression_ratio"], "size_bytes": selected["size_bytes"],
        "paper_ratio": PAPER[model]["ratio"], "target_ratio": TARGET_RATIO[model], "trial": selected["id"],
        "minutes": minutes, "layers": layer_table(Path(selected["artifact"])), "selection": final["selection"],
        "finalized_points": [{k: r[k] for k in ("id", "size_bytes", "compression_ratio", "accuracy", "test_accuracy",
                                                "search_accuracy")} for r in rows],
    }


def distillation_row(teacher_run: Path, epochs: int) -> dict[str, Any]:
    """Students trained on the splits the teacher (a run's baseline) was trained on."""
    teacher, splits = load_run_model(teacher_run), load_run_splits(teacher_run)
    errors = {}
    for name, alpha in (("labels", 0.0), ("distilled", 0.9)):
        torch.manual_seed(0)
        student = nn.Sequential(nn.Flatten(), nn.Linear(784, 30), nn.ReLU(), nn.Linear(30, 10))
        spec = FineTuneSpec(epochs=epochs, lr=1e-3, kd_alpha=alpha, temperature=4.0, seed=0)
        finetune(student, splits.train, spec, teacher=teacher if alpha else None)
        errors[name] = 1 - accuracy(student.eval(), splits.test)
    return {"student": "784-30-10 MLP", "params": count_params(student)[0], "epochs": epochs,
            "teacher": "lenet300", "teacher_err": 1 - accuracy(teacher, splits.test),
            "labels_only_err": errors["labels"], "distilled_err": errors["distilled"], "alpha": 0.9, "T": 4.0}


def main(quick: bool = False, data_dir: str | None = None, runs_dir: str = "runs") -> BenchResult:
    """Search, finalize and compare each LeNet against Deep Compression (`quick`: tiny budgets); publish."""
    out = Path(runs_dir) / "bench-deep-compression"
    # per model: search trials and finalize epochs, sized to the 60-minute budget on 2 cores
    budgets = {"lenet300": (8, 1), "lenet5": (8, 1)} if quick else {"lenet300": (240, 24), "lenet5": (120, 12)}
    iterations, workers, kd_epochs = (2, 2, 1) if quick else (3, 2, 10)
    result = BenchResult("deep-compression", {"budgets": budgets, "iterations": iterations, "workers": workers,
                                              "quick": quick})
    for model, (trials, finalize_epochs) in budgets.items():
        row = compress_model(model, data_dir, out, trials=trials, finalize_epochs=finalize_epochs,
                             iterations=iterations, workers=workers, quick=quick)
        result.rows.append(row)
        print(f"{model}: per layer, trial {row['trial']} (selected on validation):")
        print(format_table(row["layers"], LAYER_COLUMNS))
        result.target(f"{model}_ratio_at_baseline_error_plus_0.1pt", row["ratio"], ">=", TARGET_RATIO[model])
        result.target(f"{model}_minutes", row["minutes"], "<=", 60)
        result.target(f"{model}_baseline_error", row["baseline_err"], "<=", TARGET_ERROR[model])
    result.settings["distillation"] = distillation_row(out / "lenet300", kd_epochs)
    print("distillation:", json.dumps(result.settings["distillation"]))
    return publish(result, COLUMNS, runs_dir)


__all__ = ["main"]
