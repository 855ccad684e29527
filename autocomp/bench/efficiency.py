"""`autocomp bench efficiency`: what the allocator and the guided searches cost to reach plain TPE's front.

Three models (parts; `--only` picks some, `--quick` runs lenet300 alone unless `--only` says otherwise), 3
seeds each:

- lenet300: LeNet-300-100 on full MNIST (`--data-dir`), no fine-tuning, the space and hypervolume of `bench
  search` (search_spaces/lenet300_mnist.yaml; (accuracy, log10 size_bytes), reference (0.90, log10 fp32
  bytes)); 300 evaluations per strategy;
- resnet20: ResNet-20 on CIFAR-10 (`--data-dir`), a baseline trained once on RESNET_SUBSET training images
  (cached), each candidate fine-tuned for a few steps, distilled from the uncompressed model
  (RESNET_FINETUNE), and scored on RESNET_VAL_ROWS validation images. Space (`resnet20_space`): per layer,
  the pruning ratio and weight bits of every conv and the fc, and the rank of the 3x3 convs (Tucker-2).
  Hypervolume over (accuracy, log10 size_bytes), reference (REFERENCE_ACCURACY_SHARE of the baseline's
  validation accuracy, log10 fp32 bytes);
- lm: the Llama-style byte model of `bench lm` (its corpus, splits and cached training, under
  `<runs-dir>/bench-lm/cache`), task language-model, objectives (perplexity, size_bytes), the space
  `lm.search_space`, no fine-tuning, LM_VAL_ROWS validation blocks. Hypervolume over (perplexity, log10
  size_bytes), reference (LM_REFERENCE_PPL x the fp32 model's validation perplexity, log10 fp32 bytes).

Per seed, each strategy of the part (PART_STRATEGIES) runs its budget of real evaluations (the knapsack
allocator stops after its sweep):

- knapsack: the measured sensitivity phase (each knob alone at `levels` values) and one allocation per
  budget of the sweep;
- knapsack-fisher: the same with `sensitivity: fisher`: no sensitivity phase, the runner's gradient proxies
  (autocomp/proxies.py) predict each knob's loss and the packed size each change gives, so only the
  reference and the allocations are evaluated;
- tpe: plain TPE (random start-up trials);
- tpe-guided / nsga2-guided (measured) and tpe-guided-fisher / nsga2-guided-fisher / rl-guided-fisher
  (proxies): `guided: true`: every evaluation of the knapsack strategy with the same sensitivity source
  first (the same sweep), then each ask the best of a pool by the surrogate's predicted hypervolume gain
  within the bench's reference box (the guided `reference` setting; see autocomp/optimizers/guided.py).

Plain TPE's budget (BUDGETS, first) sets the target: its final hypervolume. The strategies with a measured
sensitivity phase get the second budget: on resnet20 and lm that phase alone (2 levels per knob) is about
107 and 68 evaluations, so at TPE's 100 they would barely start. The proxies' strategies get plain TPE's.

For each: the evaluations, the evaluation seconds and the wall time to first reach plain TPE's final
hypervolume of the same seed (counted from the first trial, the sensitivity phase included; the wall time
from the search call, so the proxies' computation too); the final hypervolume; the hypervolume at 25%, 50%
and 100% of plain TPE's wall time of the same seed (a strategy done earlier keeps its final one); for the
guided ones the surrogate's error on every candidate it let through (the first objective absolute; size
relative), the share of the host's candidates it screened out, the share of real evaluations that were
neighbours of the front (`local_share`) and how many points of its knapsack's final front (inside the
reference box) its own final front has nothing as good as in both objectives (`knapsack_uncovered`: "not
worse than knapsack at any budget on the front" is 0). Evaluations count only trials really evaluated (a
repeat answered from the journal is none), and a median over seeds of "to TPE's hypervolume" is empty
unless most seeds reached it. `proxy_s` is the proxies' wall time and `proxy_in_evals` the same in
evaluations (over `eval_s_median`, one evaluation's); `proxy_rank_corr` (knapsack-fisher's row) how well the
proxies rank the one-knob changes knapsack measured in the same seed (`proxy_rank_correlation`). Wall
time: the runner journals no clock time per trial, so each evaluation records its own (an extra metric,
`bench_elapsed_s`: seconds since the search call began, taken as the evaluation ends); a trial answered from
the journal finishes with the one before it. Medians over seeds.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import autocomp
from autocomp.bench import lm as lm_bench
from autocomp.bench import search as search_bench
from autocomp.bench.common import BenchResult, cached_baseline, publish
from autocomp.errors import AutocompError
from autocomp.metrics import accuracy
from autocomp.pareto import pareto_front
from autocomp.runtimes import LatencySpec
from autocomp.zoo.train import TrainSpec

LEVELS, SWEEP = 4, 10  # lenet300: the sensitivity phase measures 4 values per knob; the allocator sweeps 10 budgets
FISHER = {"sensitivity": "fisher", "sweep": SWEEP}  # gradient proxies instead of the sensitivity phase
STRATEGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "knapsack": ("knapsack", {"levels": LEVELS, "sweep": SWEEP}),
    "knapsack-fisher": ("knapsack", dict(FISHER)),
    "tpe": ("tpe", {}),
    "tpe-guided": ("tpe", {"guided": True, "levels": LEVELS, "sweep": SWEEP}),
    "tpe-guided-fisher": ("tpe", {"guided": True, **FISHER}),
    "nsga2-guided": ("nsga2", {"guided": True, "levels": LEVELS, "sweep": SWEEP}),
    "nsga2-guided-fisher": ("nsga2", {"guided": True, **FISHER}),
    "rl-guided-fisher": ("rl", {"guided": True, **FISHER}),
}
GUIDED = tuple(label for label, (_, settings) in STRATEGIES.items() if settings.get("guided"))
# which strategies each part runs: on resnet20 (about 2 s an evaluation) and lm the measured sensitivity phase
# alone is about as many evaluations as plain TPE's whole budget, so the guided searches there start from the
# proxies; RL on lenet300 only and NSGA-II not on resnet20, for time
PART_STRATEGIES: dict[str, tuple[str, ...]] = {
    "lenet300": ("knapsack", "knapsack-fisher", "tpe", "tpe-guided", "tpe-guided-fisher", "nsga2-guided",
                 "nsga2-guided-fisher", "rl-guided-fisher"),
    "resnet20": ("knapsack", "knapsack-fisher", "tpe", "tpe-guided-fisher"),
    "lm": ("knapsack", "knapsack-fisher", "tpe", "tpe-guided-fisher", "nsga2-guided-fisher"),
}
PARTS = tuple(PART_STRATEGIES)
# (plain TPE's evaluations, those of the strategies that begin with a measured sensitivity phase); the proxies'
# strategies get plain TPE's
BUDGETS = {"lenet300": (300, 300), "resnet20": (100, 150), "lm": (100, 150)}
QUICK_BUDGET = 40  # lenet300 --quick, every strategy
QUICK_BUDGETS = {"resnet20": (10, 30), "lm": (10, 60)}
# (levels, sweep) of the allocator's settings per part: fewer on the bigger spaces
ALLOCATION = {"lenet300": (LEVELS, SWEEP), "resnet20": (2, 10), "lm": (2, 10)}
QUICK_ALLOCATION = {"lenet300": (2, SWEEP), "resnet20": (2, 4), "lm": (2, 4)}
REDUCTION = 5.0  # target: the best guided reaches plain TPE's final hypervolume with this many times fewer evals
WALL_FRACTIONS = (0.25, 0.5, 1.0)  # of plain TPE's wall time, where every strategy's hypervolume is read
STAMP = "bench_elapsed_s"  # the extra metric: seconds from the search call to the end of each evaluation

RESNET_TRAIN = TrainSpec(epochs=6, lr=2e-3, batch_size=128)
RESNET_SUBSET = 10_000  # training images of the baseline and of the candidates' fine-tuning
RESNET_VAL_ROWS = 500
# 4 Adam steps, half distillation from the uncompressed model: the identity policy keeps the baseline's accuracy
# (at lr 5e-4 without distillation it lost 7 points of 59.5)
RESNET_FINETUNE = autocomp.FineTuneSpec(epochs=1, steps=4, batch_size=64, lr=1e-4, kd_alpha=0.5)
RESNET_QUICK_FINETUNE = autocomp.FineTuneSpec(epochs=1, steps=1, batch_size=32, lr=1e-4, kd_alpha=0.5)
# resnet20's reference: half the baseline's validation accuracy. At 90% plain TPE found no point inside the box
# in 100 evaluations on any seed (its best scored 32-42% against the baseline's 59%): a target of 0 says nothing
REFERENCE_ACCURACY_SHARE = 0.5
LM_VAL_ROWS = 128  # validation blocks of BLOCK bytes (one evaluation batch)
LM_REFERENCE_PPL = 1.5  # lm's reference: 1.5 x the fp32 model's validation perplexity

COLUMNS = ("model", "strategy", "evals", "hv_final", "evals_to_tpe_hv", "eval_s_to_tpe_hv", "wall_s_to_tpe_hv",
           "wall_s", *(f"hv_at_tpe_wall_{round(100 * f)}" for f in WALL_FRACTIONS), "reached",
           "metric_err_median", "metric_err_p90", "size_relerr_median", "size_relerr_p90", "screened_share",
           "local_share", "knapsack_uncovered", "proxy_s", "proxy_in_evals", "proxy_rank_corr", "eval_s_median")
TO_TPE_HV = ("evals_to_tpe_hv", "eval_s_to_tpe_hv", "wall_s_to_tpe_hv")


@dataclass
class Case:
    """One model of the bench: what its searches get and how a trial list becomes a hypervolume.

    Attributes:
        model: The trained model searched.
        val: The (capped) validation data every candidate is scored on.
        space: The search space.
        metric: The first objective (the task's metric) and `direction` its direction.
        direction: "maximize" or "minimize".
        reference: The hypervolume's reference point (metric, log10 size_bytes).
        budget: Plain TPE's evaluations; `allocator_budget` those of the strategies with a measured sensitivity
            phase.
        allocator_budget: See `budget`.
        levels: Values per knob of the sensitivity phase; `sweep` the allocator's budgets.
        sweep: See `levels`.
        search: Further keyword arguments of `autocomp.search` (task, objectives, data for fine-tuning...).
        settings: What results.json says about the model.
    """

    model: nn.Module
    val: tuple[Any, Any]
    space: Any
    metric: str
    direction: str
    reference: tuple[float, float]
    budget: int
    allocator_budget: int
    levels: int
    sweep: int
    search: dict[str, Any]
    settings: dict[str, Any]


def evals_to_reach(curve: list[float], target: float) -> int | None:
    """The first k (1-based) whose hypervolume reaches `target` (within 1e-12), None when none does.

    A target of 0 (plain TPE found no point inside the reference box) is reached by the first point inside
    it, not by the first trial: nothing is not a front to match.
    """
    return next((k + 1 for k, hv in enumerate(curve) if hv >= target - 1e-12 and hv > 0), None)


def finish_times(trials: Sequence[Any]) -> list[float]:
    """Seconds from the search call to each trial's end (non-decreasing, in ask order).

    From the `STAMP` metric each evaluation records as it ends; a trial without one (answered from the
    journal, or stopped before scoring) ends with the trial before it.
    """
    out, last = [], 0.0
    for t in trials:
        stamp = t.metrics.get(STAMP)
        last = max(last, float(stamp)) if stamp is not None else last
        out.append(last)
    return out


def hv_at_time(curve: Sequence[float], finish: Sequence[float], seconds: float) -> float:
    """The hypervolume of the trials finished within `seconds` (0 when none; the final one once all are)."""
    k = bisect.bisect_right(list(finish), seconds + 1e-9)
    return curve[k - 1] if k else 0.0


def _median(values: list[Any], missing_is_worst: bool = False) -> float | None:
    """The median of the values given; with `missing_is_worst` a None (never reached) counts as infinite."""
    got = [math.inf if v is None and missing_is_worst else v for v in values]
    got = [v for v in got if v is not None]
    median = statistics.median(got) if got else None
    return None if median == math.inf else median


def choose_parts(only: str | Sequence[str] | None, quick: bool) -> tuple[str, ...]:
    """The parts to run: `only` (names or one comma-separated text), else lenet300 when quick, else all.

    Raises:
        AutocompError: a name that is not a part, or none given.
    """
    if only is None:
        return ("lenet300",) if quick else PARTS
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise AutocompError(f"bench efficiency: unknown part {', '.join(repr(n) for n in unknown)} in --only "
                            f"(parts: {', '.join(PARTS)})")
    if not names:
        raise AutocompError(f"bench efficiency: --only names no part (parts: {', '.join(PARTS)})")
    return tuple(p for p in PARTS if p in names)


# ------------------------------------------------------------------------------------------------- models


def lenet300_case(quick: bool, data_dir: str | None, runs_dir: str, log: Callable[[str], None]) -> Case:
    """LeNet-300-100 on MNIST as `bench search` has it: no fine-tuning, (accuracy, log10 bytes) from 0.90."""
    train = TrainSpec(epochs=1, lr=1e-3) if quick else TrainSpec(epochs=10, lr=1e-3)
    model, splits = cached_baseline("lenet300", "mnist", data_dir, train, runs_dir, subset=2000 if quick else None,
                                    log=log)
    val = (splits.val[0][:1000], splits.val[1][:1000]) if quick else splits.val
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    budget = QUICK_BUDGET if quick else BUDGETS["lenet300"][0]
    levels, sweep = (QUICK_ALLOCATION if quick else ALLOCATION)["lenet300"]
    return Case(model, val, search_bench.space(), "accuracy", "maximize",
                (search_bench.REFERENCE_ACCURACY, math.log10(fp32_bytes)), budget, budget, levels, sweep,
                {"calibration_data": (splits.train[0][:256], splits.train[1][:256])},
                {"space": "search_spaces/lenet300_mnist.yaml", "data": "MNIST" + (" (2000 rows)" if quick else ""),
                 "finetune": None, "val_rows": len(val[1]), "fp32_bytes": fp32_bytes,
                 "hypervolume": f"over (accuracy, log10 size_bytes), reference ({search_bench.REFERENCE_ACCURACY}, "
                                f"log10 {fp32_bytes})"})


def resnet20_space(quick: bool) -> list[dict[str, Any]]:
    """Pruning ratio and weight bits of every conv and the fc, rank of the 3x3 convs: per layer (quick: shared)."""
    prune = {"ratio": {"float": [0.0, 0.8], "step": 0.1}}
    bits = {"bits": {"choice": [3, 4, 6, 8, 32]}}
    return [
        {"name": "convs", "layers": [r"re:layer\d\.\d\.conv\d"], "shared": quick,
         "primitives": {"prune": prune, "quantize": bits, "lowrank": {"rank_ratio": {"choice": [0.5, 1.0]}}}},
        {"name": "edges", "layers": ["conv1", "fc", r"re:layer\d\.0\.shortcut\.0"], "shared": quick,
         "primitives": {"prune": dict(prune), "quantize": dict(bits)}},
    ]


def resnet20_case(quick: bool, data_dir: str | None, runs_dir: str, log: Callable[[str], None]) -> Case:
    """ResNet-20 on CIFAR-10: a baseline trained briefly (cached), each candidate fine-tuned for a few steps."""
    train = TrainSpec(epochs=1, lr=2e-3, batch_size=128) if quick else RESNET_TRAIN
    subset = 2000 if quick else RESNET_SUBSET
    start = time.perf_counter()
    model, splits = cached_baseline("resnet20", "cifar10", data_dir, train, runs_dir, subset=subset, log=log)
    baseline_s = time.perf_counter() - start
    rows = 200 if quick else RESNET_VAL_ROWS
    val = (splits.val[0][:rows], splits.val[1][:rows])
    finetune = RESNET_QUICK_FINETUNE if quick else RESNET_FINETUNE
    base = accuracy(model, val)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    budget, allocator_budget = QUICK_BUDGETS["resnet20"] if quick else BUDGETS["resnet20"]
    levels, sweep = (QUICK_ALLOCATION if quick else ALLOCATION)["resnet20"]
    reference = (REFERENCE_ACCURACY_SHARE * base, math.log10(fp32_bytes))
    return Case(model, val, autocomp.SearchSpace.from_dict(resnet20_space(quick)), "accuracy", "maximize",
                reference, budget, allocator_budget, levels, sweep,
                {"train_data": splits.train, "finetune": finetune,
                 "calibration_data": (splits.train[0][:256], splits.train[1][:256])},
                {"space": resnet20_space(quick), "data": f"CIFAR-10, {len(splits.train[1])} training images",
                 "baseline": {"train": dataclasses.asdict(train), "val_accuracy": base,
                              "test_accuracy": accuracy(model, splits.test), "test_rows": len(splits.test[1]),
                              "seconds": baseline_s, "seconds_means": "training, or loading the cached weights"},
                 "finetune": dataclasses.asdict(finetune), "val_rows": rows, "fp32_bytes": fp32_bytes,
                 "hypervolume": f"over (accuracy, log10 size_bytes), reference ({REFERENCE_ACCURACY_SHARE} x "
                                f"{base:.4f}, log10 {fp32_bytes})"})


def lm_case(quick: bool, data_dir: str | None, runs_dir: str, log: Callable[[str], None]) -> Case:
    """The language model of `bench lm` (its cache), perplexity on a few validation blocks, no fine-tuning."""
    cache = Path(runs_dir) / "bench-lm" / "cache"
    text = lm_bench.load_corpus(cache, "fortunes", log)
    if quick:  # as `bench lm --quick`: a slice of the corpus
        text = dataclasses.replace(text, data=text.data[:120_000])
    splits = lm_bench.split_blocks(text.data)
    config = lm_bench.QUICK if quick else lm_bench.LMConfig()
    model, info = lm_bench.trained_lm(config, text, splits, cache / ("quick" if quick else "full"), log)
    rows = min(32 if quick else LM_VAL_ROWS, len(splits.val[1]))
    val = (splits.val[0][:rows], splits.val[1][:rows])
    fp32_ppl = lm_bench.perplexity(model, val)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    budget, allocator_budget = QUICK_BUDGETS["lm"] if quick else BUDGETS["lm"]
    levels, sweep = (QUICK_ALLOCATION if quick else ALLOCATION)["lm"]
    return Case(model, val, autocomp.SearchSpace.from_dict(lm_bench.search_space(quick)), "perplexity", "minimize",
                (LM_REFERENCE_PPL * fp32_ppl, math.log10(fp32_bytes)), budget, allocator_budget, levels, sweep,
                {"task": "language-model", "objectives": ["perplexity", "size_bytes"],
                 "calibration_data": (splits.train[0][:64], splits.train[1][:64])},
                {"space": lm_bench.search_space(quick), "data": text.name, "model": dataclasses.asdict(config),
                 "training": info, "finetune": None, "val_rows": rows, "val_tokens": rows * lm_bench.BLOCK,
                 "fp32_val_ppl": fp32_ppl, "fp32_bytes": fp32_bytes,
                 "hypervolume": f"over (perplexity, log10 size_bytes), reference ({LM_REFERENCE_PPL} x "
                                f"{fp32_ppl:.4f}, log10 {fp32_bytes})"})


CASES: dict[str, Callable[[bool, str | None, str, Callable[[str], None]], Case]] = {
    "lenet300": lenet300_case, "resnet20": resnet20_case, "lm": lm_case}


# ---------------------------------------------------------------------------------------------------- run


def _measures_sensitivity(optimizer: str, settings: dict[str, Any]) -> bool:
    """Whether a strategy begins with the measured sensitivity phase (knapsack or guided, without proxies)."""
    return (optimizer == "knapsack" or bool(settings.get("guided"))) and settings.get("sensitivity") != "fisher"


def _with_allocation(settings: dict[str, Any], case: Case) -> dict[str, Any]:
    """A strategy's settings on a part: its levels and sweep, and a guided one the hypervolume's reference.

    The part's levels and sweep where the strategy has them: a guided search sweeps what knapsack alone
    does, so it asks every allocation knapsack alone asks, then searches on from them. A guided search is
    told the region the bench scores (its `reference` setting: the reference box, in objective units), as
    a user states the models worth having; plain TPE has no such setting.
    """
    out = {**settings, **({"levels": case.levels} if "levels" in settings else {}),
           **({"sweep": case.sweep} if "sweep" in settings else {})}
    if settings.get("guided"):
        out["reference"] = [case.reference[0], 10.0 ** case.reference[1]]
    return out


def allocator_of(label: str) -> str:
    """The knapsack strategy a guided one starts from: the one with the same sensitivity source."""
    return "knapsack-fisher" if STRATEGIES[label][1].get("sensitivity") == "fisher" else "knapsack"


def front_points(trials: Sequence[Any], metric: str, direction: str, reference: tuple[float, float]
                 ) -> list[tuple[float, float]]:
    """The complete trials' Pareto front over (metric, log10 size_bytes), inside the reference box."""
    sign = 1.0 if direction == "maximize" else -1.0
    points = [q for q in search_bench.objective_points(trials, metric) if q is not None]
    inside = [q for q in points if sign * (q[0] - reference[0]) > 0 and q[1] < reference[1]]
    return [inside[i] for i in pareto_front(inside, (direction, "minimize"))] if inside else []


def uncovered(front: Sequence[tuple[float, float]], by: Sequence[tuple[float, float]], direction: str) -> int:
    """How many points of `front` no point of `by` weakly dominates (as good in both, metric and log size)."""
    sign = 1.0 if direction == "maximize" else -1.0
    return sum(not any(sign * (b[0] - a[0]) >= -1e-12 and b[1] <= a[1] + 1e-12 for b in by) for a in front)


def proxy_rank_correlation(measured: dict[str, Any], proxies: dict[str, Any]) -> dict[str, float | None]:
    """How well the Fisher proxies rank the one-knob changes: Spearman's rho against the measured drops.

    Over every (layer, knob, value) both sensitivity.json documents hold (the reference's value, each knob's
    first column, left out: the bench's spaces give every layer of a kind one reference value): the measured
    run's `drop` and the proxy run's `fisher` loss. "all" pools every kind of knob; each knob
    (e.g. "quantize.bits") also gets its own (None with fewer than 3 pairs or no spread).

    Args:
        measured: A measured run's sensitivity.json.
        proxies: A `sensitivity: fisher` run's sensitivity.json (same space).

    Returns:
        Knob (or "all") -> rho.
    """
    from scipy.stats import spearmanr  # scipy is the allocator's dependency already

    pairs: dict[str, list[tuple[float, float]]] = {}
    for knob, m in measured.get("knobs", {}).items():
        f = proxies.get("knobs", {}).get(knob, {})
        if "fisher" not in f:
            continue
        for layer, row in zip(measured["layers"], m["drop"]):
            if layer not in proxies["layers"]:
                continue
            fisher_row = f["fisher"][proxies["layers"].index(layer)]
            for value, drop in zip(m["values"][1:], row[1:]):
                if value in f["values"] and drop is not None:
                    loss = fisher_row[f["values"].index(value)]
                    if loss is not None:
                        pairs.setdefault(knob, []).append((float(drop), float(loss)))
    pairs["all"] = [pair for knob in list(pairs) for pair in pairs[knob]]

    def rho(got: list[tuple[float, float]]) -> float | None:
        if len(got) < 3 or len({a for a, _ in got}) < 2 or len({b for _, b in got}) < 2:
            return None
        return float(spearmanr([a for a, _ in got], [b for _, b in got])[0])

    return {knob: rho(got) for knob, got in pairs.items()}


def run_case(part: str, case: Case, seeds: Sequence[int], runs_dir: str, log: Callable[[str], None],
             done: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Every strategy of `part` for each seed: its per-seed rows, and the table's rows (medians over seeds).

    `done` holds the per-seed rows of the parts run before; with this part's, it is written to
    partial.json after every seed, should the bench be stopped early.
    """
    strategies = {label: (STRATEGIES[label][0], _with_allocation(STRATEGIES[label][1], case))
                  for label in PART_STRATEGIES[part]}
    workdir = Path(runs_dir) / "bench-efficiency" / "runs" / part
    shutil.rmtree(workdir, ignore_errors=True)  # a bench measures from scratch
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in strategies}
    for seed in seeds:
        curves: dict[str, list[float]] = {}
        finish: dict[str, list[float]] = {}
        counted: dict[str, list[int]] = {}
        fronts: dict[str, list[tuple[float, float]]] = {}
        sensitivity: dict[str, dict[str, Any]] = {}  # each run's sensitivity.json, where it wrote one
        for label, (optimizer, settings) in strategies.items():
            budget = case.allocator_budget if _measures_sensitivity(optimizer, settings) else case.budget
            started = time.time()  # wall clock: the stamp below is read in the evaluating process

            def elapsed(_model: nn.Module, started: float = started) -> float:
                return time.time() - started

            res = autocomp.search(case.model, case.val, space=case.space, optimizer=optimizer,
                                  optimizer_settings=settings, trials=budget, seed=seed, runs_dir=workdir,
                                  name=f"{label}-s{seed}", progress=False, latency=LatencySpec(repeats=1, warmup=0),
                                  extra_metrics={STAMP: elapsed}, **case.search)
            wall = time.time() - started
            trials = sorted(res.trials, key=lambda t: t.id)
            curves[label] = search_bench.hypervolumes(trials, case.metric, case.direction, case.reference)
            fronts[label] = front_points(trials, case.metric, case.direction, case.reference)
            finish[label] = finish_times(trials)
            # evaluations so far after each journal row (a repeat answered from the journal is no evaluation)
            counted[label] = list(itertools.accumulate(int(t.evaluated) for t in trials))
            row: dict[str, Any] = {"model": part, "strategy": label, "seed": seed, "trials": budget,
                                   "evals": counted[label][-1] if trials else 0,
                                   "hv_final": curves[label][-1] if trials else 0.0,
                                   "wall_s": wall, "eval_seconds": [t.seconds for t in trials]}
            path = workdir / f"{label}-s{seed}" / "sensitivity.json"
            if path.is_file():  # the gradient proxies' wall time (the fisher rows' whole sensitivity step)
                sensitivity[label] = json.loads(path.read_text())
                row["proxy_s"] = sensitivity[label].get("fisher", {}).get("seconds")
            seconds = [t.seconds for t in trials if t.evaluated]
            row["eval_s_median"] = statistics.median(seconds) if seconds else None
            if row.get("proxy_s") is not None and row["eval_s_median"]:  # the proxies' wall time in evaluations
                row["proxy_in_evals"] = row["proxy_s"] / row["eval_s_median"]
            surrogate = workdir / f"{label}-s{seed}" / "surrogate.json"
            if surrogate.is_file():
                summary = json.loads(surrogate.read_text())["summary"]
                error = summary.get("error", {})
                row.update(metric_err_median=error.get("median", [None])[0],
                           metric_err_p90=error.get("p90", [None])[0],
                           size_relerr_median=error.get("relative_median", [None, None])[1],
                           size_relerr_p90=error.get("relative_p90", [None, None])[1],
                           screened_share=summary["screened_share"],
                           local_share=summary.get("local", 0) / max(summary.get("asked", 0), 1))
            per[label].append(row)
            log(f"  {part} seed {seed} {label:13s} {len(trials):4d} evals  hv {row['hv_final']:.4f}  wall {wall:.0f} s")
        target = curves["tpe"][-1]
        tpe_wall = finish["tpe"][-1] if finish["tpe"] else 0.0
        for label in strategies:
            row = per[label][-1]
            k = evals_to_reach(curves[label], target)
            row["evals_to_tpe_hv"] = counted[label][k - 1] if k else None
            row["eval_s_to_tpe_hv"] = sum(row["eval_seconds"][:k]) if k else None
            row["wall_s_to_tpe_hv"] = finish[label][k - 1] if k else None
            row["tpe_wall_s"], row["tpe_hv"] = tpe_wall, target
            for fraction in WALL_FRACTIONS:
                row[f"hv_at_tpe_wall_{round(100 * fraction)}"] = hv_at_time(curves[label], finish[label],
                                                                            fraction * tpe_wall)
            if label == "knapsack-fisher" and "knapsack" in strategies:  # the proxies against the measured drops
                row["proxy_rank_corr_by_knob"] = proxy_rank_correlation(sensitivity["knapsack"], sensitivity[label])
                row["proxy_rank_corr"] = row["proxy_rank_corr_by_knob"]["all"]
            allocator = allocator_of(label) if label in GUIDED else None
            if allocator in fronts:  # knapsack's front points at budgets where this guided search has nothing as good
                row["knapsack_front"] = len(fronts[allocator])
                row["knapsack_uncovered"] = uncovered(fronts[allocator], fronts[label], case.direction)
        partial = Path(runs_dir) / "bench-efficiency" / "partial.json"
        partial.write_text(json.dumps({**done, part: _without_lists(per)}, indent=1) + "\n")
    table = []
    for label in strategies:
        rows = per[label]
        reached = [r["evals_to_tpe_hv"] for r in rows]
        entry: dict[str, Any] = {"model": part, "strategy": label,
                                 "reached": f"{sum(k is not None for k in reached)}/{len(rows)}"}
        for column in COLUMNS:
            if column not in entry:
                # a seed that never reached TPE's hypervolume counts as never: the median is None unless most did
                entry[column] = _median([r.get(column) for r in rows], missing_is_worst=column in TO_TPE_HV)
        table.append(entry)
    return table, per


def _without_lists(per: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {k: [{c: v for c, v in r.items() if c != "eval_seconds"} for r in rows] for k, rows in per.items()}


def run(*, quick: bool, data_dir: str | None, runs_dir: str, only: str | Sequence[str] | None = None,
        log: Callable[[str], None] = print) -> BenchResult:
    """Run every strategy on each chosen model and seed; collect evaluations to plain TPE's hypervolume.

    Args:
        quick: tiny budgets and data (every code path in seconds to minutes).
        data_dir: the folder holding mnist/ and cifar10/ (lm fetches its corpus into its cache).
        runs_dir: results go to runs_dir/bench-efficiency; the baselines are cached under runs_dir.
        only: the parts to run (see `choose_parts`).
        log: where progress lines go.

    Raises:
        AutocompError: an unknown part in `only`, before anything runs.
    """
    parts = choose_parts(only, quick)
    seeds = (0,) if quick else (0, 1, 2)
    result = BenchResult("efficiency", {
        "quick": quick, "parts": list(parts), "seeds": list(seeds),
        "strategies": {k: {"optimizer": o, "settings": s} for k, (o, s) in STRATEGIES.items()},
        "reach": "evaluations from the first trial (sensitivity phase included) to plain TPE's final hypervolume "
                 "of the same seed; the gradient proxies are no evaluation: their wall time is in wall_s_to_tpe_hv "
                 "and, in evaluations, proxy_in_evals",
        "errors": "surrogate prediction at ask time vs measured, candidates it let through: first objective "
                  "absolute, size_bytes relative",
        "wall": f"hv_at_tpe_wall_P: the hypervolume of the trials finished within P% of plain TPE's wall time "
                f"(its last trial's end) of the same seed; trial ends from the '{STAMP}' metric each evaluation "
                "records (seconds since the search call)", "models": {}, "per_seed": {},
    })
    done: dict[str, Any] = {}
    for part in parts:
        case = CASES[part](quick, data_dir, runs_dir, log)
        strategies = PART_STRATEGIES[part]
        result.settings["models"][part] = {
            **case.settings, "budget": case.budget, "allocator_budget": case.allocator_budget,
            "levels": case.levels, "sweep": case.sweep,
            "strategies": {label: {"optimizer": STRATEGIES[label][0],
                                   "settings": _with_allocation(STRATEGIES[label][1], case)}
                           for label in strategies}}
        table, per = run_case(part, case, seeds, runs_dir, log, done)
        result.rows += table
        done[part] = _without_lists(per)
        result.settings["per_seed"][part] = done[part]

        # the target: plain TPE's evaluations over the best guided optimizer's, median over seeds (a seed that
        # never reached it counts as the strategy's whole budget)
        def reduction(label: str, per: dict[str, list[dict[str, Any]]] = per, budget: int = case.budget) -> float:
            return statistics.median(budget / (r["evals_to_tpe_hv"] or r["trials"]) for r in per[label])

        guided = [label for label in GUIDED if label in strategies]
        best = max(guided, key=reduction)
        name = f"{part}_best_guided_{best}_fewer_evals_than_tpe_to_its_final_hv"
        result.target(name, reduction(best), ">=", REDUCTION)
        if all(r["tpe_hv"] <= 0 for r in per["tpe"]):  # met or not, it says nothing: say so beside it
            result.targets[name]["vacuous"] = ("plain TPE's final hypervolume is 0 on every seed (no point inside "
                                               "the reference box): any point inside reaches it")
        # not worse than the allocator it starts from, at any budget: every point of knapsack's front (same
        # sensitivity source, same seed) has a point of the guided search's front as good in both objectives.
        # It holds by construction where the guided search asked every allocation knapsack asked
        for label in guided:
            counts = [r.get("knapsack_uncovered") for r in per[label]]
            if None in counts:  # its knapsack did not run on this part
                continue
            name = f"{part}_{label}_{allocator_of(label).replace('-', '_')}_front_points_not_matched"
            result.target(name, max(counts), "<=", 0)
            result.targets[name]["by_construction"] = ("the guided search asks every allocation its knapsack asks "
                                                       "(the same sweep and seed) before its own candidates")
    return result


def main(*, quick: bool, data_dir: str | None, runs_dir: str, only: str | Sequence[str] | None = None) -> BenchResult:
    """Run the bench (`only`: some of its parts: lenet300, resnet20, lm) and publish its table and targets."""
    return publish(run(quick=quick, data_dir=data_dir, runs_dir=runs_dir, only=only), COLUMNS, runs_dir)
