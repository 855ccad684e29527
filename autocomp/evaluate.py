"""Evaluators: turn a policy into measured metrics. The built-in one compresses, packs and measures."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from autocomp.artifacts import artifact_meta, pack_model
from autocomp.batches import Data, head, picklable
from autocomp.compress import compress
from autocomp.devices import on_device, resolve_device
from autocomp.early_stop import curve_key
from autocomp.errors import AutocompError, CandidateInfeasible, CandidateStopped
from autocomp.finetune import DEFAULT_FINETUNE, FineTuneSpec, finetune_as_evaluated
from autocomp.latency_table import Conditions, LatencyTable, measure_model, model_key
from autocomp.metrics import (
    count_flops,
    count_params,
    energy_uj,
    latency_batch,
    latency_stats,
    peak_activation_bytes,
)
from autocomp.policy import Policy
from autocomp.runtimes import DEFAULT_LATENCY, LatencySpec, get_runtime
from autocomp.tasks import CLASSIFICATION, Task

if TYPE_CHECKING:  # a sibling layer: constraints arrive as objects, used by their interface
    from autocomp.objective import Constraint


class Evaluator(Protocol):
    """Anything that scores a policy: a callable from a policy to its metrics by name."""

    def __call__(self, policy: Policy) -> Mapping[str, float]:
        """The metrics of `policy` applied to the model."""
        ...


class CompressionEvaluator:
    """compress(model, policy) -> the task's metrics on the validation data, packed bytes, FLOPs, latency.

    Every number is taken from the compressed model as it runs and the artifact `export` writes:
    size_bytes is the length of the packed bytes, the task's metrics (accuracy for classification,
    perplexity for a language model, ...) are computed with the quantized weights, on the first
    `val_batches` batches of `eval_batch_size` rows when capped (a cheaper, noisier score).
    `extra_metrics` are user callables `f(compressed_model) -> float` added to the metrics by name.
    With `finetune.epochs` > 0 each candidate is fine-tuned on `train` first (distilling from the model
    when `finetune.kd_alpha` > 0), on one thread so that export rebuilds the very same weights.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        *,
        latency: LatencySpec = DEFAULT_LATENCY,
        model_ref: Mapping[str, Any] | None = None,
        extra_metrics: Mapping[str, Callable[[nn.Module], float]] | None = None,
        calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
        entropy: bool = False,
        train: Data | None = None,
        finetune: FineTuneSpec = DEFAULT_FINETUNE,
        latency_table: LatencyTable | None = None,
        test: Data | None = None,
        task: Task = CLASSIFICATION,
        val_batches: int | None = None,
        eval_batch_size: int = 1000,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.test = test
        self.task = task
        self.val_batches, self.eval_batch_size = val_batches, eval_batch_size
        self.device_setting, self.precision = device, precision
        self._device: torch.device | None = None  # resolved where the evaluation runs (a Ray worker's own GPU)
        self._on_device: nn.Module | None = None  # the uncompressed model there: the teacher, the baseline
        if finetune.epochs > 0 and train is None:
            raise AutocompError("fine-tuning needs training data (train=...)")
        self.model = copy.deepcopy(model).eval()  # the caller's model keeps its mode and everything else
        self.train, self.finetune = train, finetune
        self.data = data
        self.entropy = entropy
        # calibration rows (activation ranges, Taylor scores); the first validation rows if none are given
        self.calibration = calibration if calibration is not None else head(data, 256)
        self.latency = latency
        self.model_ref = dict(model_ref) if model_ref else None
        self.extra_metrics = dict(extra_metrics or {})
        self.example = head(data, 1)[0]
        self.latency_input = latency_batch(head(data, latency.batch_size)[0], latency.batch_size)
        self.conditions = Conditions.here(latency.runtime, latency.batch_size, latency.threads)
        self.table = latency_table if latency.table else None
        self.model_key = model_key(self.model, self.example)
        self.baseline_metrics = self.score(self.uncompressed_on_device(), data)
        self.fp32_bytes = 4 * count_params(self.model)[0]

    @property
    def device(self) -> torch.device:
        """The device evaluation and fine-tuning run on here (`device` resolved on this machine)."""
        if self._device is None:
            self._device = resolve_device(self.device_setting)
        return self._device

    def __getstate__(self) -> dict[str, Any]:
        # a worker resolves the device itself (its own GPU) and makes its own copy of the model there
        # and a loader travels without a live iterator (a persistent-workers loader keeps one)
        state = {**self.__dict__, "_device": None, "_on_device": None}
        return {**state, **{k: picklable(state[k]) for k in ("data", "train", "test") if state[k] is not None}}

    def uncompressed_on_device(self) -> nn.Module:
        """The uncompressed model on the evaluation device (the model itself on the CPU)."""
        if self._on_device is None:
            self._on_device = on_device(self.model, self.device)
        return self._on_device

    def score(self, model: nn.Module, data: Data, *,
              capped: bool = True) -> dict[str, float]:
        """The task's metrics of `model` (on the device) on `data` (its first `val_batches` batches if `capped`)."""
        return self.task.evaluate(model, data, batch_size=self.eval_batch_size,
                                  max_batches=self.val_batches if capped else None, device=self.device,
                                  precision=self.precision)

    def compressed(self, policy: Policy) -> nn.Module:
        """The compressed (and fine-tuned) model exactly as evaluated (and as `export` rebuilds it), on the CPU."""
        return self._tuned(policy).cpu()

    def structure(self, policy: Policy) -> nn.Module:
        """The compressed model before fine-tuning: the very layers and shapes that run (for timing)."""
        return self._compress(policy)

    def _tuned(self, policy: Policy) -> nn.Module:
        """Compressed and fine-tuned as evaluated, left on the evaluation device."""
        return self._finetuned(self._compress(policy).to(self.device), None)

    def _compress(self, policy: Policy) -> nn.Module:
        return compress(self.model, policy, example=self.example, calibration=self.calibration)

    def _finetuned(self, model: nn.Module, after_epoch: Callable[[int, nn.Module], bool] | None) -> nn.Module:
        if self.finetune.epochs > 0 and self.train is not None:
            finetune_as_evaluated(model, self.train, self.finetune, teacher=self.uncompressed_on_device(),
                                  after_epoch=after_epoch, task=self.task, device=self.device,
                                  precision=self.precision)
        return model

    def artifact(self, compressed: nn.Module, policy: Policy) -> bytes:
        """The packed bytes `export --format packed` writes for this policy: size_bytes is their length."""
        meta = artifact_meta(self.model_ref, policy, tuple(self.example.shape[1:]), self.example.dtype)
        return pack_model(compressed, meta, entropy=self.entropy)

    def latency_times(self, compressed: nn.Module) -> list[float]:
        """Times (ms) of whole forward passes of `compressed` in the run's runtime, after warm-up."""
        return measure_model(compressed, self.latency_input, self.conditions, calibration=self.calibration[0],
                             warmup=self.latency.warmup, repeats=self.latency.repeats)

    def measured_latency(self, compressed: nn.Module) -> dict[str, float]:
        """Median and IQR (ms) of whole forward passes of `compressed` in the run's runtime."""
        return latency_stats(self.latency_times(compressed))

    def structure_metrics(self, compressed: nn.Module) -> dict[str, float]:
        """The metrics the compressed structure fixes, whatever fine-tuning does to the weights.

        Masks are held, and channels and ranks are not changed by fine-tuning.
        """
        flops, _ = count_flops(compressed, self.example)
        if self.table is not None:
            timing = {"latency_ms": self.table.predict(compressed, self.example, self.model_key)}
        else:
            timing = self.measured_latency(compressed)
        int8 = get_runtime(self.latency.runtime).int8
        return {"params_stored": count_params(compressed)[0], "flops": flops, **timing,
                "peak_activation_bytes": peak_activation_bytes(compressed, self.example, 1 if int8 else 4)}

    def __call__(self, policy: Policy, bars: Mapping[int, float] | None = None,
                 limits: Sequence[Constraint] = (), split: str = "val") -> dict[str, float]:
        """The metrics of `policy`.

        `split="test"` measures only the task's metrics, prefixed `test_` (`test_accuracy`, `test_perplexity`,
        ...), of the model exactly as evaluated (the same compression and fine-tuning), on all the `test` rows
        given at construction: the search's one use of them, for points already chosen. `split="val-full"`
        measures the task's metrics on all of the validation rows (when `val_batches` caps the search's).

        With `bars` (epoch -> the task's primary metric needed to go on), fine-tuning stops a candidate on
        the wrong side of a bar by raising CandidateStopped (the trial is then `pruned`). With `limits`
        (resolved constraints), a candidate whose structure already breaks one on a metric of
        `structure_metrics` raises CandidateInfeasible before it is fine-tuned or scored (the trial is then
        `infeasible`): a hard budget costs no fine-tuning.
        """
        if split == "test":
            if self.test is None:
                raise AutocompError("no test data to measure on (test=...)")
            measured = self.score(self._tuned(policy), self.test, capped=False)
            return {f"test_{name}": value for name, value in measured.items()}
        if split == "val-full":  # a capped search's front, scored again on all of the validation data
            return self.score(self._tuned(policy), self.data, capped=False)
        compressed = self._compress(policy)
        structure = self.structure_metrics(compressed)
        broken = [c for c in limits if c.metric in structure and c.violation(structure) > 0]
        if broken:
            raise CandidateInfeasible("outside the constraints before fine-tuning: "
                                      + ", ".join(_outside(c, structure[c.metric]) for c in broken), structure)
        learning: dict[str, float] = {}
        primary = self.task.PRIMARY
        maximize = self.task.METRICS[primary] == "maximize"

        def after_epoch(epoch: int, model: nn.Module) -> bool:
            value = learning[curve_key(epoch, primary)] = self.score(model, self.data)[primary]
            bar = (bars or {}).get(epoch)
            if bar is not None and (value < bar if maximize else value > bar):
                raise CandidateStopped(f"pruned after {epoch} fine-tuning epochs: validation {primary} "
                                       f"{value:.4f} {'<' if maximize else '>'} {bar:.4f}", learning)
            return True

        self._finetuned(compressed.to(self.device), after_epoch if self.finetune.epochs > 1 else None)
        scored = self.score(compressed, self.data)
        compressed.cpu()  # the artifact, FLOPs and energy are the CPU model's
        bad = sorted(name for name, value in scored.items() if not math.isfinite(value))
        if bad:
            raise AutocompError(f"the {self.task.NAME} task's metrics are not finite: "
                                + ", ".join(f"{name}={scored[name]}" for name in bad))
        size = len(self.artifact(compressed, policy))
        _, sparse_flops = count_flops(compressed, self.example)
        if "accuracy" in scored and "accuracy" in self.baseline_metrics:
            scored["accuracy_drop"] = self.baseline_metrics["accuracy"] - scored["accuracy"]
        metrics = {
            **scored,
            "size_bytes": size,
            "compression_ratio": self.fp32_bytes / size,
            "params": count_params(compressed)[1],
            **structure,
            "flops_sparse": sparse_flops,
            "energy_uj": energy_uj(compressed, self.example, size, int8=get_runtime(self.latency.runtime).int8),
            **learning,
        }
        for name, fn in self.extra_metrics.items():
            metrics[name] = float(fn(compressed))
        return metrics


def _outside(bound: Constraint, value: float) -> str:
    if bound.max is not None and value > bound.max:
        return f"{bound.metric} {value:.6g} > max {bound.max:.6g}"
    return f"{bound.metric} {value:.6g} < min {bound.min:.6g}"
