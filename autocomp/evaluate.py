"""Evaluators: turn a policy into measured metrics. The built-in one compresses, packs and measures."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from autocomp.artifacts import artifact_meta, pack_model
from autocomp.compress import compress
from autocomp.early_stop import curve_key
from autocomp.errors import AutocompError, CandidateInfeasible, CandidateStopped
from autocomp.finetune import DEFAULT_FINETUNE, FineTuneSpec, finetune_as_evaluated
from autocomp.latency_table import Conditions, LatencyTable, measure_model, model_key
from autocomp.metrics import (
    accuracy,
    count_flops,
    count_params,
    energy_uj,
    latency_batch,
    latency_stats,
    peak_activation_bytes,
)
from autocomp.policy import Policy
from autocomp.runtimes import DEFAULT_LATENCY, LatencySpec, get_runtime

if TYPE_CHECKING:  # a sibling layer: constraints arrive as objects, used by their interface
    from autocomp.objective import Constraint


class Evaluator(Protocol):
    """Anything that scores a policy: a callable from a policy to its metrics by name."""

    def __call__(self, policy: Policy) -> Mapping[str, float]:
        """The metrics of `policy` applied to the model."""
        ...


class CompressionEvaluator:
    """compress(model, policy) -> accuracy on the validation data, packed bytes, FLOPs, measured latency.

    Every number is taken from the compressed model as it runs and the artifact `export` writes:
    size_bytes is the length of the packed bytes, accuracy is computed with the quantized weights.
    `extra_metrics` are user callables `f(compressed_model) -> float` added to the metrics by name.
    With `finetune.epochs` > 0 each candidate is fine-tuned on `train` first (distilling from the model
    when `finetune.kd_alpha` > 0), on one thread so that export rebuilds the very same weights.
    """

    def __init__(
        self,
        model: nn.Module,
        data: tuple[torch.Tensor, torch.Tensor],
        *,
        latency: LatencySpec = DEFAULT_LATENCY,
        model_ref: Mapping[str, Any] | None = None,
        extra_metrics: Mapping[str, Callable[[nn.Module], float]] | None = None,
        calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
        entropy: bool = False,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
        finetune: FineTuneSpec = DEFAULT_FINETUNE,
        latency_table: LatencyTable | None = None,
        test: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.test = test
        if finetune.epochs > 0 and train is None:
            raise AutocompError("fine-tuning needs training data (train=...)")
        self.model = copy.deepcopy(model).eval()  # the caller's model keeps its mode and everything else
        self.train, self.finetune = train, finetune
        self.data = data
        self.entropy = entropy
        # calibration rows (activation ranges, Taylor scores); the first validation rows if none are given
        self.calibration = calibration if calibration is not None else (data[0][:256], data[1][:256])
        self.latency = latency
        self.model_ref = dict(model_ref) if model_ref else None
        self.extra_metrics = dict(extra_metrics or {})
        self.example = data[0][:1]
        self.latency_input = latency_batch(data[0], latency.batch_size)
        self.conditions = Conditions.here(latency.runtime, latency.batch_size, latency.threads)
        self.table = latency_table if latency.table else None
        self.model_key = model_key(self.model, self.example)
        self.baseline_accuracy = accuracy(self.model, data)
        self.fp32_bytes = 4 * count_params(self.model)[0]

    def compressed(self, policy: Policy) -> nn.Module:
        """The compressed (and fine-tuned) model exactly as evaluated (and as `export` rebuilds it)."""
        return self._finetuned(self._compress(policy), None)

    def structure(self, policy: Policy) -> nn.Module:
        """The compressed model before fine-tuning: the very layers and shapes that run (for timing)."""
        return self._compress(policy)

    def _compress(self, policy: Policy) -> nn.Module:
        return compress(self.model, policy, example=self.example, calibration=self.calibration)

    def _finetuned(self, model: nn.Module, after_epoch: Callable[[int, nn.Module], bool] | None) -> nn.Module:
        if self.finetune.epochs > 0 and self.train is not None:
            finetune_as_evaluated(model, self.train, self.finetune, teacher=self.model, after_epoch=after_epoch)
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

        `split="test"` measures only `test_accuracy` of the model exactly as evaluated (the same compression
        and fine-tuning), on the `test` rows given at construction: the search's one use of them, for points
        already chosen.

        With `bars` (epoch -> accuracy needed to go on), fine-tuning stops a candidate below a bar by raising
        CandidateStopped (the trial is then `pruned`). With `limits` (resolved constraints), a candidate whose
        structure already breaks one on a metric of `structure_metrics` raises CandidateInfeasible before
        it is fine-tuned or scored (the trial is then `infeasible`): a hard budget costs no fine-tuning.
        """
        if split == "test":
            if self.test is None:
                raise AutocompError("no test data to measure on (test=...)")
            return {"test_accuracy": accuracy(self.compressed(policy), self.test)}
        compressed = self._compress(policy)
        structure = self.structure_metrics(compressed)
        broken = [c for c in limits if c.metric in structure and c.violation(structure) > 0]
        if broken:
            raise CandidateInfeasible("outside the constraints before fine-tuning: "
                                      + ", ".join(_outside(c, structure[c.metric]) for c in broken), structure)
        learning: dict[str, float] = {}

        def after_epoch(epoch: int, model: nn.Module) -> bool:
            learning[curve_key(epoch)] = accuracy(model, self.data)
            bar = (bars or {}).get(epoch)
            if bar is not None and learning[curve_key(epoch)] < bar:
                raise CandidateStopped(f"pruned after {epoch} fine-tuning epochs: validation accuracy "
                                       f"{learning[curve_key(epoch)]:.4f} < {bar:.4f}", learning)
            return True

        self._finetuned(compressed, after_epoch if self.finetune.epochs > 1 else None)
        acc = accuracy(compressed, self.data)
        size = len(self.artifact(compressed, policy))
        _, sparse_flops = count_flops(compressed, self.example)
        metrics = {
            "accuracy": acc,
            "accuracy_drop": self.baseline_accuracy - acc,
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
