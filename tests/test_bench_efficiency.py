"""`autocomp bench efficiency --quick` end to end on tiny data: the contract and targets from the rows."""

import json

from test_bench_quick import contract  # the bench contract, as every bench's quick test checks it

from autocomp.testing.tiny import fit, tiny_data, tiny_mlp, tiny_space
from autocomp.zoo import Splits


def test_bench_efficiency_quick(tmp_path, monkeypatch):
    import autocomp.bench.efficiency as bench

    data = tiny_data(256)
    splits = Splits(train=data, val=data, test=data, description="tiny")
    monkeypatch.setattr(bench, "cached_baseline", lambda *a, **k: (fit(tiny_mlp(), data), splits))
    monkeypatch.setattr(bench.search_bench, "space", tiny_space)
    monkeypatch.setattr(bench, "QUICK_BUDGET", 24)  # 13 sensitivity points, the allocations, then screened asks
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path))
    doc = contract(tmp_path / "bench-efficiency" / "results.json", "efficiency")
    rows = {r["strategy"]: r for r in doc["rows"]}
    assert set(rows) == set(bench.PART_STRATEGIES["lenet300"]) == set(bench.STRATEGIES)
    assert rows["tpe"]["evals"] == 24 and rows["tpe"]["evals_to_tpe_hv"] <= 24  # TPE reaches its own final
    assert rows["knapsack"]["evals"] < 24  # the allocator stops after its sweep
    # with the proxies: no sensitivity phase, only the reference and the allocations, and their wall time
    assert rows["knapsack-fisher"]["evals"] <= 1 + bench.SWEEP and rows["knapsack-fisher"]["proxy_s"] > 0
    assert rows["knapsack"]["proxy_s"] is None and rows["tpe-guided-fisher"]["proxy_s"] > 0
    # the proxies' ranking of the one-knob changes against knapsack's measured drops, from the two files
    docs = [json.loads((tmp_path / "bench-efficiency" / "runs" / "lenet300" / f"{name}-s0" / "sensitivity.json")
                       .read_text()) for name in ("knapsack", "knapsack-fisher")]
    assert rows["knapsack-fisher"]["proxy_rank_corr"] == bench.proxy_rank_correlation(*docs)["all"] is not None
    per = doc["settings"]["per_seed"]["lenet300"]
    for label in bench.GUIDED:  # the surrogate's figures come from the run's surrogate.json
        summary = json.loads((tmp_path / "bench-efficiency" / "runs" / "lenet300" / f"{label}-s0" / "surrogate.json")
                             .read_text())["summary"]
        assert per[label][0]["screened_share"] == summary["screened_share"]
        assert rows[label]["metric_err_median"] == summary["error"]["median"][0]
    for label in bench.GUIDED:  # the share of real asks that were front neighbours, from the same file
        summary = summary_of(tmp_path, label)
        assert per[label][0]["local_share"] == summary["local"] / summary["asked"]
    for label, [row] in per.items():  # counted again here from the journal: evaluated trials only
        lines = [json.loads(x) for x in (tmp_path / "bench-efficiency" / "runs" / "lenet300" / f"{label}-s0"
                                         / "trials.jsonl").read_text().splitlines() if x.strip()]
        evaluated = [t for t in lines if not t["worker"].startswith("journal") and t["status"] != "infeasible"]
        assert row["evals"] == len(evaluated) <= len(lines)
    # the target's value: plain TPE's budget over the best guided strategy's evaluations to TPE's hypervolume
    [(name, target)] = [(k, v) for k, v in doc["targets"].items() if k.startswith("lenet300_best_guided_")]
    best = name.removeprefix("lenet300_best_guided_").split("_fewer_")[0]
    reached = per[best][0]["evals_to_tpe_hv"] or per[best][0]["trials"]
    assert target["value"] == 24 / reached
    # the targets are there, each with its value and whether it was met (checked against `target` above)
    assert any(k.startswith("lenet300_best_guided_") for k in doc["targets"])
    def asked(name):
        path = tmp_path / "bench-efficiency" / "runs" / "lenet300" / f"{name}-s0" / "trials.jsonl"
        return [json.loads(x)["params"] for x in path.read_text().splitlines() if x.strip()]

    fp32 = doc["settings"]["models"]["lenet300"]["fp32_bytes"]
    for label in bench.GUIDED:  # a guided search asks what its knapsack asks (the same sweep) before its own
        start = asked(bench.allocator_of(label))
        assert asked(label)[: len(start)] == start
        # and is told the box the bench scores, in objective units: accuracy 0.90, the fp32 bytes
        run = json.loads((tmp_path / "bench-efficiency" / "runs" / "lenet300" / f"{label}-s0" / "run.json").read_text())
        reference = run["settings"]["optimizer_settings"]["reference"]
        assert reference[0] == bench.search_bench.REFERENCE_ACCURACY and abs(reference[1] - fp32) < 1e-6 * fp32
    assert "reference" not in json.loads((tmp_path / "bench-efficiency" / "runs" / "lenet300" / "tpe-s0" / "run.json")
                                         .read_text())["settings"]["optimizer_settings"]
    for label in bench.GUIDED:  # knapsack's front against the guided one's: counted here from the journals
        box = (bench.search_bench.REFERENCE_ACCURACY,
               __import__("math").log10(doc["settings"]["models"]["lenet300"]["fp32_bytes"]))
        ours, theirs = (_front(tmp_path / "bench-efficiency" / "runs" / "lenet300" / f"{name}-s0", box)
                        for name in (label, bench.allocator_of(label)))
        missing = sum(not any(b[0] >= a[0] and b[1] <= a[1] for b in ours) for a in theirs)
        assert per[label][0]["knapsack_uncovered"] == missing and per[label][0]["knapsack_front"] == len(theirs)
        name = f"lenet300_{label}_{bench.allocator_of(label).replace('-', '_')}_front_points_not_matched"
        assert doc["targets"][name]["value"] == missing
    assert {r["model"] for r in doc["rows"]} == {"lenet300"}  # --quick alone: lenet300 only


