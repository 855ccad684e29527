"""Every `autocomp bench` end to end in the default suite, in seconds: generated tiny data, the heavy pieces
(trained baselines, long searches, Ray measurements) replaced where they would take minutes, and the contract
checked: results.json's structure, every target's `met` recomputed from its value and the comparison it states,
values recomputed from the rows where the bench derives them, and a value moved across its bound flips `met`.
Timing targets are judged on the median of >= 3 repetitions with the spread beside it; timings are faked here
where a target depends on them, so no test passes or fails by the machine's speed."""

import json
import statistics
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from autocomp.bench.common import OPS, BenchResult
from autocomp.testing.tiny import fit, tiny_data, tiny_mlp, tiny_space
from autocomp.zoo import Splits


def contract(path, name):
    """results.json's structure, and every target's `met` as its comparison gives it."""
    doc = json.loads(path.read_text())
    assert {"name", "machine", "settings", "rows", "targets"} <= set(doc) and doc["name"] == name and doc["rows"]
    for target in doc["targets"].values():
        op, bound = target["target"].split(" ", 1)
        assert target["met"] is OPS[op](target["value"], float(bound))
        if "spread" in target:  # a timing target: the median of its repetitions, their min and max beside it
            samples = target["samples"]
            assert target["repeats"] == len(samples) >= 3 and target["value"] == statistics.median(samples)
            assert target["spread"] == [min(samples), max(samples)]
    return doc


def splits(n=300, seed=0):
    data = tiny_data(n, seed)
    return Splits(train=data, val=data, test=data, description="tiny")


def test_timed_target_is_judged_on_the_median_and_refuses_a_single_timing():
    result = BenchResult("x", {})
    result.timed_target("t", [1.7, 1.5, 1.55], ">=", 1.6)  # the best repetition passes, the median does not
    assert result.targets["t"] == {"value": 1.55, "target": ">= 1.6", "met": False, "spread": [1.5, 1.7],
                                   "repeats": 3, "samples": [1.7, 1.5, 1.55]}
    result.timed_target("t", [1.7, 1.5, 1.65], ">=", 1.6)
    assert result.targets["t"]["met"] and result.targets["t"]["value"] == 1.65
    with pytest.raises(ValueError, match="at least 3"):
        result.timed_target("t", [2.0, 2.1], ">=", 1.6)


