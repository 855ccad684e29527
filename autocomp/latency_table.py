"""A per-layer latency lookup table: predict a candidate's latency without timing the whole candidate.

Compression changes latency only through the shapes of the layers the runtime executes (channel removal,
low rank; unstructured sparsity and weight bits leave dense kernels as fast as before). So each layer the
runtime runs (a leaf module of the model, BatchNorm folded where the runtime folds it) is timed once
alone, in that runtime, at its input shape, and stored under its structure and shape: the key repeats
across candidates, and across runs on the same machine and runtime (the table is cached beside the runs).

Layers timed alone miss what runs between them (residual additions, ReLUs written as functions, pooling,
the runtime's per-call overhead, int8 quantize/dequantize at every isolated layer's edges). A linear fit
per model calibrates the sum of the layer times to whole-model latency:

    latency ~= a + b x (sum of the candidate's layer times) + c x (elements those layers output)

fit by least squares on a handful of whole candidates measured once (the uncompressed model and random
policies of the space). Predictions are checked, not trusted: a search re-measures its Pareto points and
reports predicted-vs-measured error.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocomp.compress import compress
from autocomp.metrics import cpu_name, forward_times, torch_threads
from autocomp.policy import Policy
from autocomp.primitives.quantize import QuantizedInput
from autocomp.runtimes import get_runtime, prepare
from autocomp.space import BoundSpace


@dataclass(frozen=True, kw_only=True)
class Conditions:
    """What a latency number depends on besides the model: one table holds one set of these."""

    runtime: str = "torch"
    batch_size: int = 1
    threads: int = 1
    engine: str = ""  # the torch-int8 engine ("" for the other runtimes)
    machine: str = ""

    @staticmethod
    def here(runtime: str, batch_size: int, threads: int) -> Conditions:
        """The conditions of measuring now, on this machine, with the runtime's current engine."""
        return Conditions(runtime=runtime, batch_size=batch_size, threads=threads,
                          engine=get_runtime(runtime).engine(), machine=machine_key())

    def key(self) -> str:
        """A short hash of all the fields: equal conditions, equal key."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def machine_key() -> str:
    """The CPU model, core count and runtime versions: a table measured elsewhere is not reused."""
    import onnxruntime

    return f"{cpu_name()}; {os.cpu_count()} cores; torch {torch.__version__}; onnxruntime {onnxruntime.__version__}"


@dataclass(frozen=True)
class Unit:
    """One layer as the runtime executes it: its table key, the module, and its input shape at the batch."""

    key: str
    module: nn.Module
    shape: tuple[int, ...]
    out_elements: int


def _is_unit(module: nn.Module) -> bool:
    return isinstance(module, QuantizedInput) or not any(True for _ in module.children())


def units(model: nn.Module, example: torch.Tensor, batch_size: int, runtime: str) -> list[Unit]:
    """The layers `runtime` executes for `model`, in call order, with their input shapes at `batch_size`."""
    graph = get_runtime(runtime).graph(model).eval()
    inside_wrapper = {id(m) for w in graph.modules() if isinstance(w, QuantizedInput) for m in w.modules()
                      if m is not w}
    found: list[Unit] = []
    hooks = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        shape = (batch_size, *args[0].shape[1:])
        signature = module.extra_repr()
        if isinstance(module, QuantizedInput):
            signature = f"bits={module.bits}; {type(module.layer).__name__}({module.layer.extra_repr()})"
        key = f"{type(module).__name__}({signature})@{'x'.join(map(str, shape))}"
        found.append(Unit(key, module, shape, batch_size * output[0].numel()))

    for module in graph.modules():
        if _is_unit(module) and id(module) not in inside_wrapper and module is not graph:
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            graph(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return found


def time_runner(run: Callable[[torch.Tensor], Any], x: torch.Tensor, *, threads: int, warmup: int,
                repeats: int) -> list[float]:
    with torch_threads(threads):
        return forward_times(run, x, warmup=warmup, repeats=repeats)


class LatencyTable:
    """Layer latencies (ms) under one set of Conditions, and per-model calibrations to whole-model latency.

    `predict(model, example)` looks every layer up, timing the ones it has not seen (so the table grows as
    a search explores), and applies the model's calibration (identity until `calibrate` has run).

    `scale` is today's ms per table ms. A cached table was timed on an earlier day, and the same machine
    can run tens of percent slower or faster since (load from neighbours, clocks): `anchor` sets it from a
    few models timed whole now, predictions are multiplied by it and layers timed now are stored divided
    by it, so the table keeps one unit and every prediction is in today's.
    """

    FILE = "latency_table.json"

    def __init__(self, conditions: Conditions, entries: dict[str, float] | None = None,
                 calibrations: dict[str, dict[str, Any]] | None = None, *, warmup: int = 5,
                 repeats: int = 30) -> None:
        self.conditions = conditions
        self.entries = dict(entries or {})
        self.calibrations = dict(calibrations or {})
        self.warmup, self.repeats = warmup, repeats
        self.measured = 0  # layers timed by this instance (table misses)
        self.scale = 1.0  # today's ms per table ms (see `anchor`); never saved in the table's file

    # --- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Conditions, entries and calibrations as saved in the table's file (`scale` is not saved)."""
        return {"conditions": asdict(self.conditions), "entries": dict(sorted(self.entries.items())),
                "calibrations": self.calibrations}

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON at `path`, atomically (a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, conditions: Conditions, **kwargs: Any) -> LatencyTable:
        """The table saved at `path` if it was measured under `conditions`, else an empty one."""
        try:
            doc = json.loads(Path(path).read_text())
            if Conditions(**doc["conditions"]) == conditions:
                return cls(conditions, doc["entries"], doc.get("calibrations"), **kwargs)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing, torn or from another machine: measure afresh
        return cls(conditions, **kwargs)

    def merge(self, other: LatencyTable) -> None:
        """Add the entries and calibrations of `other` this table lacks, if it has the same conditions."""
        if other.conditions == self.conditions:
            self.entries.update({k: v for k, v in other.entries.items() if k not in self.entries})
            self.calibrations.update({k: v for k, v in other.calibrations.items() if k not in self.calibrations})

    # --- measuring -----------------------------------------------------------------------------------
    def _time_unit(self, unit: Unit) -> float:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(unit.shape, generator=generator)
        module = nn.Sequential(copy.deepcopy(unit.module)).eval()
        c = self.conditions
        run = prepare(module, c.runtime, calibration=x, threads=c.threads, engine=c.engine or None)
        times = time_runner(run, x, threads=c.threads, warmup=self.warmup, repeats=self.repeats)
        return statistics.median(times) / self.scale

    def layer_sum(self, model: nn.Module, example: torch.Tensor) -> tuple[float, int]:
        """(sum of the layers' table latencies in ms, elements they output), timing any missing layer."""
        total, elements = 0.0, 0
        for unit in units(model, example, self.conditions.batch_size, self.conditions.runtime):
            if unit.key not in self.entries:
                self.entries[unit.key] = self._time_unit(unit)
                self.measured += 1
            total += self.entries[unit.key]
            elements += unit.out_elements
        return total, elements

    def predict(self, model: nn.Module, example: torch.Tensor, model_key: str | None = None) -> float:
        """Predicted latency (ms) of `model` under the table's conditions."""
        layer_ms, elements = self.layer_sum(model, example)
        coef = self.calibrations.get(model_key or "", {}).get("coef", [0.0, 1.0, 0.0])
        return max(self.scale * (coef[0] + coef[1] * layer_ms + coef[2] * elements), 1e-6)

    def anchor(self, models: Sequence[nn.Module], example: torch.Tensor, model_key: str,
               measured_ms: Sequence[float]) -> dict[str, Any]:
        """Set `scale` to the median of measured / table latency over `models` timed whole now.

        The models are the calibration's: the uncompressed one and compressed ones like the candidates.
        """
        cached = set(self.entries)
        self.scale = 1.0
        for model in models:  # layers the cached table lacks are timed now: in today's ms, not the table's unit
            self.layer_sum(model, example)
        today = {k: v for k, v in self.entries.items() if k not in cached}
        scale, ratios = 1.0, [1.0]
        for _ in range(50):  # the new layers' unit depends on the scale they help decide: a fixed point
            self.entries.update({k: v / scale for k, v in today.items()})
            self.scale = 1.0
            ratios = [ms / self.predict(m, example, model_key) for m, ms in zip(models, measured_ms)]
            settled, scale = scale, statistics.median(ratios)
            if abs(scale - settled) <= 1e-12 * scale:
                break
        self.entries.update({k: v / scale for k, v in today.items()})
        self.scale = scale
        return {"scale": self.scale, "models": len(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}

    def calibrate(self, model_key: str, models: Sequence[nn.Module], measured_ms: Sequence[float],
                  example: torch.Tensor) -> dict[str, Any]:
        """Fit whole-model latency = a + b x layer sum + c x output elements on measured models."""
        features = np.array([[1.0, *self.layer_sum(m, example)] for m in models])
        y = np.asarray(measured_ms, dtype=float)
        coef = _fit(features, y)
        fitted = features @ coef
        self.calibrations[model_key] = {
            "coef": [float(v) for v in coef], "points": len(y),
            "fit_error_median": float(np.median(np.abs(fitted - y) / y)),
        }
        return self.calibrations[model_key]


def _fit(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error (every model counts alike, small or large).

    Fewer points than terms, or a fit that makes latency fall as layers get slower, falls back to
    a + b x layer sum, then to a pure offset from the layer sum (b = 1).
    """
    weights = 1.0 / y
    for columns in ([0, 1, 2], [0, 1]):
        if len(y) > len(columns):
            solution, *_ = np.linalg.lstsq(features[:, columns] * weights[:, None], y * weights, rcond=None)
            if solution[1] > 0:
                coef = np.zeros(3)
                coef[columns] = solution
                return coef
    return np.array([float(np.median(y - features[:, 1])), 1.0, 0.0])


def model_key(model: nn.Module, example: torch.Tensor) -> str:
    """Which model a calibration belongs to: its architecture (module tree) and input shape."""
    text = f"{model!r}@{tuple(example.shape[1:])}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_model(model: nn.Module, batch: torch.Tensor, conditions: Conditions, *, calibration: torch.Tensor,
                  warmup: int, repeats: int) -> list[float]:
    """Wall times (ms) of whole forward passes of `model` on `batch` in the conditions' runtime and threads.

    `calibration` rows set int8 activation ranges.
    """
    run = prepare(model, conditions.runtime, calibration=calibration, threads=conditions.threads,
                  engine=conditions.engine or None)
    return time_runner(run, batch, threads=conditions.threads, warmup=warmup, repeats=repeats)


def calibration_policies(bound: BoundSpace, seed: int, count: int = 8) -> list[Policy]:
    """The random policies of the space a model's calibration is fit on.

    Seeded: a run and the bench that checks it draw the same ones, so candidates drawn with another seed
    are unseen by the fit.
    """
    rng = np.random.default_rng(seed)
    return [Policy.from_params(bound, bound.sample(rng)) for _ in range(count)]


def cache_path(runs_dir: str | os.PathLike, conditions: Conditions) -> Path:
    """Where this machine keeps its table for `conditions`, reused by every run under `runs_dir`."""
    return Path(runs_dir) / ".cache" / "latency" / f"{conditions.runtime}-{conditions.key()}.json"


def calibrated_table(model: nn.Module, example: torch.Tensor, batch: torch.Tensor, conditions: Conditions,
                     policies: Sequence[Policy], *, calibration: tuple[torch.Tensor, torch.Tensor],
                     saved: Sequence[Path] = (), warmup: int, repeats: int,
                     log: Callable[[str], None] = print) -> LatencyTable:
    """The table for `model` under `conditions`, calibrated for it.

    The first of `saved` that holds a calibration for this model (a run's own table on resume, else the
    machine's cache), every entry of all of them, and, if no calibration exists yet, one fit now on the
    model and `policies` (compressed, timed whole once).
    """
    table = LatencyTable(conditions)
    for path in saved:
        table.merge(LatencyTable.load(path, conditions))
    key = model_key(model, example)
    if key not in table.calibrations:
        models = [model.eval()] + [compress(model, p, example=example, calibration=calibration) for p in policies]
        measured = [statistics.median(measure_model(m, batch, conditions, calibration=calibration[0],
                                                    warmup=warmup, repeats=repeats)) for m in models]
        fit = table.calibrate(key, models, measured, example)
        log(f"latency table: {len(table.entries)} layer entries ({table.measured} timed now), calibrated on "
            f"{fit['points']} models ({conditions.runtime}, batch {conditions.batch_size}, {conditions.threads} "
            f"threads): fit error median {100 * fit['fit_error_median']:.1f}%")
    return table


__all__ = ["Conditions", "LatencyTable", "Unit", "cache_path", "calibrated_table", "calibration_policies",
           "machine_key", "measure_model", "model_key", "units"]