def _front(run_dir, reference):
    """A run's (accuracy, log10 bytes) Pareto front inside the reference box, from its journal."""
    import math

    lines = [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines() if x.strip()]
    points = [(t["metrics"]["accuracy"], math.log10(t["metrics"]["size_bytes"])) for t in lines
              if t["status"] == "complete"]
    points = [p for p in points if p[0] > reference[0] and p[1] < reference[1]]
    return [p for p in points if not any(o[0] >= p[0] and o[1] <= p[1] and o != p for o in points)]


def summary_of(tmp_path, label, part="lenet300"):
    """A guided run's surrogate.json summary."""
    path = tmp_path / "bench-efficiency" / "runs" / part / f"{label}-s0" / "surrogate.json"
    return json.loads(path.read_text())["summary"]


def _tiny_resnet20(monkeypatch, bench):
    """The resnet20 part on a narrow ResNet-20 and 8x8 images: the bench's own space binds to its layers."""
    import torch

    from autocomp.zoo import ResNet20

    data = tiny_data(256)
    splits = Splits(train=data, val=data, test=data, description="tiny")

    def baseline(name, dataset, *args, **kwargs):
        assert (name, dataset) == ("resnet20", "cifar10")
        torch.manual_seed(0)
        return fit(ResNet20(num_classes=4, width=0.25, in_channels=1), data, steps=30), splits

    monkeypatch.setattr(bench, "cached_baseline", baseline)


def _hv_of_run(run_dir, metric, direction, reference):
    """The final hypervolume of a run, recomputed here from its journal (not by the bench's code)."""
    import math

    from autocomp.pareto import hypervolume

    lines = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines() if line.strip()]
    points = [(t["metrics"][metric], math.log10(t["metrics"]["size_bytes"])) for t in lines
              if t["status"] == "complete"]
    return hypervolume(points, reference, (direction, "minimize")), lines