def test_bench_primitives_quick(tmp_path, monkeypatch):
    import autocomp.bench.primitives as bench
    from autocomp.zoo.train import TrainSpec

    data = splits()
    monkeypatch.setattr(bench, "SETUPS", (bench.Setup("resnet20", "tiny", TrainSpec(), TrainSpec()),
                                          bench.Setup("lenet300", "tiny", TrainSpec(), TrainSpec(), int8_batch=256)))
    torch.manual_seed(0)  # convolutions for channels and Tucker-2, a hidden Linear for SVD, enough weights for Huffman
    net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(16 * 4 * 4, 96), nn.ReLU(), nn.Linear(96, 4))
    monkeypatch.setattr(bench, "cached_baseline", lambda *a, **k: (fit(net, data.train, steps=20), data))
    cycle = iter([1.7, 1.5, 1.55] * 1000)  # any three consecutive speedups: median 1.55, best 1.7

    def fake_latency(reference, candidate, x, **kwargs):
        return 1.0, 1.0, 1.0 if len(x) == 1 else next(cycle)

    monkeypatch.setattr(bench, "interleaved_latency", fake_latency)
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path))
    doc = contract(tmp_path / "bench-primitives" / "results.json", "primitives")
    labels = {r["primitive"] for r in doc["rows"]}
    for kind in ("prune", "quantize 4b", "act 8b", "share 5b", "+ H", "svd", "tucker2", "channels", "int8"):
        assert any(kind in label for label in labels), kind
    packed = [r for r in doc["rows"] if "size_bytes_plain" in r]
    assert doc["settings"]["size_checks"] == 2 * len(packed) > 0
    for r in packed:  # the exported file's bytes on disk are the evaluated size_bytes, both codings
        assert r["disk_bytes_plain"] == r["size_bytes_plain"] and r["disk_bytes_huffman"] == r["size_bytes_huffman"]
        assert (r["size_bytes"], r["disk_bytes"]) == (r[f"size_bytes_{r['coding']}"], r[f"disk_bytes_{r['coding']}"])
    # Huffman coding is never larger (pack falls back to plain where it would be) and here shrinks some files
    assert all(r["size_bytes_huffman"] <= r["size_bytes_plain"] for r in packed)
    assert any(r["size_bytes_huffman"] < r["size_bytes_plain"] for r in packed)
    targets = doc["targets"]
    assert targets["packed_export_vs_evaluated_size_mismatches"] == {"value": 0, "target": "== 0", "met": True}
    assert set(targets) == {"packed_export_vs_evaluated_size_mismatches", "resnet20_channels_half_flops_speedup_b64",
                            "resnet20_int8_speedup_b64", "lenet300_int8_speedup_b256"}
    channels = targets["resnet20_channels_half_flops_speedup_b64"]
    assert (channels["value"], channels["spread"], channels["met"]) == (1.55, [1.5, 1.7], False)
    assert targets["lenet300_int8_speedup_b256"]["met"] and not targets["resnet20_int8_speedup_b64"]["met"]
    # moved across the bounds, the same rows flip their targets
    rows = [dict(r) for r in doc["rows"]]
    row = next(r for r in rows if r["model"] == "resnet20" and r["primitive"].endswith("x8)"))
    row["latency_x_b64_samples"] = [1.7, 1.5, 1.65]
    packed_row = next(r for r in rows if "size_bytes_plain" in r)
    packed_row["disk_bytes_huffman"] += 1
    flipped = BenchResult("primitives", {}, rows)
    bench.add_targets(flipped)
    assert flipped.targets["resnet20_channels_half_flops_speedup_b64"]["met"]
    assert flipped.targets["packed_export_vs_evaluated_size_mismatches"] == {"value": 1, "target": "== 0",
                                                                             "met": False}


def test_bench_search_quick(tmp_path, monkeypatch):
    import autocomp.bench.search as bench

    data = splits(256)
    monkeypatch.setattr(bench, "cached_baseline", lambda *a, **k: (fit(tiny_mlp(), data.train), data))
    monkeypatch.setattr(bench, "space", tiny_space)
    monkeypatch.setattr(bench, "QUICK_BUDGETS", (4, 8))
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path))
    doc = contract(tmp_path / "bench-search" / "results.json", "search")
    assert {(r["strategy"], r["budget"]) for r in doc["rows"]} == {(s, b) for s in bench.STRATEGIES for b in (4, 8)}
    hv = {r["strategy"]: r["hv_median"] for r in doc["rows"] if r["budget"] == 8}
    for s in bench.SEARCHED:  # each target's value is the hypervolume difference of its rows
        for baseline in ("random", "uniform"):
            assert doc["targets"][f"{s}_hv_over_{baseline}_at_8"]["value"] == hv[s] - hv[baseline]
    best = max(bench.SEARCHED, key=lambda s: hv[s])
    curves = doc["settings"]["curves"]
    early = curves["median_hv"][best][curves["evaluations"].index(4)] / hv[best] if hv[best] > 0 else 0.0
    assert doc["targets"][f"best_searched_{best}_hv_fraction_at_4"]["value"] == early
    assert len(doc["targets"]) == 7 and (tmp_path / "bench-search" / "hypervolume.png").is_file()


