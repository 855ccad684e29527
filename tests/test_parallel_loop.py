"""The search loop with several workers: optimizers kept busy, results out of order, resume still exact."""

import pytest

from autocomp.execution import InProcessExecutor, Task, run_all
from autocomp.objective import as_objectives
from autocomp.optimizers import make_optimizer
from autocomp.runner import PATIENCE, front_of, run_loop
from autocomp.store import RunStore
from autocomp.testing.conformance import reference_space
from autocomp.testing.executors import FaultyEvaluator, ScrambledExecutor, check_faults, hashed_metrics, sample_policies

SPACE = reference_space()
OBJECTIVES = as_objectives(("accuracy", "size_bytes"))
SETTINGS = {"nsga2": {"population": 6}, "rl": {"warmup": 4, "batch_size": 8}}


def search(path, name, total, workers=3, store=None):
    opt = make_optimizer(name, SPACE, directions=["maximize", "minimize"], seed=3, **SETTINGS.get(name, {}))
    executor = ScrambledExecutor(hashed_metrics, workers)
    store = store or RunStore.create(path, space_yaml="", run_info={})
    try:
        trials = run_loop(store, SPACE, opt, executor, OBJECTIVES, (), total, progress=False)
    finally:
        store.close()
    return trials, executor


@pytest.mark.parametrize("name", ["random", "tpe", "nsga2", "rl"])
def test_every_worker_is_kept_busy_and_every_trial_journaled_once(tmp_path, name):
    trials, executor = search(tmp_path / "r", name, total=20)
    assert executor.most_in_flight == 3  # asked again whenever a worker freed (nsga2: within a generation)
    # 20 evaluated; a repeated ask (nsga2 can breed a twin) is journaled as a copy on top, not evaluated
    assert sum(t.evaluated for t in trials) == 20 and all(t.evaluated or t.copied for t in trials)
    assert [t.id for t in trials] == list(range(len(trials)))
    journal = [r["id"] for r in RunStore(tmp_path / "r").trials()]
    assert sorted(journal) == list(range(len(trials))) and journal != sorted(journal)  # out of order, none twice


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", ["tpe", "nsga2", "rl"])
@pytest.mark.parametrize("crash_at", [5, 11])
def test_parallel_run_killed_mid_way_resumes_to_the_same_trials(tmp_path, name, crash_at):
    whole, _ = search(tmp_path / "whole", name, total=16)

    class CrashingStore(RunStore):
        saves = 0

        def save_checkpoint(self, state):  # a kill after a trial was journaled (and told), before the save
            CrashingStore.saves += 1
            if CrashingStore.saves == crash_at:
                raise Crash
            super().save_checkpoint(state)

    store = CrashingStore.create(tmp_path / "cut", space_yaml="", run_info={})
    with pytest.raises(Crash):
        search(tmp_path / "cut", name, total=16, store=store)
    kept = list(RunStore(tmp_path / "cut").trials())
    assert 0 < len(kept) < 16
    resumed, _ = search(tmp_path / "cut", name, total=16, store=RunStore.open(tmp_path / "cut"))
    assert [(t.id, t.params) for t in resumed] == [(t.id, t.params) for t in whole]
    journal = list(RunStore(tmp_path / "cut").trials())
    assert journal[: len(kept)] == kept and sorted(r["id"] for r in journal) == list(range(len(whole)))


def test_in_process_failures_and_timeout_are_recorded(tmp_path):
    policies = sample_policies(SPACE, 5)
    faults = {1: "raise", 2: "nan", 3: "hang"}
    evaluate = FaultyEvaluator(hashed_metrics, {policies[i].fingerprint(): f for i, f in faults.items()}, tmp_path)
    outcomes = check_faults(InProcessExecutor(evaluate, timeout=0.5), policies, faults)
    assert outcomes[3].seconds < 5


def test_run_all_streams_every_outcome():
    executor = ScrambledExecutor(hashed_metrics, workers=2)
    policies = sample_policies(SPACE, 4)
    outcomes = list(run_all(executor, [Task(i, p) for i, p in enumerate(policies)]))
    assert [o.trial_id for o in outcomes] == [3, 2, 1, 0]
    assert all(o.metrics == hashed_metrics(p) for o, p in zip(outcomes, reversed(policies)))


def test_an_ask_equal_to_a_finished_trial_is_answered_from_the_journal(tmp_path):
    from autocomp.space import BoundSpace
    from autocomp.space.params import Choice, Param

    # two possible candidates: random search asks each again and again
    space = BoundSpace(params=(Param(name="fc1.quantize.bits", domain=Choice(values=(4, 8)), primitive="quantize",
                                     knob="quantize.bits", layers=("fc1",), compresses=-1),), layers=("fc1",))
    evaluated = []

    def evaluate(policy):
        evaluated.append(policy.fingerprint())
        return hashed_metrics(policy)

    store = RunStore.create(tmp_path / "r", space_yaml="", run_info={})
    opt = make_optimizer("random", space, directions=["maximize", "minimize"], seed=0)
    try:  # 10 evaluations asked for, only 2 exist: copies do not count, and the search stops once converged
        trials = run_loop(store, space, opt, InProcessExecutor(evaluate), OBJECTIVES, (), 10, progress=False)
    finally:
        store.close()
    assert len(evaluated) == len(set(evaluated)) == 2  # each evaluated once
    first = {}
    for t in trials:
        key = t.params["fc1.quantize.bits"]
        if t.copied:
            source = first[key]
            assert t.worker == f"journal:{source.id}" and (t.metrics, t.values) == (source.metrics, source.values)
        else:
            first[key] = t
    copies = [t.id for t in trials if t.copied]
    assert len(first) == 2 and copies[-PATIENCE:] == list(range(len(trials) - PATIENCE, len(trials)))
    assert [r["id"] for r in RunStore(tmp_path / "r").trials()] == list(range(len(trials)))
    assert {t.id for t in front_of(trials, OBJECTIVES)} <= {t.id for t in first.values()}


def test_candidates_skipped_before_fine_tuning_do_not_use_the_budget(tmp_path):
    """`total` counts fine-tuned evaluations: infeasible skips are journaled and told, then asked past; a
    space with nothing feasible stops after PATIENCE skips in a row instead of asking forever."""
    from autocomp.errors import CandidateInfeasible
    from autocomp.objective import Constraint

    def skipped_when(feasible):
        def evaluate(policy, *, limits=()):
            if not feasible(policy):
                raise CandidateInfeasible("before fine-tuning: flops 2 > max 1", {"flops": 2.0})
            return {**hashed_metrics(policy), "flops": 1.0}
        return evaluate

    def loop(name, evaluate):
        store = RunStore.create(tmp_path / name, space_yaml="", run_info={})
        try:
            opt = make_optimizer("random", SPACE, directions=["maximize", "minimize"], seed=0)
            return run_loop(store, SPACE, opt, InProcessExecutor(evaluate), OBJECTIVES,
                            (Constraint(metric="flops", max=1.0),), 8, progress=False)
        finally:
            store.close()

    trials = loop("half", skipped_when(lambda p: int(p.fingerprint()[:8], 16) % 2))
    skipped = [t for t in trials if t.status == "infeasible" and not t.copied]
    assert sum(t.evaluated for t in trials) == 8 == sum(t.status == "complete" and not t.copied for t in trials)
    assert skipped and all(t.violation == 1.0 and not t.evaluated for t in skipped)
    assert len(RunStore(tmp_path / "half").trials()) == len(trials)  # the skips are journaled too
    trials = loop("none", skipped_when(lambda p: False))
    assert len(trials) == PATIENCE and not any(t.evaluated for t in trials)