def _check_part(doc, part, bench, tmp_path, metric, direction, reference):
    rows = {r["strategy"]: r for r in doc["rows"]}
    assert set(rows) == set(bench.PART_STRATEGIES[part]) >= {"knapsack", "knapsack-fisher", "tpe", "tpe-guided-fisher"}
    assert {r["model"] for r in doc["rows"]} == {part} and doc["settings"]["parts"] == [part]
    per = doc["settings"]["per_seed"][part]
    budget, allocator_budget = bench.QUICK_BUDGETS[part]
    # a measured sensitivity phase gets the larger budget; the proxies' strategies plain TPE's
    assert per["tpe"][0]["trials"] == per["tpe-guided-fisher"][0]["trials"] == budget
    assert per["knapsack"][0]["trials"] == allocator_budget
    assert rows["tpe"]["evals_to_tpe_hv"] <= rows["tpe"]["evals"]
    for label, [row] in per.items():
        run_dir = tmp_path / "bench-efficiency" / "runs" / part / f"{label}-s0"
        hv, trials = _hv_of_run(run_dir, metric, direction, reference)
        assert abs(row["hv_final"] - hv) <= 1e-9 * max(1.0, hv) and row["evals"] == len(trials)
        # every evaluation stamped its own end: within the search call, in ask order for one worker (a journal
        # copy carries the stamp of the trial it copies)
        stamps = [t["metrics"][bench.STAMP] for t in trials if not t["worker"].startswith("journal")]
        assert stamps and stamps == sorted(stamps) and stamps[-1] <= row["wall_s"]
        # equal wall time: never decreasing with more time, never above the final hypervolume
        at = [row[f"hv_at_tpe_wall_{p}"] for p in (25, 50, 100)]
        assert 0.0 <= at[0] <= at[1] <= at[2] <= row["hv_final"] + 1e-12
    assert per["tpe"][0]["hv_at_tpe_wall_100"] == per["tpe"][0]["hv_final"]  # plain TPE at its own wall time
    targets = doc["targets"]
    guided = {label for label in rows if label in bench.GUIDED}
    assert {f"{part}_{label}_{bench.allocator_of(label).replace('-', '_')}_front_points_not_matched"
            for label in guided} <= set(targets)
    [best] = [k for k in targets if k.startswith(f"{part}_best_guided_")]
    assert best.removeprefix(f"{part}_best_guided_").split("_fewer_")[0] in guided
    # a plain TPE that found nothing inside the reference box makes the reduction vacuous, and it says so
    assert ("vacuous" in targets[best]) == (per["tpe"][0]["tpe_hv"] == 0 == per["tpe"][0]["hv_final"])
    return per


def test_bench_efficiency_resnet20_part_fine_tunes(tmp_path, monkeypatch):
    import autocomp.bench.efficiency as bench

    _tiny_resnet20(monkeypatch, bench)
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path), only="resnet20")
    doc = contract(tmp_path / "bench-efficiency" / "results.json", "efficiency")
    model = doc["settings"]["models"]["resnet20"]
    reference = (bench.REFERENCE_ACCURACY_SHARE * model["baseline"]["val_accuracy"],
                 __import__("math").log10(model["fp32_bytes"]))
    per = _check_part(doc, "resnet20", bench, tmp_path, "accuracy", "maximize", reference)
    for label in per:  # every candidate was fine-tuned: the runs were started with the bench's short fine-tuning
        run = json.loads((tmp_path / "bench-efficiency" / "runs" / "resnet20" / f"{label}-s0" / "run.json").read_text())
        assert run["signature"]["finetune"]["epochs"] == 1 and run["signature"]["finetune"]["steps"] == 1
    assert per["tpe-guided-fisher"][0]["screened_share"] is not None  # guided got past the allocator to screening


