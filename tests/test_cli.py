import json
import subprocess
import sys

import pytest
import torch

from autocomp.artifacts import load_packed
from autocomp.cli import main
from autocomp.testing.tiny import write_fake_mnist

SPACE = """\
version: 1
model: {name: lenet300}
data: {name: mnist, val_fraction: 0.2}
train: {epochs: 1, batch_size: 64}
latency: {repeats: 3, warmup: 1}
groups:
  - name: fc
    layers: ["type:Linear"]
    primitives:
      lowrank: {rank_ratio: {choice: [0.25, 1.0]}}
      prune: {ratio: {float: [0.0, 0.9], step: 0.1}}
      quantize: {bits: {choice: [2, 4, 8, 32]}}
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_fake_mnist(root / "data" / "mnist", n_train=400, n_test=100)
    (root / "space.yaml").write_text(SPACE)
    return root


def search_args(root, name, trials=4, *extra):
    return ["search", str(root / "space.yaml"), "--data-dir", str(root / "data"), "--trials", str(trials),
            "--runs-dir", str(root / "runs"), "--name", name, "--quiet", *extra]


@pytest.fixture(scope="module")
def finished_run(workspace):
    assert main(search_args(workspace, "demo", 5)) == 0
    return workspace / "runs" / "demo"


def test_search_writes_the_run_directory_contract(finished_run, capsys):
    for name in ("trials.jsonl", "pareto.json", "pareto.png", "run.json", "space.yaml", "baseline.pt"):
        assert (finished_run / name).is_file(), name
    info = json.loads((finished_run / "run.json").read_text())
    assert info["latency"]["batch_size"] == 1 and info["latency"]["threads"] == 1
    assert info["baseline"]["accuracy"] > 0.5 and info["data"]["val"] == 80
    pareto = json.loads((finished_run / "pareto.json").read_text())
    # the search never looks at the test split: that is finalize's, once, after choosing on validation
    assert pareto["trials"] and all(t["test_accuracy"] is None for t in pareto["trials"])
    assert "test_accuracy" not in pareto["baseline"]


def test_export_packed_size_equals_reported_and_reloads_exactly(finished_run, tmp_path, capsys):
    from autocomp.compress import compress
    from autocomp.policy import Policy
    from autocomp.session import load_run_model

    pareto = json.loads((finished_run / "pareto.json").read_text())["trials"]
    trial = min(pareto, key=lambda t: t["metrics"]["size_bytes"])
    out = tmp_path / "model.acz"
    assert main(["export", str(finished_run), "--trial", str(trial["id"]), "--format", "packed",
                 "--out", str(out)]) == 0
    assert out.stat().st_size == trial["metrics"]["size_bytes"]
    measured = json.loads(out.with_name("model.acz.json").read_text())  # measured on the file loaded back
    assert measured["bytes_on_disk"] == trial["metrics"]["size_bytes"] and measured["speedup"] > 0
    assert measured["batch_size"] == 1 and measured["flops"] <= measured["baseline_flops"]
    expected = compress(load_run_model(finished_run), Policy.from_dict(trial["policy"]))
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_packed(out)(x), expected(x))


def test_export_pt_is_a_loadable_program(finished_run, tmp_path):
    trial = json.loads((finished_run / "pareto.json").read_text())["trials"][0]
    out = tmp_path / "model.pt2"
    assert main(["export", str(finished_run), "--trial", str(trial["id"]), "--format", "pt",
                 "--out", str(out)]) == 0
    program = torch.export.load(out).module()
    from autocomp.compress import compress
    from autocomp.policy import Policy
    from autocomp.session import load_run_model

    expected = compress(load_run_model(finished_run), Policy.from_dict(trial["policy"]))
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(program(x), expected(x), atol=1e-6)


def test_report_prints_the_table(finished_run, capsys):
    assert main(["report", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "size_bytes" in out and "uncompressed" in out


@pytest.mark.parametrize("edit, key", [
    (lambda s: s.replace("prune:", "prunee:"), "prunee"),
    (lambda s: s.replace('["type:Linear"]', '["fc9"]'), "fc9"),
    (lambda s: s.replace("[2, 4, 8, 32]", "[0, 4]"), "bits"),
    (lambda s: s.replace("version: 1", "version: 1\nobjectivs: [accuracy]"), "objectivs"),
])
def test_bad_space_exits_2_naming_file_line_and_writes_nothing(workspace, edit, key, capsys):
    bad = workspace / "bad.yaml"
    bad.write_text(edit(SPACE))
    args = search_args(workspace, "bad")
    args[1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and key in err and "Traceback" not in err
    assert not (workspace / "runs" / "bad").exists()


def test_missing_data_dir_exits_2_and_writes_nothing(workspace, capsys):
    args = search_args(workspace, "nodata")
    args[3] = str(workspace / "nowhere")
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (workspace / "runs" / "nodata").exists()


def test_reusing_a_run_name_is_refused(finished_run, workspace, capsys):
    assert main(search_args(workspace, "demo")) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_console_script_runs_as_a_process(workspace):
    done = subprocess.run([sys.executable, "-m", "autocomp.cli", "export", str(workspace / "none"),
                           "--trial", "0", "--out", "x"], capture_output=True, text=True)
    assert done.returncode == 2 and "not a run directory" in done.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("model: {name: lenet300}", "model: {name: lenet300, kwargs: {num_classes: 5}}"),
     "10 classes"),
    (lambda s: s.replace("model: {name: lenet300}", "model: {name: lenet300, kwargs: {in_features: 100}}"),
     "cannot run on mnist inputs"),
    (lambda s: s.replace("model: {name: lenet300}", "model: {name: lenet300, kwargs: {num_classes: -1}}"),
     "rejected its kwargs"),
    (lambda s: s.replace("model: {name: lenet300}", "model: {name: lenet300, weights: space.yaml}"),
     "cannot load weights"),
    (lambda s: s.replace("train: {epochs: 1, batch_size: 64}", "train: {epochs: 1, seed: 100000000000000}"),
     "must be <="),
    (lambda s: s.replace("latency: {repeats: 3, warmup: 1}", "latency: {batch_size: 100000000000}"),
     "must be <="),
    (lambda s: s.replace("version: 1", "version: 1\nobjectives: [[accuracy]]"), "unknown metric"),
    (lambda s: s + "x: " + "[" * 3000 + "]" * 3000, "invalid YAML"),
])
def test_bad_model_or_settings_exit_2_and_write_nothing(workspace, edit, message, capsys):
    bad = workspace / "bad.yaml"
    bad.write_text(edit(SPACE))
    args = search_args(workspace, "bad2")
    args[1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (workspace / "runs" / "bad2").exists()


def test_negative_seed_and_file_as_runs_dir_are_refused(workspace, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(search_args(workspace, "neg", 4, "--seed", "-1"))
    assert exit_info.value.code == 2
    args = search_args(workspace, "f")
    args[args.index("--runs-dir") + 1] = str(workspace / "space.yaml")
    assert main(args) == 2 and "not a directory" in capsys.readouterr().err


def test_export_to_a_directory_is_refused(finished_run, tmp_path, capsys):
    assert main(["export", str(finished_run), "--trial", "0", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_export_onnx_and_int8_match_the_model(finished_run, tmp_path):
    import numpy as np
    import onnxruntime

    from autocomp.compress import compress
    from autocomp.policy import Policy
    from autocomp.session import load_run_model

    trial = json.loads((finished_run / "pareto.json").read_text())["trials"][0]
    expected = compress(load_run_model(finished_run), Policy.from_dict(trial["policy"]))
    x = torch.load(finished_run / "calibration.pt", weights_only=True)["inputs"][:64]  # in-distribution rows
    with torch.no_grad():
        want = expected(x)
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(finished_run), "--trial", str(trial["id"]), "--format", "onnx",
                 "--out", str(onnx_path)]) == 0
    got = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4
    int8_path = tmp_path / "m.int8.pt"
    assert main(["export", str(finished_run), "--trial", str(trial["id"]), "--format", "int8",
                 "--out", str(int8_path)]) == 0
    engine = torch.backends.quantized.engine
    code = ("import sys, torch\nfrom autocomp.int8 import load_int8\n"  # a fresh process: nothing preset
            f"m = load_int8({str(int8_path)!r})\nx = torch.load({str(tmp_path / 'x.pt')!r})\n"
            f"torch.save(m(x), {str(tmp_path / 'y.pt')!r}); print(m.engine)")
    torch.save(x, tmp_path / "x.pt")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    got8 = torch.load(tmp_path / "y.pt")
    assert torch.backends.quantized.engine == engine  # exporting left the process-wide engine as it was
    # int8 rounding of weights and activations: close outputs, not equal ones
    assert float((got8 - want).norm() / want.norm()) < 0.1


def test_workers_without_ray_are_refused_before_anything_is_written(workspace, capsys):
    assert main(search_args(workspace, "par", 4, "--executor", "inprocess", "--workers", "2")) == 2
    assert "need the Ray executor" in capsys.readouterr().err
    assert not (workspace / "runs" / "par").exists()


def test_an_address_nobody_listens_on_exits_2_and_leaves_no_run_directory(workspace, capsys):
    assert main(search_args(workspace, "far", 4, "--address", "127.0.0.1:1")) == 2
    err = capsys.readouterr().err
    assert "cannot start the ray executor at 127.0.0.1:1" in err and "Traceback" not in err
    assert not (workspace / "runs" / "far").exists()


def test_fine_tuned_trials_export_to_exactly_the_measured_artifact(workspace, tmp_path, capsys):
    tuned = workspace / "tuned.yaml"
    tuned.write_text(SPACE + "finetune: {epochs: 2, steps: 4, batch_size: 32, lr: 0.001, kd_alpha: 0.5}\n")
    args = search_args(workspace, "tuned", 3)
    args[1] = str(tuned)
    assert main(args) == 0
    assert main(search_args(workspace, "plain", 3)) == 0
    run = workspace / "runs" / "tuned"
    tuned_trials = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (workspace / "runs" / "plain" / "trials.jsonl").read_text().splitlines()]
    assert [t["params"] for t in tuned_trials] == [t["params"] for t in plain]  # the same candidates ...
    # ... fine-tuned: every tuned trial journals its learning curve, no plain one does (their accuracies on 80
    # validation images may all coincide by chance; the weights below differ for certain)
    assert all("accuracy@1" in t["metrics"] for t in tuned_trials)
    assert not any("accuracy@1" in p["metrics"] for p in plain)
    trial = max(tuned_trials, key=lambda t: t["metrics"]["compression_ratio"])
    out = tmp_path / "t.acz"
    assert main(["export", str(run), "--trial", str(trial["id"]), "--out", str(out)]) == 0
    assert out.stat().st_size == trial["metrics"]["size_bytes"]  # export fine-tunes again, identically
    from autocomp.compress import compress
    from autocomp.finetune import finetune_as_evaluated
    from autocomp.policy import Policy
    from autocomp.session import load_run_calibration, load_run_model, load_run_splits, run_spec

    model, calibration = load_run_model(run), load_run_calibration(run)
    rebuilt = compress(model, Policy.from_dict(trial["policy"]), example=calibration[0][:1], calibration=calibration)
    finetune_as_evaluated(rebuilt, load_run_splits(run).train, run_spec(run).finetune, teacher=model)
    assert outputs_equal(load_packed(out, model=model), rebuilt, calibration[0])
    untuned = compress(model, Policy.from_dict(trial["policy"]), example=calibration[0][:1], calibration=calibration)
    assert not outputs_equal(rebuilt, untuned, calibration[0])  # the measured artifact is the fine-tuned model


def outputs_equal(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_finalize_retrains_tests_and_exports_chosen_front_points(finished_run, capsys):
    front = json.loads((finished_run / "pareto.json").read_text())["trials"]
    assert main(["finalize", str(finished_run), "--top", "2", "--epochs", "2", "--iterations", "2",
                 "--kd-alpha", "0.5"]) == 0
    final = json.loads((finished_run / "final.json").read_text())
    rows = final["trials"]
    assert len(rows) == min(2, len(front)) and rows[0]["id"] == front[0]["id"]
    from autocomp.compress import compress
    from autocomp.metrics import accuracy
    from autocomp.policy import Policy
    from autocomp.session import load_run_model, run_info, run_spec
    from autocomp.zoo import load_dataset

    model, spec = load_run_model(finished_run), run_spec(finished_run)
    splits = load_dataset("mnist", run_info(finished_run)["data"]["dir"], val_fraction=spec.data.val_fraction,
                          seed=spec.train.seed)
    for row in rows:
        path = finished_run / "final" / f"trial-{row['id']}.acz"
        assert path.stat().st_size == row["size_bytes"] and 0 <= row["test_accuracy"] <= 1
        loaded = load_packed(path, model=model)
        assert accuracy(loaded, splits.val) == row["accuracy"]  # the artifact is the model that was measured
        searched = compress(model, Policy.from_dict(row["policy"]))
        assert not torch.equal(loaded(splits.val[0][:32]), searched(splits.val[0][:32]))  # it was retrained
    # every row measured the same way: the baseline is the trained model on the same splits
    assert final["baseline"]["accuracy"] == accuracy(model, splits.val)
    assert final["baseline"]["test_accuracy"] == accuracy(model, splits.test)
    within = [r for r in rows if r["accuracy"] >= final["baseline"]["accuracy"] - 0.001]
    expected = min(within, key=lambda r: r["size_bytes"]) if within else max(rows, key=lambda r: r["accuracy"])
    assert final["selected"] == expected["id"]  # chosen on validation by the stated rule
    assert main(["report", str(finished_run)]) == 0
    assert "finalized" in capsys.readouterr().out
    assert main(["finalize", str(finished_run), "--trial", "999"]) == 2
    assert "not on the Pareto front" in capsys.readouterr().err


def test_finalize_retrains_with_the_optimizer_asked_for(finished_run):
    args = ["finalize", str(finished_run), "--top", "1", "--epochs", "1"]
    artifacts = {}
    for extra, optimizer in ((["--retrain-optimizer", "sgd", "--lr", "0.05"], "sgd"), ([], "adam")):
        assert main(args + extra) == 0
        final = json.loads((finished_run / "final.json").read_text())
        assert final["settings"]["finetune"]["optimizer"] == optimizer  # adam: the run's own
        artifacts[optimizer] = (finished_run / "final" / f"trial-{final['trials'][0]['id']}.acz").read_bytes()
    assert artifacts["sgd"] != artifacts["adam"]


def test_finalize_chooses_before_it_looks_at_the_test_split(finished_run, monkeypatch):
    """Every test-split measurement comes after the selection: none can have informed it."""
    import autocomp.finalize as finalize
    from autocomp.session import load_run_splits
    from autocomp.tasks import Classification

    test_inputs = load_run_splits(finished_run).test[0]
    events, real_evaluate, real_select = [], Classification.evaluate, finalize.select

    def evaluate(self, model, data, **kw):  # every measurement finalize makes goes through the task
        events.append("test" if torch.equal(data[0], test_inputs) else "val")
        return real_evaluate(self, model, data, **kw)

    def select(rows, baseline_value, tolerance, metric, maximize):
        assert metric == "accuracy" and maximize
        assert all("test_accuracy" not in r for r in rows)
        events.append("select")
        return real_select(rows, baseline_value, tolerance, metric, maximize)

    monkeypatch.setattr(Classification, "evaluate", evaluate)
    monkeypatch.setattr(finalize, "select", select)
    assert main(["finalize", str(finished_run), "--top", "2", "--epochs", "1"]) == 0
    assert "select" in events and "test" in events
    assert "test" not in events[: events.index("select")] and "val" not in events[events.index("select"):]


def test_select_takes_the_smallest_point_within_tolerance_on_validation():
    from autocomp.finalize import select

    rows = [{"id": 1, "size_bytes": 300, "accuracy": 0.981}, {"id": 2, "size_bytes": 200, "accuracy": 0.9795},
            {"id": 3, "size_bytes": 100, "accuracy": 0.970}]
    assert select(rows, 0.980, 0.001)["id"] == 2
    assert select(rows, 0.980, 0.0)["id"] == 1
    assert select(rows, 0.990, 0.001)["id"] == 1  # none within: the most accurate
    assert select(rows, 0.980, 0.02)["id"] == 3
