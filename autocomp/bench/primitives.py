"""`autocomp bench primitives`: each primitive's theoretical gain beside what its exported artifact measures.

For LeNet-300-100 and LeNet-5 on MNIST and ResNet-20 on CIFAR-10 (baselines trained here on a fixed, seeded
budget and cached), one row per primitive setting: FLOPs and size reduction in theory, the packed file's
size on disk against the size_bytes a search would report, latency ratios against the uncompressed model
(batch 64 and batch 1, 2 threads, medians of interleaved rounds), and accuracy before any fine-tuning.
The int8 rows run PyTorch's real int8 kernels against the fp32 model with BatchNorm folded.

Sizes: every row, plain and Huffman-coded, writes the file `autocomp export --format packed` writes (the
journaled policy compressed afresh, the run's header) and compares its bytes on disk with the size_bytes the
evaluator reports for that policy and coding: they must be equal. Speedups with a target are judged on the
median of 3 independent interleaved measurements, reported with their spread.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autocomp.artifacts import artifact_meta, export_int8, pack_model, write_bytes
from autocomp.bench.common import BenchResult, cached_baseline, publish
from autocomp.compress import compress, layer_targets
from autocomp.evaluate import CompressionEvaluator
from autocomp.int8 import fold_batchnorm, to_int8
from autocomp.metrics import accuracy, count_flops, count_params, interleaved_latency
from autocomp.policy import Policy
from autocomp.primitives import Channels, LowRank, Prune, Quantize, Share
from autocomp.runtimes import LatencySpec
from autocomp.zoo.train import TrainSpec

COLUMNS = ("model", "primitive", "flops_x", "sparse_flops_x", "theory_size_x", "size_bytes", "disk_bytes",
           "disk_x", "latency_x_b64", "latency_x_b1", "accuracy", "base_accuracy")


@dataclass(frozen=True)
class Setup:
    """One model of the bench: its dataset and how its baseline is trained (full and quick)."""

    model: str
    dataset: str
    train: TrainSpec
    quick_train: TrainSpec
    int8_batch: int = 64


SETUPS = (
    Setup("lenet300", "mnist", TrainSpec(epochs=10), TrainSpec(epochs=1), int8_batch=256),
    Setup("lenet5", "mnist", TrainSpec(epochs=4), TrainSpec(epochs=1)),
    Setup("resnet20", "cifar10", TrainSpec(epochs=8, lr=2e-3, batch_size=128), TrainSpec(epochs=1)),
)


def _layers(model: nn.Module, kind: type | tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> list[str]:
    return [n for n in layer_targets(model) if n and isinstance(model.get_submodule(n), kind)]


def _all(model: nn.Module, *configs, kind=(nn.Linear, nn.Conv2d)) -> Policy:
    return Policy.of({n: list(configs) for n in _layers(model, kind)})


def _channels_for_half_flops(model: nn.Module, example: torch.Tensor, round_to: int) -> tuple[Policy, float]:
    """The smallest uniform channel ratio (over every conv) that removes >= 50% of FLOPs, by bisection.

    Kept counts are rounded to multiples of `round_to`: CPU convolution kernels vectorise over channels in
    blocks of 8, and odd counts waste lanes (measured: at equal FLOPs, round_to 8 ran faster than 1).
    """
    base = count_flops(model, example)[0]

    def policy(ratio: float) -> Policy:
        return _all(model, Channels(ratio=ratio, criterion="l1", round_to=round_to), kind=nn.Conv2d)

    low, high = 0.0, 0.9
    for _ in range(10):
        mid = (low + high) / 2
        if count_flops(compress(model, policy(mid), example=example), example)[0] > 0.5 * base:
            low = mid
        else:
            high = mid
    return policy(high), high


def _policies(name: str, model: nn.Module, example: torch.Tensor) -> list[tuple[str, Policy, bool]]:
    """(label, policy, entropy-coded) rows for one model."""
    rows = [
        ("prune 50%", _all(model, Prune(ratio=0.5)), False),
        ("prune 90%", _all(model, Prune(ratio=0.9)), False),
        ("prune 90% global lamp", _all(model, Prune(ratio=0.9, scope="global", score="lamp")), False),
        ("quantize 8b", _all(model, Quantize(bits=8)), False),
        ("quantize 4b", _all(model, Quantize(bits=4)), False),
        ("quantize 2b (ternary)", _all(model, Quantize(bits=2)), False),
        ("quantize 1b (sign)", _all(model, Quantize(bits=1)), False),
        ("quantize 8b + act 8b", _all(model, Quantize(bits=8, act_bits=8)), False),
        ("share 5b (k-means)", _all(model, Share(bits=5)), False),
        ("prune 90% + share 5b + H", _all(model, Prune(ratio=0.9), Share(bits=5)), True),
        ("prune 90% + quantize 5b + H", _all(model, Prune(ratio=0.9), Quantize(bits=5)), True),
    ]
    linear = _layers(model, nn.Linear)[:-1]  # the classifier stays whole
    if linear:
        rows.append(("svd rank 0.25", Policy.of({n: [LowRank(rank_ratio=0.25)] for n in linear}), False))
    convs = [n for n in _layers(model, nn.Conv2d) if model.get_submodule(n).kernel_size != (1, 1)]
    if convs:
        rows.append(("tucker2 rank 0.5", Policy.of({n: [LowRank(rank_ratio=0.5, method="tucker2")]
                                                    for n in convs[1:]}), False))
        rows.append(("spatial svd rank 0.25", Policy.of({n: [LowRank(rank_ratio=0.25, method="spatial")]
                                                        for n in convs[1:]}), False))
        for round_to in (1, 8):
            policy, ratio = _channels_for_half_flops(model, example, round_to)
            rows.append((f"channels -50% flops (r={ratio:.2f}, x{round_to})", policy, False))
    return rows


CODINGS = {"plain": False, "huffman": True}  # every row's artifact is checked both ways
QUICK_LABELS = ("prune 90% global lamp", "quantize 4b", "quantize 8b + act 8b", "share 5b (k-means)",
                "prune 90% + share 5b + H", "svd rank 0.25", "tucker2 rank 0.5", "spatial svd rank 0.25", "channels")


def export_packed(path: Path, model: nn.Module, policy: Policy, calibration, model_ref, entropy: bool) -> int:
    """What `autocomp export RUN --trial N --format packed` does for a journaled trial (cli.cmd_export).

    The policy as the journal stores it, compressed afresh from the uncompressed model with the run's
    calibration rows, packed with the run's header and coding, written to disk; returns the file's size.
    """
    policy = Policy.from_dict(json.loads(json.dumps(policy.to_dict())))
    example = calibration[0][:1]
    compressed = compress(model, policy, example=example, calibration=calibration)
    meta = artifact_meta(model_ref, policy, list(example.shape[1:]))
    write_bytes(path, pack_model(compressed, meta, entropy=entropy))
    return path.stat().st_size


def size_mismatches(rows: list[dict]) -> int:
    """(row, coding) pairs whose exported file's bytes differ from the evaluated size_bytes (target: none)."""
    return sum(r[f"disk_bytes_{c}"] != r[f"size_bytes_{c}"] for r in rows if "size_bytes_plain" in r for c in CODINGS)