def test_bench_parallel_quick(tmp_path, monkeypatch):
    import autocomp.bench.parallel as bench
    from autocomp.zoo import build_model

    rows = (torch.randn(64, 1, 28, 28), torch.arange(64) % 10)
    monkeypatch.setattr(bench, "cached_baseline", lambda *a, **k: (build_model("lenet5").eval(),
                                                                    Splits(rows, rows, rows, "random")))
    monkeypatch.setattr(bench, "QUICK", (2, 3, 64))
    rates = {"direct": [1.0, 1.0, 1.0], "inprocess 1t": [1.0, 1.0, 1.0], "inprocess 2t": [1.5, 1.2, 1.4],
             "ray 1x1": [1.0, 1.1, 1.0], "ray 2x1": [2.0, 1.6, 1.9], "cluster 2x1": [1.8, 1.8, 1.7]}
    seen = {}

    def fake_measure(evaluate, policies, rounds):  # the Ray measurement: rates per round, as measure returns them
        seen.update(policies=len(policies), rounds=rounds)
        return rates, [0.01, 0.2, 0.03], 600 * 2**20, {"ray 1x1": 900 * 2**20, "ray 2x1": 900 * 2**20,
                                                        "cluster 2x1": 700 * 2**20}, 2

    monkeypatch.setattr(bench, "measure", fake_measure)
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path))
    assert seen == {"policies": 2, "rounds": 3}
    doc = contract(tmp_path / "bench-parallel" / "results.json", "parallel")
    assert [r["config"] for r in doc["rows"]] == list(bench.SHAPES) and doc["settings"]["cluster_nodes_used"] == 2
    for r in doc["rows"]:
        assert r["evals_per_s"] == statistics.median(rates[r["config"]]) and r["evals"] == 6
    t = doc["targets"]
    # per-round ratios: 2/1, 1.6/1.1, 1.9/1 -> median 1.9; vs the best single process: 2/1.5, 1.6/1.2, 1.9/1.4
    assert t["ray_2_workers_vs_1_worker"]["samples"] == [2.0, 1.6 / 1.1, 1.9] and t["ray_2_workers_vs_1_worker"]["met"]
    assert t["ray_2_workers_vs_best_single_process"]["samples"] == [2 / 1.5, 1.6 / 1.2, 1.9 / 1.4]
    assert t["ray_overhead_fraction_of_eval_time"]["value"] == 0.03 and t["ray_overhead_fraction_of_eval_time"]["met"]
    # one slow round more and the 2-worker ratio's median falls under its bound (its best round still passes)
    result = BenchResult("parallel", {"evals_per_round": 2, "rounds": 3})
    slower = {**rates, "ray 2x1": [2.0, 1.5, 1.5]}
    bench.summarize(result, slower, [0.01, 0.2, 0.3], 0.0, {})
    assert not result.targets["ray_2_workers_vs_1_worker"]["met"]
    assert not result.targets["ray_overhead_fraction_of_eval_time"]["met"]


def test_bench_deep_compression_quick(tmp_path, monkeypatch):
    import autocomp.bench.deep_compression as bench

    def fake_compress(model, data_dir, out, *, trials, finalize_epochs, iterations, workers, quick):
        ratio = {"lenet300": 65.0, "lenet5": 30.0}[model]
        return {"model": model, "trials": trials, "pruned": 0, "finalized": 1, "baseline_err": 0.009,
                "test_err": 0.0095, "ratio": ratio, "size_bytes": 1000, "paper_ratio": bench.PAPER[model]["ratio"],
                "trial": 0, "minutes": 61.0 if model == "lenet5" else 1.0, "layers": [], "finalized_points": []}

    monkeypatch.setattr(bench, "compress_model", fake_compress)
    monkeypatch.setattr(bench, "distillation_row", lambda run, epochs: {"labels_only_err": 0.04,
                                                                        "distilled_err": 0.03})
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path))
    doc = contract(tmp_path / "bench-deep-compression" / "results.json", "deep-compression")
    t = doc["targets"]
    for row in doc["rows"]:
        m = row["model"]
        assert t[f"{m}_ratio_at_baseline_error_plus_0.1pt"]["value"] == row["ratio"]
        assert t[f"{m}_minutes"]["value"] == row["minutes"] and t[f"{m}_baseline_error"]["value"] == row["baseline_err"]
    assert t["lenet300_ratio_at_baseline_error_plus_0.1pt"]["met"]  # 65x >= 60x
    assert not t["lenet5_ratio_at_baseline_error_plus_0.1pt"]["met"]  # 30x < 50x
    assert t["lenet300_minutes"]["met"] and not t["lenet5_minutes"]["met"]
    assert t["lenet5_baseline_error"]["met"] and t["lenet300_baseline_error"]["met"]  # 0.9% <= 1.0% and <= 1.8%


