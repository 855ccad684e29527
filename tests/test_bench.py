"""`autocomp bench primitives|search --quick` run every code path on generated data and write the contract."""

import json

import pytest

from autocomp.cli import main
from autocomp.testing.tiny import write_fake_cifar10, write_fake_mnist


@pytest.mark.slow
def test_bench_primitives_quick_on_generated_data(tmp_path, capsys):
    write_fake_mnist(tmp_path / "data" / "mnist", n_train=600, n_test=200)
    write_fake_cifar10(tmp_path / "data" / "cifar10", rows=120)
    assert main(["bench", "primitives", "--quick", "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    doc = json.loads((tmp_path / "runs" / "bench-primitives" / "results.json").read_text())
    assert {"name", "machine", "settings", "rows", "targets"} <= set(doc)
    assert {r["model"] for r in doc["rows"]} == {"lenet300", "lenet5", "resnet20"}
    assert doc["targets"]["packed_export_vs_evaluated_size_mismatches"]["met"]
    for row in doc["rows"]:
        if row.get("size_bytes"):
            assert row["disk_bytes_plain"] == row["size_bytes_plain"]
            assert row["disk_bytes_huffman"] == row["size_bytes_huffman"]
    assert "targets:" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_search_quick_on_generated_data(tmp_path):
    write_fake_mnist(tmp_path / "data" / "mnist", n_train=600, n_test=200)
    assert main(["bench", "search", "--quick", "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    out = tmp_path / "runs" / "bench-search"
    doc = json.loads((out / "results.json").read_text())
    from autocomp.bench.search import STRATEGIES

    assert {r["strategy"] for r in doc["rows"]} == set(STRATEGIES)
    assert {r["budget"] for r in doc["rows"]} == {30, 60}
    for row in doc["rows"]:
        assert 0 <= row["hv_min"] <= row["hv_median"] <= row["hv_max"] and row["evals"] <= row["budget"]
    assert len(doc["targets"]) == 7 and (out / "hypervolume.png").stat().st_size > 1000


@pytest.mark.slow
def test_bench_parallel_quick_on_generated_data(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="acray", dir="/tmp"))  # short socket paths
    write_fake_mnist(tmp_path / "data" / "mnist", n_train=600, n_test=200)
    assert main(["bench", "parallel", "--quick", "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    doc = json.loads((tmp_path / "runs" / "bench-parallel" / "results.json").read_text())
    from autocomp.bench.parallel import SHAPES

    assert [r["config"] for r in doc["rows"]] == list(SHAPES)
    assert doc["settings"]["cluster_nodes_used"] == 2
    assert set(doc["targets"]) == {"ray_2_workers_vs_1_worker", "ray_2_workers_vs_best_single_process",
                                   "ray_overhead_fraction_of_eval_time"}
    for row in doc["rows"]:
        assert row["evals_per_s"] > 0 and row["driver_rss_mb"] > 0
        if row["config"].startswith(("ray", "cluster")):
            assert row["worker_rss_mb"] > 0


@pytest.mark.slow
def test_bench_deep_compression_quick_on_generated_data(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="acray", dir="/tmp"))
    write_fake_mnist(tmp_path / "data" / "mnist", n_train=600, n_test=200)
    assert main(["bench", "deep-compression", "--quick", "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    out = tmp_path / "runs" / "bench-deep-compression"
    doc = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in doc["rows"]] == ["lenet300", "lenet5"]
    for row in doc["rows"]:
        final = json.loads((out / row["model"] / "final.json").read_text())
        best = next(t for t in final["trials"] if t["id"] == row["trial"])
        assert best["size_bytes"] == row["size_bytes"] == (out / row["model"] / "final" /
                                                          f"trial-{row['trial']}.acz").stat().st_size
        assert sum(layer["bytes"] for layer in row["layers"]) < row["size_bytes"]  # + biases and header
    assert {"labels_only_err", "distilled_err"} <= set(doc["settings"]["distillation"])


@pytest.mark.slow
def test_bench_latency_quick_on_generated_data(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="acray", dir="/tmp"))
    write_fake_cifar10(tmp_path / "data" / "cifar10", rows=200)
    assert main(["bench", "latency", "--quick", "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    out = tmp_path / "runs" / "bench-latency"
    doc = json.loads((out / "results.json").read_text())
    assert [r["runtime"] for r in doc["rows"]] == ["torch", "onnx"]
    for row in doc["rows"]:
        assert len(row["points"]) == row["candidates"] and row["budget_ms"] == 0.5 * row["baseline_ms"]
        assert row["baseline_ms"] == row["timed_interleaved_ms"]["baseline"]
        assert row["scored"] == row["evaluated"] == 6 <= row["trials"] - row["skipped_infeasible"]
        assert {f"uniform {r:.3f}" for r in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)} <= set(row["timed_interleaved_ms"])
        assert row["calibration"]["points"] == 9  # the search's calibration, reused by the prediction check
        assert set(doc["targets"]) >= {f"{row['runtime']}_median_prediction_error_%"}
    cached = list((out / ".cache" / "latency").glob("*.json"))
    assert {json.loads(p.read_text())["conditions"]["runtime"] for p in cached} == {"torch", "onnx"}


def test_latency_bench_answers_with_the_most_accurate_candidate_timed_within_the_budget(tmp_path, tiny, monkeypatch):
    from dataclasses import replace
    from types import SimpleNamespace

    import autocomp.bench.latency as bench
    from autocomp.compress import compress
    from autocomp.config import parse_run_spec
    from autocomp.metrics import accuracy
    from autocomp.policy import Policy
    from autocomp.runner import Trial
    from autocomp.testing.tiny import TINY_SPACE_YAML
    from autocomp.zoo import Splits

    model, data = tiny
    spec = parse_run_spec(TINY_SPACE_YAML)
    bound = spec.space.bind(model)
    params = [{p.name: p.domain.nearest(r) if p.knob == "prune.ratio" else 32 for p in bound.params}
              for r in (0.1, 0.5, 0.8)]

    def trial(i, acc):
        return Trial(id=i, params=params[i], policy=Policy.from_params(bound, params[i]).to_dict(), status="complete",
                     metrics={"accuracy": acc, "latency_ms": 1.0}, values=(acc,))

    # by validation: 0 (over the budget when timed), 1, then 2; an infeasible trial is never considered
    trials = [trial(0, 0.9), trial(1, 0.8), trial(2, 0.7),
              Trial(id=3, params=params[0], policy={}, status="infeasible", metrics={"latency_ms": 6.0}, violation=0.2)]
    trials.append(replace(trials[1], id=4, worker="journal:1"))  # a repeated ask: the same candidate, not timed
    timed = {"baseline": 10.0, "trial 0": 5.2, "trial 1": 4.9, "trial 2": 3.0, "uniform 0.125": 5.1,
             "uniform 0.250": 4.8, "uniform 0.375": 4.5, "uniform 0.500": 4.0, "uniform 0.625": 3.5,
             "uniform 0.750": 3.0}
    monkeypatch.setattr(bench, "interleaved_latency", lambda evaluator, models, rounds=5: {k: timed[k] for k in models})
    (tmp_path / "run.json").write_text("{}")
    result = SimpleNamespace(trials=trials, run_dir=tmp_path, latency_prediction=None)
    splits = Splits(train=data, val=data, test=data, description="tiny")
    row = bench.compare_at_budget(model, spec, splits, result, log=lambda *_: None)
    assert (row["budget_ms"], row["search_trial"], row["search_ms"]) == (5.0, 1, 4.9)
    assert (row["uniform_ratio"], row["uniform_ms"]) == (0.25, 4.8)  # the least compressed within the budget
    assert (row["evaluated"], row["scored"], row["skipped_infeasible"]) == (3, 3, 1)
    assert row["search_test_acc"] == accuracy(compress(model, Policy.from_dict(trials[1].policy)), data)
    assert set(row["timed_interleaved_ms"]) == set(timed)


def test_soak_in_process_journals_every_trial_once_and_writes_the_exact_front(tmp_path):
    from autocomp.bench.soak import soak, sweep_front

    row = soak("inprocess", tmp_path / "soak", trials=300, every=30, workers=1)
    assert row["trials"] == 300 and row["journal_ok"] and row["pareto_ok"] and row["front"] > 3
    assert row["driver_fd_growth"] == 0  # the journal, checkpoint and /proc reads close what they open
    # the independent front: a point dominated on both objectives is out, duplicates of a front point are in
    records = [{"id": i, "metrics": {"accuracy": a, "size_bytes": s}}
               for i, (a, s) in enumerate([(0.9, 10), (0.8, 5), (0.8, 12), (0.9, 10), (0.7, 5)])]
    assert sweep_front(records) == {0, 1, 3}


@pytest.mark.slow
def test_bench_soak_quick(tmp_path, capsys):
    assert main(["bench", "soak", "--quick", "--runs-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench-soak" / "results.json").read_text())
    assert [r["executor"] for r in doc["rows"]] == ["inprocess", "ray 2x1"]
    assert all(r["journal_ok"] and r["pareto_ok"] for r in doc["rows"])


def test_architectures_arms_differ_only_by_the_substitution_knobs():
    from autocomp.bench.architectures import space_file, union_front, without_substitution
    from autocomp.session import read_spec
    from autocomp.zoo import build_model

    for model in ("lenet5", "resnet20"):
        spec = read_spec(space_file(model))
        full = spec.space.bind(build_model(model)).params
        plain = without_substitution(spec).space.bind(build_model(model)).params
        assert any(p.knob.startswith("substitute.") for p in full)
        assert [p for p in full if not p.knob.startswith("substitute.")] == list(plain)
    points = [("a", 0.9, 10.0), ("b", 0.9, 8.0), ("a", 0.95, 20.0), ("b", 0.80, 9.0), ("a", 0.7, 1.0)]
    assert sorted(union_front(points)) == [("a", 0.7, 1.0), ("a", 0.95, 20.0), ("b", 0.9, 8.0)]


def test_architecture_latency_is_compared_within_a_run_and_the_drift_between_runs_is_measured():
    from types import SimpleNamespace

    from autocomp.bench.architectures import latency_checks

    def trial(block, ms):
        return SimpleNamespace(params={"conv2.substitute.block": block, "conv2.prune.ratio": 0.5},
                               metrics={"latency_ms": ms})

    substitution = {"complete": [trial("dwsep", 0.4), trial("fire", 0.6), trial("none", 1.0), trial("none", 1.2)]}
    plain = {"complete": [SimpleNamespace(params={"conv2.prune.ratio": 0.1}, metrics={"latency_ms": ms})
                          for ms in (0.9, 1.0, 1.1)]}
    checks = latency_checks([substitution, plain])
    assert checks["substituted_over_unchanged_same_run"] == pytest.approx(0.5 / 1.1)
    assert checks["drift_between_runs"] == pytest.approx(1.1 / 1.0)


@pytest.mark.slow
def test_bench_architectures_quick_on_generated_data(tmp_path, capsys):
    write_fake_mnist(tmp_path / "data" / "mnist", n_train=300, n_test=100)
    write_fake_cifar10(tmp_path / "data" / "cifar10", rows=100)
    assert main(["bench", "architectures", "--quick", "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench-architectures" / "results.json").read_text())
    assert [(r["model"], r["arm"]) for r in doc["rows"]] == [
        ("lenet5", "substitution"), ("lenet5", "prune+quantize"), ("resnet20", "substitution"),
        ("resnet20", "prune+quantize")]
    for model in ("lenet5", "resnet20"):
        assert (tmp_path / "bench-architectures" / f"{model}.png").stat().st_size > 10_000
        union = doc["settings"][model]["union_front"]["size_bytes"]
        rows = [r for r in doc["rows"] if r["model"] == model]
        assert sum(r["union_size_points"] for r in rows) == len(union)