def test_resnet20_space_is_per_layer_on_every_conv_and_the_fc():
    import torch

    import autocomp
    from autocomp.bench.efficiency import resnet20_space
    from autocomp.zoo import ResNet20

    model = ResNet20()
    bound = autocomp.SearchSpace.from_dict(resnet20_space(False)).bind(model, example=torch.zeros(1, 3, 32, 32))
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    names = {p.name for p in bound.params}
    for layer in [*convs, "fc"]:
        assert {f"{layer}.prune.ratio", f"{layer}.quantize.bits"} <= names, layer
    spatial = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
               and n != "conv1"]
    assert {f"{layer}.lowrank.rank_ratio" for layer in spatial} <= names and len(spatial) == 18
    assert len(names) == 2 * (len(convs) + 1) + 18
    shared = autocomp.SearchSpace.from_dict(resnet20_space(True)).bind(model, example=torch.zeros(1, 3, 32, 32))
    assert len(shared.params) == 5  # --quick: one setting per group


def test_bench_efficiency_lm_part_scores_perplexity(tmp_path, monkeypatch):
    import math

    import autocomp.bench.efficiency as bench
    from autocomp.bench import lm

    # the standard library's sources instead of Debian's fortunes: nothing downloads in a test
    monkeypatch.setattr(bench.lm_bench, "load_corpus", lambda cache, which, log=print: lm.stdlib_corpus(80_000))
    monkeypatch.setitem(bench.QUICK_BUDGETS, "lm", (8, 50))  # 40 sensitivity points, the allocations, then asks
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path), only=["lm"])
    doc = contract(tmp_path / "bench-efficiency" / "results.json", "efficiency")
    model = doc["settings"]["models"]["lm"]
    assert (tmp_path / "bench-lm" / "cache" / "quick").is_dir()  # the model is cached where `bench lm` caches it
    reference = (bench.LM_REFERENCE_PPL * model["fp32_val_ppl"], math.log10(model["fp32_bytes"]))
    per = _check_part(doc, "lm", bench, tmp_path, "perplexity", "minimize", reference)
    run = json.loads((tmp_path / "bench-efficiency" / "runs" / "lm" / "tpe-s0" / "run.json").read_text())
    assert run["signature"]["task"] == "language-model"
    assert [o["name"] for o in run["objectives"]] == ["perplexity", "size_bytes"]
    assert per["knapsack"][0]["hv_final"] > 0  # some allocation beats 1.5x the fp32 perplexity and its bytes


def test_hypervolume_at_wall_time_counts_trials_finished_by_then():
    from types import SimpleNamespace

    from autocomp.bench.efficiency import STAMP, finish_times, hv_at_time
    from autocomp.bench.search import hypervolumes as hv_curve

    def trial(acc, size, stamp=None, status="complete"):
        metrics = {"accuracy": acc, "size_bytes": size, **({STAMP: stamp} if stamp is not None else {})}
        return SimpleNamespace(metrics=metrics, status=status)

    # the third is a journal copy (no stamp of its own): it ends with the one before it
    trials = [trial(0.95, 100, 1.0), trial(0.97, 10, 3.0), trial(0.97, 10), trial(0.99, 1000, 2.0)]
    finish = finish_times(trials)
    assert finish == [1.0, 3.0, 3.0, 3.0]
    curve = hv_curve(trials, "accuracy", "maximize", (0.9, 3.0))
    assert curve[0] == (0.95 - 0.9) * (3 - 2) and curve[1] == (0.97 - 0.9) * (3 - 1)
    assert hv_at_time(curve, finish, 0.5) == 0.0 and hv_at_time(curve, finish, 1.0) == curve[0]
    assert hv_at_time(curve, finish, 2.9) == curve[0] and hv_at_time(curve, finish, 10.0) == curve[-1]
    from autocomp.bench.efficiency import evals_to_reach

    rising = [0.0, 0.0, 0.1, 0.2]
    assert evals_to_reach(rising, 0.15) == 4 and evals_to_reach(rising, 0.3) is None
    assert evals_to_reach(rising, 0.0) == 3  # TPE found nothing: the first point inside the box beats it