def test_bench_latency_quick(tmp_path, monkeypatch):
    import autocomp.bench.latency as bench

    model, data = tiny_mlp(), splits(64)
    monkeypatch.setattr(bench, "spec_splits", lambda spec, data_dir: data)
    monkeypatch.setattr(bench, "prepare_baseline", lambda spec, splits, out, cache: model)
    monkeypatch.setattr(bench, "uniform_seed", lambda *a, **k: None)
    monkeypatch.setattr(bench, "constrained_search", lambda *a, **k: SimpleNamespace(trials=[]))
    accs = {"torch": (0.70, 0.60), "onnx": (0.50, 0.55)}  # (search, uniform) test accuracy
    errors = {"torch": 4.0, "onnx": 12.0}

    def fake_compare(model, spec, splits, result):
        search, uniform = accs[spec.latency.runtime]
        return {"budget_ms": 1.0, "baseline_ms": 2.0, "search_ms": 0.9, "uniform_ms": 0.95, "uniform_ratio": 0.5,
                "search_test_acc": search, "uniform_test_acc": uniform, "anchor": {"scale": 1.0}}

    monkeypatch.setattr(bench, "compare_at_budget", fake_compare)
    monkeypatch.setattr(bench, "prediction_error", lambda model, spec, splits, runtime, **k: {
        "candidates": k["candidates"], "median_err_%": errors[runtime], "p90_err_%": 20.0, "max_err_%": 30.0})
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path))
    doc = contract(tmp_path / "bench-latency" / "results.json", "latency")
    assert [r["runtime"] for r in doc["rows"]] == list(bench.RUNTIMES)
    for row in doc["rows"]:
        rt = row["runtime"]
        assert doc["targets"][f"{rt}_median_prediction_error_%"]["value"] == row["median_err_%"]
        assert doc["targets"][f"{rt}_search_minus_uniform_test_acc"]["value"] == \
            row["search_test_acc"] - row["uniform_test_acc"]
    met = {k: v["met"] for k, v in doc["targets"].items()}
    assert met == {"torch_median_prediction_error_%": True, "torch_search_minus_uniform_test_acc": True,
                   "onnx_median_prediction_error_%": False, "onnx_search_minus_uniform_test_acc": False}


def test_bench_architectures_quick(tmp_path, monkeypatch):
    import autocomp.bench.architectures as bench

    def trial(acc, size, ms, block="none"):
        return SimpleNamespace(params={"x.substitute.block": block}, metrics={"accuracy": acc, "size_bytes": size,
                                                                              "latency_ms": ms})

    arms = {"substitution": [trial(0.9, 100, 1.0), trial(0.8, 40, 0.5, "dwsep"), trial(0.7, 60, 0.4, "fire")],
            "prune+quantize": [trial(0.95, 200, 1.1), trial(0.85, 50, 0.9), trial(0.6, 80, 1.2)]}

    def fake_search(spec, arm, model, out, data_dir, trials, workers):
        return {"arm": arm, "trials": trials, "complete": arms[arm], "minutes": 0.1, "reused": False,
                "baseline": {"accuracy": 0.96, "size_bytes": 400, "latency_ms": 1.0}}

    monkeypatch.setattr(bench, "_search", fake_search)
    bench.main(quick=True, data_dir=None, runs_dir=str(tmp_path))
    doc = contract(tmp_path / "bench-architectures" / "results.json", "architectures")
    assert doc["targets"] == {}  # the bench reports a comparison, with no target of its own
    for model in ("lenet5", "resnet20"):
        rows = {r["arm"]: r for r in doc["rows"] if r["model"] == model}
        # union size front: (0.95, 200) q, (0.9, 100) s, (0.85, 50) q, (0.8, 40) s; latency front: (0.95, 1.1) q,
        # (0.9, 1.0) s, (0.85, 0.9) q, (0.8, 0.5) s, (0.7, 0.4) s
        assert (rows["substitution"]["union_size_points"], rows["prune+quantize"]["union_size_points"]) == (2, 2)
        assert (rows["substitution"]["union_latency_points"], rows["prune+quantize"]["union_latency_points"]) == (3, 2)
        assert rows["substitution"]["front_size"] == 2 and rows["prune+quantize"]["front_size"] == 2
        assert (tmp_path / "bench-architectures" / f"{model}.png").is_file()
        latency = doc["settings"][model]["latency"]
        assert latency["substituted_over_unchanged_same_run"] == pytest.approx(0.45 / 1.0)