def speedups(reference, candidate, x: torch.Tensor, repeats: int, **kwargs) -> list[float]:
    """`repeats` independent interleaved measurements of candidate vs reference speedup.

    Each has its own warm-up and alternating rounds; a timing target is judged on their median.
    """
    return [interleaved_latency(reference, candidate, x, **kwargs)[2] for _ in range(repeats)]


def _timing(row: dict, column: str, samples: list[float]) -> None:
    row[column] = statistics.median(samples)
    if len(samples) > 1:
        row[f"{column}_samples"] = samples
        row[f"{column}_spread"] = [min(samples), max(samples)]


def _row(setup: Setup, label: str, model: nn.Module, policy: Policy, entropy: bool, evaluator, test, base,
         tmp: Path, timing_repeats: int = 1) -> dict:
    compressed = evaluator.compressed(policy)
    sizes = {}
    for coding, huffman in CODINGS.items():
        evaluator.entropy = huffman
        evaluated = int(evaluator(policy)["size_bytes"])  # what a search journals for this policy
        exported = export_packed(tmp / f"{coding}.acz", model, policy, evaluator.calibration, evaluator.model_ref,
                                 huffman)
        sizes |= {f"size_bytes_{coding}": evaluated, f"disk_bytes_{coding}": exported}
    coding = "huffman" if entropy else "plain"
    reported, disk = sizes[f"size_bytes_{coding}"], sizes[f"disk_bytes_{coding}"]
    flops, sparse = count_flops(compressed, evaluator.example)
    stored, nonzero = count_params(compressed)
    bits = sum(int(torch.count_nonzero(m.weight)) * _weight_bits(m) for m in compressed.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)))
    other = sum(p.numel() for n, p in compressed.named_parameters() if not n.endswith("weight")) * 32
    x64 = test[0][:64]
    b64 = speedups(model, compressed, x64, timing_repeats)
    _, _, b1 = interleaved_latency(model, compressed, test[0][:1], repeats=30)
    row = {
        "model": setup.model, "primitive": label, "coding": coding, "flops_x": base["flops"] / flops,
        "sparse_flops_x": base["flops"] / max(sparse, 1), "theory_size_x": base["fp32_bits"] / (bits + other),
        "size_bytes": reported, "disk_bytes": disk, "disk_x": base["fp32_bytes"] / disk, **sizes,
        "latency_x_b1": b1, "accuracy": accuracy(compressed, test),
        "base_accuracy": base["accuracy"], "params_nonzero": nonzero, "params_stored": stored,
    }
    _timing(row, "latency_x_b64", b64)
    return row


def _weight_bits(layer: nn.Module) -> int:
    coding = getattr(layer, "weight_coding", None)
    return int(coding.bits) if coding is not None else 32