def test_bench_only_refuses_unknown_parts_and_benches_without_parts(tmp_path, capsys):
    from autocomp.cli import main

    assert main(["bench", "efficiency", "--quick", "--only", "lenet300,bogus", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'bogus'" in err and "lenet300, resnet20, lm" in err
    assert main(["bench", "search", "--quick", "--only", "lenet300", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'search'" in err and "--only" in err
    assert main(["bench", "efficiency", "--quick", "--only", ",", "--runs-dir", str(tmp_path)]) == 2
    assert "names no part" in capsys.readouterr().err
    assert not (tmp_path / "bench-efficiency").exists() and not (tmp_path / "bench-search").exists()


def test_proxy_rank_correlation_pairs_layers_knobs_and_values_across_the_two_files():
    from autocomp.bench.efficiency import proxy_rank_correlation

    measured = {"layers": ["a", "b"], "knobs": {
        "quantize.bits": {"values": [32, 8, 4], "drop": [[0.0, 0.01, 0.2], [0.0, 0.02, None]]},
        "prune.ratio": {"values": [0.0, 0.5, 0.9], "drop": [[0.0, 0.1, 0.5], [0.0, 0.3, 0.4]]}}}
    # the proxy file lists its layers in another order and has a value the measured one lacks
    proxies = {"layers": ["b", "a"], "knobs": {
        "quantize.bits": {"values": [32, 8, 6, 4], "fisher": [[0.0, 2.0, 5.0, 9.0], [0.0, 1.0, 4.0, 3.0]]},
        "prune.ratio": {"values": [0.0, 0.5, 0.9], "fisher": [[0.0, 0.2, 0.1], [0.0, 0.3, 0.9]]}}}
    rho = proxy_rank_correlation(measured, proxies)
    # bits: (a,8) 0.01~1.0, (a,4) 0.2~3.0, (b,8) 0.02~2.0 (b,4 unmeasured): ranks agree exactly
    assert rho["quantize.bits"] == 1.0
    # prune: drops a .1 .5, b .3 .4 against losses a .3 .9, b .2 .1: ranks (1,4,2,3) vs (3,4,2,1)
    assert abs(rho["prune.ratio"] - 0.2) < 1e-12
    assert rho["all"] is not None and -1.0 <= rho["all"] <= 1.0
    assert proxy_rank_correlation(measured, {"layers": ["a"], "knobs": {}}) == {"all": None}


def test_front_points_and_uncovered_on_hand_made_fronts():
    from types import SimpleNamespace

    from autocomp.bench.efficiency import front_points, uncovered

    def trial(acc, size, status="complete"):
        return SimpleNamespace(metrics={"accuracy": acc, "size_bytes": size}, status=status)

    trials = [trial(0.95, 1e4), trial(0.97, 1e5), trial(0.96, 1e5), trial(0.99, 1e6), trial(0.5, 1e2),
              trial(0.98, 1e3, "failed"), trial(0.93, 1e7)]
    front = front_points(trials, "accuracy", "maximize", (0.9, 6.5))  # 0.5 is under the box, 1e7 beyond it
    assert sorted(front) == [(0.95, 4.0), (0.97, 5.0), (0.99, 6.0)]
    # a guided front as good as the first two, and short of the third in accuracy
    assert uncovered(front, [(0.95, 4.0), (0.975, 4.9), (0.985, 6.0)], "maximize") == 1
    assert uncovered(front, front, "maximize") == 0 and uncovered(front, [], "maximize") == 3
    # minimised metric (perplexity): lower is better
    lm = front_points([trial(3.0, 1e4), trial(2.5, 1e5), trial(2.6, 1e5)], "accuracy", "minimize", (4.0, 6.0))
    assert sorted(lm) == [(2.5, 5.0), (3.0, 4.0)] and uncovered(lm, [(2.4, 4.0)], "minimize") == 0