def test_bench_soak_quick_with_ray(tmp_path, monkeypatch):
    """The one default test that starts Ray (2 workers of the analytic evaluator)."""
    import tempfile

    import autocomp.bench.soak as bench

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="acray", dir="/tmp"))  # short socket paths
    monkeypatch.setattr(bench, "QUICK", (60, 10))
    bench.main(quick=True, runs_dir=str(tmp_path))
    doc = contract(tmp_path / "bench-soak" / "results.json", "soak")
    assert [r["executor"] for r in doc["rows"]] == ["inprocess", "ray 2x1"]
    t = doc["targets"]
    for row in doc["rows"]:
        key = row["executor"].replace(" ", "_")
        assert row["trials"] == 60 and row["journal_ok"] and row["pareto_ok"]
        assert t[f"{key}_journal_and_pareto_correct"]["value"] == float(row["journal_ok"] and row["pareto_ok"])
        assert t[f"{key}_driver_heap_left_kb"]["value"] == row["driver_heap_left_kb"]
        assert t[f"{key}_fd_growth"]["value"] == max(row["driver_fd_growth"], row["worker_fd_growth"])
    assert t["ray_2x1_worker_mb_per_1k_trials"]["value"] == doc["rows"][1]["worker_mb_per_1k"]
    # workers that served trials: on a loaded machine one actor may take all 60 before the other starts
    assert 1 <= doc["rows"][1]["workers"] <= 2 and t["ray_2x1_journal_and_pareto_correct"]["met"]


def test_bench_deep_compression_chooses_on_validation_and_reports_test_as_it_falls(tmp_path, monkeypatch):
    import json

    import autocomp.bench.deep_compression as bench

    front = [{"id": i, "metrics": {"accuracy": acc, "size_bytes": size}}
             for i, (acc, size) in enumerate([(0.980, 900), (0.977, 500), (0.972, 300), (0.960, 100)])]
    (tmp_path / "pareto.json").write_text(json.dumps({"trials": front}))
    # validation only: within 0.3 / 0.6 / 1.0 pt of 98.0% -> ids 1, 1, 2 (id 3 is 2 pt below: not retrained)
    assert bench.pick(tmp_path, 0.980, (0.003, 0.006, 0.010)) == [1, 2]
    artifact = tmp_path / "a.acz"
    artifact.write_bytes(b"")  # layer_table of an empty report is empty; the reading is tested elsewhere
    monkeypatch.setattr(bench, "layer_table", lambda path: [])
    rows = [{"id": 1, "size_bytes": 500, "compression_ratio": 60.0, "accuracy": 0.9795, "test_accuracy": 0.9850,
             "search_accuracy": 0.977, "artifact": str(artifact)},
            {"id": 2, "size_bytes": 300, "compression_ratio": 100.0, "accuracy": 0.9700, "test_accuracy": 0.9900,
             "search_accuracy": 0.972, "artifact": str(artifact)}]
    final = {"trials": rows, "selected": 1, "selection": "on validation",
             "baseline": {"accuracy": 0.980, "test_accuracy": 0.9840}}
    row = bench.summarize("lenet300", final, trials=10, pruned=2, minutes=1.0)
    # the selected point is finalize's (on validation), not the best on test (id 2 tests higher and is smaller)
    assert row["trial"] == 1 and row["selected_ratio"] == 60.0
    assert row["within_error"] and row["ratio"] == 60.0 and abs(row["test_err"] - 0.015) < 1e-12
    final["baseline"]["test_accuracy"] = 0.9870  # the same choice now tests 0.2 pt worse: missed, as it falls
    row = bench.summarize("lenet300", final, trials=10, pruned=2, minutes=1.0)
    assert row["trial"] == 1 and not row["within_error"] and row["ratio"] == 0.0