def _int8_row(setup: Setup, model: nn.Module, evaluator, test, base, tmp: Path, timing_repeats: int = 1) -> dict:
    calibration = evaluator.calibration[0]
    reference = fold_batchnorm(model)
    int8_model = to_int8(model, calibration)
    x = test[0][: setup.int8_batch]
    speedup = speedups(reference, int8_model, x, timing_repeats)
    _, _, speedup1 = interleaved_latency(reference, int8_model, test[0][:1], repeats=30)
    disk, _ = export_int8(tmp / "int8.pt", model, calibration)
    row = {
        "model": setup.model, "primitive": f"int8 {int8_model.engine} (vs fp32 BN-folded, b{setup.int8_batch})",
        "flops_x": 1.0, "theory_size_x": 4.0, "disk_bytes": disk, "disk_x": base["fp32_bytes"] / disk,
        "latency_x_b64": None, "latency_x_b1": speedup1, "accuracy": accuracy(int8_model, test),
        "base_accuracy": base["accuracy"],
    }
    _timing(row, f"latency_x_b{setup.int8_batch}", speedup)
    return row


TIMING_REPEATS = 3  # independent repetitions of every measurement a target judges (bench common.MIN_REPEATS)
TIMED = {"channels": ("resnet20",), "int8": ("resnet20", "lenet300")}  # rows whose latency has a target


def add_targets(result: BenchResult) -> None:
    """The bench's targets, from its rows.

    Speedups on the median of repeated measurements, and exported packed files' bytes equal to the
    evaluated size_bytes for every row and coding.
    """
    for row in result.rows:
        model, label = row["model"], row["primitive"]
        if model == "resnet20" and label.startswith("channels") and label.endswith("x8)"):
            result.timed_target("resnet20_channels_half_flops_speedup_b64", row["latency_x_b64_samples"], ">=", 1.6)
        elif model == "resnet20" and label.startswith("int8"):
            result.timed_target("resnet20_int8_speedup_b64", row["latency_x_b64_samples"], ">=", 2.0)
        elif model == "lenet300" and label.startswith("int8"):
            result.timed_target("lenet300_int8_speedup_b256", row["latency_x_b256_samples"], ">=", 1.3)
    result.target("packed_export_vs_evaluated_size_mismatches", size_mismatches(result.rows), "==", 0)
    result.settings["size_checks"] = sum(len(CODINGS) for r in result.rows if "size_bytes_plain" in r)


def run(*, quick: bool, data_dir: str | None, runs_dir: str, log: Callable[[str], None] = print) -> BenchResult:
    """Measure every primitive setting on every setup (`quick`: fewer rows, smaller data) into a BenchResult."""
    result = BenchResult("primitives", {"quick": quick, "threads": 2, "latency": "median of interleaved rounds",
                                        "accuracy": "test split, before fine-tuning"})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for setup in SETUPS:
            subset = 2000 if quick else None
            model, splits = cached_baseline(setup.model, setup.dataset, data_dir,
                                            setup.quick_train if quick else setup.train, runs_dir, subset=subset,
                                            log=log)
            test = (splits.test[0][:500], splits.test[1][:500]) if quick else splits.test
            evaluator = CompressionEvaluator(model, splits.val if not quick else (splits.val[0][:500],
                                             splits.val[1][:500]), latency=LatencySpec(repeats=3, warmup=1),
                                             calibration=(splits.train[0][:256], splits.train[1][:256]),
                                             model_ref={"name": setup.model})
            params = count_params(model)[0]
            base = {"flops": count_flops(model, evaluator.example)[0], "fp32_bytes": 4 * params,
                    "fp32_bits": 32 * params, "accuracy": accuracy(model, test)}
            policies = _policies(setup.model, model, evaluator.example)
            if quick:  # one row of each primitive (activation bits, sharing and Huffman too), every channel row
                policies = [p for p in policies if p[0].startswith(QUICK_LABELS)]
            for label, policy, entropy in policies:
                repeats = TIMING_REPEATS if setup.model in TIMED["channels"] and label.startswith("channels") else 1
                row = _row(setup, label, model, policy, entropy, evaluator, test, base, tmp, timing_repeats=repeats)
                result.rows.append(row)
                log(f"  {setup.model:9s} {label:38s} disk {row['disk_bytes']:>9,} B  "
                    f"lat x{row['latency_x_b64']:.2f} (b64)  acc {row['accuracy']:.4f}")
            repeats = TIMING_REPEATS if setup.model in TIMED["int8"] else 1
            row = _int8_row(setup, model, evaluator, test, base, tmp, timing_repeats=repeats)
            result.rows.append(row)
            log(f"  {setup.model:9s} {row['primitive']:38s} disk {row['disk_bytes']:>9,} B  "
                f"lat x{row[f'latency_x_b{setup.int8_batch}']:.2f}  acc {row['accuracy']:.4f}")
    add_targets(result)
    return result


def main(*, quick: bool, data_dir: str | None, runs_dir: str) -> BenchResult:
    """Run the bench, print its table and targets, and write results.json under `runs_dir`."""
    return publish(run(quick=quick, data_dir=data_dir, runs_dir=runs_dir), COLUMNS, runs_dir)
