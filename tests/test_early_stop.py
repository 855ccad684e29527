"""Multi-fidelity: learning curves in the journal become bars, and weak candidates are `pruned`."""

import json

import autocomp
from autocomp.early_stop import bars, curve, rungs
from autocomp.finetune import FineTuneSpec
from autocomp.testing.tiny import fast_latency, tiny_data, tiny_space


def test_rungs_and_bars_follow_the_median_and_halving_rules():
    assert rungs("median", 4) == [1, 2, 3] and rungs("halving", 10) == [1, 3, 9] and rungs("none", 5) == []
    assert rungs("halving", 9, min_epochs=2, eta=2) == [2, 4, 8]
    curves = [{1: a / 10, 3: a / 10 + 0.05} for a in range(9)]
    assert bars(curves, "median", 4, startup=5) == {1: 0.4, 3: 0.45}
    assert bars(curves, "halving", 9, startup=3) == {1: 0.6, 3: 0.65}  # the best third of 9 go on
    assert bars(curves[:4], "median", 4, startup=5) == {}  # too few curves yet
    assert curve({"accuracy@2": 0.5, "accuracy@10": 0.7, "accuracy": 0.9}) == {2: 0.5, 10: 0.7}


def test_curve_reads_the_named_metric_and_skips_suffixes_that_are_not_epochs():
    # a capped run's re-scored front point: `<metric>@capped` is the value the search saw, not an epoch
    metrics = {"perplexity@1": 9.0, "perplexity@2": 7.5, "perplexity@capped": 7.9, "perplexity": 7.0,
               "accuracy@1": 0.5, "token_accuracy@1": 0.4, "perplexity@-1": 1.0, "perplexity@": 2.0}
    assert curve(metrics, "perplexity") == {1: 9.0, 2: 7.5}
    assert curve(metrics) == {1: 0.5}  # accuracy by default; token_accuracy@1 is another metric
    assert curve({"accuracy@capped": 0.8, "accuracy@3": 0.7}) == {3: 0.7}


def test_weak_candidates_stop_early_and_are_recorded_as_pruned(tmp_path, tiny):
    model, data = tiny
    spec = FineTuneSpec(epochs=3, batch_size=32, lr=1e-3, early_stop="median", startup=2)
    result = autocomp.search(model, data, space=tiny_space(), trials=14, seed=1, runs_dir=tmp_path, name="mf",
                             progress=False, latency=fast_latency(), train_data=tiny_data(256, seed=3),
                             finetune=spec)
    pruned = [t for t in result.trials if t.status == "pruned"]
    complete = [t for t in result.trials if t.status == "complete"]
    assert pruned and complete
    for t in pruned:  # stopped after an epoch, below the bar it was given, with its curve so far
        assert "pruned after" in t.error and t.values is None and "size_bytes" not in t.metrics
        assert 1 <= max(curve(t.metrics)) < spec.epochs
    for t in complete:
        assert sorted(curve(t.metrics)) == [1, 2]
    assert not {t.id for t in pruned} & {t.id for t in result.pareto}
    journal = [json.loads(line) for line in (tmp_path / "mf" / "trials.jsonl").read_text().splitlines()]
    assert {r["status"] for r in journal} == {"complete", "pruned"}
