"""Hard budgets on structural metrics are checked before fine-tuning: outside one, a candidate is recorded
`infeasible` without being fine-tuned or scored."""

import json

import pytest

import autocomp
import autocomp.evaluate
from autocomp.config import parse_run_spec
from autocomp.errors import CandidateInfeasible
from autocomp.evaluate import CompressionEvaluator
from autocomp.finetune import FineTuneSpec
from autocomp.objective import Constraint
from autocomp.policy import Policy
from autocomp.testing.tiny import fast_latency

SPACE_YAML = """
version: 1
model: {name: tiny}
data: {name: tiny}
groups:
  - name: hidden
    layers: ["1", "3"]
    primitives:
      channels: {ratio: {float: [0.0, 0.75], step: 0.25}}
      prune: {ratio: {choice: [0.0, 0.5]}}
"""
FINETUNE = FineTuneSpec(epochs=1, steps=4, batch_size=32, lr=1e-3)
STRUCTURAL = ("params_stored", "flops", "peak_activation_bytes")


@pytest.fixture()
def space():
    return parse_run_spec(SPACE_YAML).space


def policies(space, model):
    bound = space.bind(model)
    for ratio in (0.0, 0.25, 0.5, 0.75):
        params = {p.name: ratio if p.knob == "channels.ratio" else 0.5 for p in bound.params}
        yield Policy.from_params(bound, params)


def test_structural_metrics_are_the_same_before_and_after_fine_tuning(tiny, space):
    model, data = tiny
    evaluator = CompressionEvaluator(model, data, latency=fast_latency(), train=data, finetune=FINETUNE)
    flops = []
    for policy in policies(space, model):
        before = evaluator.structure_metrics(evaluator._compress(policy))
        after = evaluator(policy)
        assert {k: after[k] for k in STRUCTURAL} == {k: before[k] for k in STRUCTURAL}
        flops.append(after["flops"])
    assert flops == sorted(flops, reverse=True) and flops[0] > flops[-1]  # the channel ratios do shrink it


def test_a_candidate_outside_a_structural_bound_is_never_fine_tuned(tiny, space, monkeypatch):
    model, data = tiny
    evaluator = CompressionEvaluator(model, data, latency=fast_latency(), train=data, finetune=FINETUNE)
    tuned = []
    real = autocomp.evaluate.finetune_as_evaluated
    monkeypatch.setattr(autocomp.evaluate, "finetune_as_evaluated",
                        lambda m, *a, **k: tuned.append(1) or real(m, *a, **k))
    wide, narrow = list(policies(space, model))[::3]
    bound = evaluator.structure_metrics(evaluator._compress(narrow))["flops"]
    limits = (Constraint(metric="flops", max=bound), Constraint(metric="accuracy", min=0.99))
    with pytest.raises(CandidateInfeasible, match=r"flops \d+ > max \d+") as skipped:
        evaluator(wide, limits=limits)
    assert not tuned and set(skipped.value.metrics) >= set(STRUCTURAL) and "accuracy" not in skipped.value.metrics
    assert skipped.value.metrics["flops"] > bound
    # within the structural bound it is fine-tuned and scored; the accuracy bound is the runner's to judge
    metrics = evaluator(narrow, limits=limits)
    assert tuned == [1] and metrics["flops"] == bound and "accuracy" in metrics


def test_search_records_skipped_candidates_as_infeasible_and_resumes(tmp_path, tiny, space):
    model, data = tiny
    args = dict(space=space, optimizer="tpe", optimizer_settings={"n_startup_trials": 4}, seed=0, runs_dir=tmp_path,
                name="r", progress=False, latency=fast_latency(), train_data=data, finetune=FINETUNE,
                objectives=["accuracy", "size_bytes"], constraints=[Constraint(metric="flops", max="0.5x")])
    result = autocomp.search(model, data, trials=10, **args)
    bound = json.loads((tmp_path / "r" / "run.json").read_text())["constraints_resolved"][0]["max"]
    asked = [t for t in result.trials if not t.copied]  # (an ask repeating one is answered from the journal)
    skipped = [t for t in asked if t.status == "infeasible"]
    scored = [t for t in asked if t.status == "complete"]
    # the budget counts fine-tuned candidates: the skipped ones come on top
    assert skipped and len(skipped) + len(scored) == len(asked) and len(scored) == 10
    assert [t for t in result.trials if t.evaluated] == scored
    for t in skipped:
        assert t.metrics["flops"] > bound and "accuracy" not in t.metrics and t.violation > 0 and t.values is None
        assert "before fine-tuning: flops" in t.error
    assert all(t.metrics["flops"] <= bound and t.violation == 0 for t in scored)
    assert {t.id for t in result.pareto} <= {t.id for t in scored}
    journal = [json.loads(line) for line in (tmp_path / "r" / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in journal if r["status"] == "infeasible" and not r["worker"].startswith("journal:")) \
        == [t.id for t in skipped]
    more = autocomp.search(model, data, trials=14, resume=True, **args)
    assert sum(t.evaluated for t in more.trials) == 14
    assert [t.to_record() for t in more.trials[:len(result.trials)]] == [t.to_record() for t in result.trials]
