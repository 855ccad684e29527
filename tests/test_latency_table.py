"""Runtimes, the per-layer latency table, peak activation memory, the energy proxy and relative budgets.

Timings never decide a test: what is checked is structure (which layers a runtime executes, what is
cached, what a fit recovers) and numbers computed from shapes.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

import autocomp
from autocomp.compress import compress
from autocomp.config import parse_run_spec
from autocomp.errors import SpaceError
from autocomp.latency_table import (
    Conditions,
    LatencyTable,
    _fit,
    calibrated_table,
    model_key,
    units,
)
from autocomp.metrics import energy_uj, mac_energy_pj, peak_activation_bytes
from autocomp.objective import Constraint
from autocomp.policy import Policy
from autocomp.primitives import Channels, Prune, Quantize
from autocomp.runtimes import prepare
from autocomp.testing.tiny import fast_latency, tiny_space

FAST = fast_latency()


def conv_bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding it changes the weights
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("runtime,tolerance", [("onnx", 1e-4), ("torch-int8", None), ("onnx-int8", None)])
def test_runtimes_compute_what_pytorch_computes(runtime, tolerance):
    net, x = conv_bn_net(), torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        expected = net(x)
    got = torch.as_tensor(np.asarray(prepare(net, runtime, calibration=x, threads=1)(x)))
    if tolerance is not None:
        assert (got - expected).abs().max() <= tolerance
    else:  # int8: the output keeps at least 20 dB signal-to-noise ratio (8-bit activations and weights)
        snr = 10 * torch.log10(expected.pow(2).mean() / (got - expected).pow(2).mean())
        assert snr > 20, f"{runtime}: SNR {snr:.1f} dB"


def test_units_are_the_layers_each_runtime_executes():
    net, x = conv_bn_net(), torch.randn(1, 1, 8, 8)
    eager = units(net, x, batch_size=16, runtime="torch")
    folded = units(net, x, batch_size=16, runtime="onnx")
    assert [u.key.split("(")[0] for u in eager] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "ReLU", "Flatten",
                                                    "Linear"]
    assert "BatchNorm2d" not in {u.key.split("(")[0] for u in folded}  # folded into the conv before it
    assert eager[0].shape == (16, 1, 8, 8) and eager[0].out_elements == 16 * 8 * 8 * 8
    # fewer output channels in the first conv: different keys for it and the layers it feeds
    slim = compress(net, Policy.of({"0": (Channels(ratio=0.5),)}), example=x)
    slim_keys = [u.key for u in units(slim, x, batch_size=16, runtime="torch")]
    assert slim_keys[0] != eager[0].key and slim_keys[3] != eager[3].key
    assert slim_keys[-1] == eager[-1].key  # the classifier is untouched
    # unstructured pruning and weight bits leave what the runtime executes as it was: same keys
    sparse = compress(net, Policy.of({"0": (Prune(ratio=0.8), Quantize(bits=4))}), example=x)
    assert [u.key for u in units(sparse, x, batch_size=16, runtime="torch")] == [u.key for u in eager]


def test_fit_recovers_a_linear_latency_model():
    rng = np.random.default_rng(0)
    layer_ms, elements = rng.uniform(1, 10, 12), rng.uniform(1e4, 1e6, 12)
    y = 0.7 + 1.3 * layer_ms + 2e-6 * elements
    coef = _fit(np.column_stack([np.ones(12), layer_ms, elements]), y)
    assert np.allclose(coef, [0.7, 1.3, 2e-6], rtol=1e-6)
    # two points cannot fit three terms: an offset and a slope only
    two = _fit(np.column_stack([np.ones(2), layer_ms[:2], elements[:2]]), y[:2])
    assert two[2] == 0 and two[1] > 0


def test_table_predicts_from_entries_and_persists(tmp_path):
    net, x = conv_bn_net(), torch.randn(1, 1, 8, 8)
    conditions = Conditions.here("torch", 4, 1)
    table = LatencyTable(conditions, warmup=1, repeats=3)
    layer_ms, elements = table.layer_sum(net, x)
    assert table.measured == 7 and layer_ms > 0
    assert table.predict(net, x) == pytest.approx(layer_ms)  # no calibration: the plain sum
    table.calibrations["m"] = {"coef": [0.5, 2.0, 1e-6]}
    assert table.predict(net, x, "m") == pytest.approx(0.5 + 2 * layer_ms + 1e-6 * elements)
    # overwrite the entries with known numbers: the prediction is their sum
    table.entries = dict.fromkeys(table.entries, 0.25)
    assert table.predict(net, x) == pytest.approx(7 * 0.25)
    table.save(tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json", conditions)
    assert again.entries == table.entries and again.calibrations == table.calibrations
    assert again.layer_sum(net, x)[0] == pytest.approx(7 * 0.25) and again.measured == 0  # nothing re-timed
    other = LatencyTable.load(tmp_path / "t.json", Conditions.here("torch", 8, 1))  # another batch size
    assert other.entries == {}
    (tmp_path / "torn.json").write_text('{"conditions": {"runtime": "tor')
    assert LatencyTable.load(tmp_path / "torn.json", conditions).entries == {}


def test_anchor_puts_a_cached_table_in_todays_unit(monkeypatch):
    import autocomp.latency_table as latency_table

    net, x = conv_bn_net(), torch.randn(1, 1, 8, 8)
    table = LatencyTable(Conditions.here("torch", 4, 1), warmup=1, repeats=3)
    table.layer_sum(net, x)
    table.entries = dict.fromkeys(table.entries, 0.25)  # as timed on a day the machine ran faster
    table.calibrations["m"] = {"coef": [0.5, 1.0, 0.0]}
    # 0.5 + 7 x 0.25 = 2.25 ms in the table; timed now (three times, as if three models): 2x slower, the median
    anchor = table.anchor([net, net, net], x, "m", measured_ms=[4.5, 4.0, 6.75])
    assert anchor == {"scale": 2.0, "models": 3, "ratio_min": pytest.approx(16 / 9), "ratio_max": 3.0}
    assert table.predict(net, x, "m") == pytest.approx(4.5)
    # a layer first timed today is stored in the table's unit, so it predicts alike on any later day
    monkeypatch.setattr(latency_table, "time_runner", lambda *a, **k: [3.0, 3.0, 3.0])
    known = set(table.entries)
    table.layer_sum(nn.Sequential(*list(net.children()), nn.Linear(4, 3)), x)
    assert [v for k, v in table.entries.items() if k not in known] == [1.5]
    assert "scale" not in table.to_dict()  # the cache keeps the table's unit; the run records its anchor


def test_calibrated_table_is_fit_once_then_reused(tmp_path):
    net, x = conv_bn_net(), torch.randn(64, 1, 8, 8)
    rows = (x, torch.zeros(64, dtype=torch.long))
    conditions = Conditions.here("torch", 4, 1)
    policies = [Policy.of({"0": (Channels(ratio=r),)}) for r in (0.25, 0.5, 0.75)]
    first = calibrated_table(net, x[:1], x[:4], conditions, policies, calibration=rows, warmup=1, repeats=3,
                             log=lambda _: None)
    key = model_key(net, x[:1])
    assert first.calibrations[key]["points"] == 4 and first.calibrations[key]["coef"][1] > 0
    first.save(tmp_path / "t.json")
    second = calibrated_table(net, x[:1], x[:4], conditions, policies, calibration=rows, warmup=1, repeats=3,
                              saved=[tmp_path / "t.json"], log=lambda _: None)
    assert second.measured == 0 and second.calibrations == first.calibrations


def _unit_ms(unit) -> float:
    """A made-up but deterministic cost of one layer at its shape."""
    weights = sum(p.numel() for p in unit.module.parameters())
    return 0.002 + 1e-6 * weights * unit.shape[0] + 3e-7 * unit.out_elements


class FakeClock:
    """Every timing the table and the search take, made deterministic: a layer timed alone costs `_unit_ms`; a
    whole model costs A + B x (sum of its layers) + C x (elements they output) (the form the table fits), all
    times `slow` (a machine running slower on another day). Whole-model times are recorded per structure."""

    A, B, C = 0.05, 1.5, 2e-7

    def __init__(self, slow: float = 1.0) -> None:
        self.slow, self.whole = slow, {}

    def __call__(self, run, x, *, threads, warmup, repeats):
        found = units(run, x[:1], x.shape[0], "torch")
        layers = sum(_unit_ms(u) for u in found)
        if len(found) == 1:  # one layer timed alone (LatencyTable._time_unit)
            return [self.slow * layers] * repeats
        ms = self.slow * (self.A + self.B * layers + self.C * sum(u.out_elements for u in found))
        self.whole[tuple(u.key for u in found)] = ms
        return [ms] * repeats


CHANNELS_SPACE = """
version: 1
model: {name: tiny}
data: {name: tiny}
latency: {batch_size: 4, table: true, repeats: 3, warmup: 1}
objectives: [accuracy, latency_ms]
groups:
  - name: hidden
    layers: ["1", "3"]
    primitives:
      channels: {ratio: {float: [0.0, 0.75], step: 0.125}}
"""


@pytest.mark.parametrize("day2_seed", [
    0,  # day 2 anchors on the calibration's own models: every layer is in the cached table
    1,  # day 2 anchors on other models: layers the cached table lacks are timed during the anchor
])
def test_held_out_candidates_are_predicted_by_the_fit_not_by_their_own_timing(tmp_path, tiny, monkeypatch, day2_seed):
    """The table is fit on the baseline and 8 calibration policies; the search's front is other candidates,
    timed whole only at the end. With deterministic times the prediction for those held-out candidates must be
    their true time (the fit generalises), also on a later day when the machine runs 2x slower and the cached
    table is reused through its anchor (a run with another seed anchors on other models than the fit's)."""
    import autocomp.latency_table as latency_table

    model, data = tiny
    spec = parse_run_spec(CHANNELS_SPACE)
    args = dict(space=spec.space, runs_dir=tmp_path, progress=False, latency=spec.latency,
                objectives=["accuracy", "latency_ms"])
    key = model_key(model, data[0][:1])
    fitted = {tuple(u.key for u in units(compress(model, p, example=data[0][:1], calibration=data), data[0][:1],
                                         4, "torch"))
              for p in latency_table.calibration_policies(spec.space.bind(model), 0)}  # day 1's calibration
    for name, slow, seed in (("day1", 1.0, 0), ("day2", 2.0, day2_seed)):
        clock = FakeClock(slow)
        monkeypatch.setattr(latency_table, "time_runner", clock)
        result = autocomp.search(model, data, trials=8, seed=seed, name=name, **args)
        run = json.loads((tmp_path / name / "run.json").read_text())
        front = [t for t in result.pareto if t.id in result.latency_measured]
        held_out = [t for t in front if tuple(u.key for u in units(
            compress(model, Policy.from_dict(t.policy), example=data[0][:1]), data[0][:1], 4, "torch")) not in fitted]
        assert held_out, "the front should hold candidates the fit never saw"
        for t in front:  # predicted during the search, measured whole at its end: the same number
            assert t.metrics["latency_ms"] == pytest.approx(result.latency_measured[t.id], rel=1e-6)
        assert result.latency_prediction["max_abs_error"] < 1e-6
        assert run["latency_calibration"]["coef"] == pytest.approx([FakeClock.A, FakeClock.B, FakeClock.C], rel=1e-6)
        assert run["latency_anchor"]["scale"] == pytest.approx(slow, rel=1e-9)
        # every trial's prediction is the fit of its layer sum in today's unit, whatever it was timed at
        table = LatencyTable.load(tmp_path / name / "latency_table.json", Conditions.here("torch", 4, 1))
        table.scale = slow
        for t in result.trials:
            candidate = compress(model, Policy.from_dict(t.policy), example=data[0][:1], calibration=data)
            layer_ms, elements = table.layer_sum(candidate, data[0][:1])
            assert t.metrics["latency_ms"] == pytest.approx(
                slow * (FakeClock.A + FakeClock.B * layer_ms + FakeClock.C * elements), rel=1e-6)
            assert table.predict(candidate, data[0][:1], key) == pytest.approx(t.metrics["latency_ms"], rel=1e-9)
        assert table.measured == 0
    assert run["latency_calibration"] == json.loads((tmp_path / "day1" / "run.json").read_text())["latency_calibration"]


def test_a_held_out_model_of_known_layers_is_predicted_as_their_sum_without_timing():
    net, x = conv_bn_net(), torch.randn(1, 1, 8, 8)
    table = LatencyTable(Conditions.here("torch", 4, 1), warmup=1, repeats=3)
    table.layer_sum(net, x)
    table.entries = {k: 0.1 * (i + 1) for i, k in enumerate(table.entries)}  # known, distinct times
    table.measured = 0
    # a model the table never saw, made of the same layers at the same shapes, the middle block repeated
    head, block, tail = list(net.children())[:3], [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()], list(net.children())[3:]
    held_out = nn.Sequential(*head, *block, *block, *tail).eval()
    keys = [u.key for u in units(held_out, x, 4, "torch")]
    assert set(keys) - set(table.entries) == {keys[3]}  # only the padded 8->8 conv is new: one timing
    known = dict(table.entries)
    layer_ms, _ = table.layer_sum(held_out, x)
    assert table.measured == 1 and {k: table.entries[k] for k in known} == known  # known entries untouched
    assert layer_ms == pytest.approx(sum(table.entries[k] for k in keys))
    assert keys.count(keys[4]) == 3  # the ReLU at 8x8x8 counted each time it runs (the original + the block twice)
    table.calibrations["m"] = {"coef": [0.5, 2.0, 0.0]}
    assert table.predict(held_out, x, "m") == pytest.approx(0.5 + 2.0 * layer_ms)
    assert table.predict(held_out, x) == pytest.approx(layer_ms)  # another model's key: no fit applied


def test_peak_activation_bytes_keeps_a_residual_branch_alive():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(10, 10), nn.Linear(10, 10)

        def forward(self, x):
            return x + self.b(self.a(x))

    chain = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5))
    x = torch.randn(1, 10)
    # input 10 and fc1's 20 alive together, then 20 + 5: peak 30 elements of 4 bytes
    assert peak_activation_bytes(chain, x) == 4 * 30
    # x stays alive until the addition: at b(.) x (10) + a's output (10) + b's output (10)
    assert peak_activation_bytes(Residual(), x) == 4 * 30
    assert peak_activation_bytes(chain, x, bytes_per_element=1) == 30
    # a flatten is a view of its input, not a second copy: 64 + 8 elements
    assert peak_activation_bytes(nn.Sequential(nn.Flatten(), nn.Linear(64, 8)), torch.randn(1, 1, 8, 8)) == 4 * 72


def test_energy_proxy_follows_its_formula():
    layer = nn.Linear(10, 4)
    x = torch.randn(1, 10)
    expected_pj = 40 * mac_energy_pj(32, 32) + (10 * 4 + 4 * 4) * 1.25 + 100 * 160
    assert energy_uj(layer, x, weight_bytes=100) == pytest.approx(expected_pj / 1e6)
    with torch.no_grad():
        layer.weight[:, :5] = 0  # half the MACs skipped
    assert energy_uj(layer, x, weight_bytes=100) == pytest.approx((expected_pj - 20 * 4.6) / 1e6)
    assert mac_energy_pj(8, 8) < mac_energy_pj(4, 32) == mac_energy_pj(32, 32)  # fp32 unless both are ints
    assert mac_energy_pj(8, 8) == pytest.approx(3.1 * 64 / 1024 + 0.1)


def test_relative_budgets_resolve_against_the_baseline():
    c = Constraint(metric="latency_ms", max="0.5x", min=0.1)
    with pytest.raises(ValueError):
        c.violation({"latency_ms": 1.0})
    resolved = c.resolved({"latency_ms": 4.0})
    assert resolved.max == 2.0 and resolved.min == 0.1
    assert resolved.violation({"latency_ms": 1.5}) == 0 and resolved.violation({"latency_ms": 3.0}) == 0.5


def test_loader_reads_runtimes_tables_and_relative_budgets():
    text = """
version: 1
model: {name: tiny}
data: {name: tiny}
latency: {runtime: onnx-int8, table: true, batch_size: 8}
constraints: {latency_ms: {max: 0.5x}, peak_activation_bytes: {max: 4096}}
objectives: [accuracy, energy_uj]
groups:
  - name: all
    layers: ["type:Linear"]
    primitives: {prune: {ratio: {float: [0.0, 0.5]}}}
"""
    spec = parse_run_spec(text, file="s.yaml")
    assert spec.latency.runtime == "onnx-int8" and spec.latency.table
    assert {(c.metric, c.max) for c in spec.constraints} == {("latency_ms", "0.5x"), ("peak_activation_bytes", 4096)}
    for bad, key in (("runtime: tflite, table: true", "latency.runtime"),
                     ("runtime: onnx, table: 'yes'", "latency.table")):
        with pytest.raises(SpaceError) as err:
            parse_run_spec(text.replace("runtime: onnx-int8, table: true", bad), file="s.yaml")
        assert "s.yaml:5" in str(err.value) and key in str(err.value)
    for bound in ("half", "-0.5x", "0x"):
        with pytest.raises(SpaceError) as err:
            parse_run_spec(text.replace("max: 0.5x", f"max: {bound}"), file="s.yaml")
        assert "s.yaml:6" in str(err.value) and "constraints.latency_ms.max" in str(err.value)


def test_search_predicts_latency_and_measures_its_front(tmp_path, tiny):
    model, data = tiny
    latency = autocomp.LatencySpec(repeats=3, warmup=1, batch_size=4, table=True)
    result = autocomp.search(model, data, space=tiny_space(), trials=6, seed=0, runs_dir=tmp_path, name="r",
                             progress=False, latency=latency, objectives=["accuracy", "latency_ms"],
                             constraints=[Constraint(metric="latency_ms", max="3x")])
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    base_ms = run["baseline"]["latency_ms"]
    assert run["constraints_resolved"] == [{"metric": "latency_ms", "min": None, "max": 3 * base_ms}]
    assert run["latency"]["runtime"] == "torch" and run["latency_calibration"]["points"] == 9
    pareto = json.loads((tmp_path / "r" / "pareto.json").read_text())
    assert pareto["latency_prediction"]["points"] == len(pareto["trials"]) > 0
    # each front point's journaled latency is the saved table's prediction (fit and anchor applied) for that
    # very candidate, reproduced here without timing anything; its measured time is a separate whole timing
    saved_table = LatencyTable.load(tmp_path / "r" / "latency_table.json", Conditions.here("torch", 4, 1))
    saved_table.scale = run["latency_anchor"]["scale"]
    key = model_key(model, data[0][:1])
    assert saved_table.calibrations[key] == run["latency_calibration"]
    errors = []
    for t in pareto["trials"]:
        candidate = compress(model, Policy.from_dict(t["policy"]), example=data[0][:1], calibration=data)
        assert saved_table.predict(candidate, data[0][:1], key) == pytest.approx(t["metrics"]["latency_ms"], rel=1e-9)
        errors.append(abs(t["metrics"]["latency_ms"] - t["latency_measured_ms"]) / t["latency_measured_ms"])
    assert saved_table.measured == 0  # every layer of the front was in the run's table
    errors.sort()
    assert pareto["latency_prediction"]["median_abs_error"] == errors[len(errors) // 2]
    assert pareto["latency_prediction"]["max_abs_error"] == errors[-1]
    assert all({"peak_activation_bytes", "energy_uj"} <= set(t.metrics) for t in result.trials)
    assert "measured_ms" in result.table() and "front points: median error" in result.table()
    saved = json.loads((tmp_path / "r" / "latency_table.json").read_text())
    assert saved["conditions"]["batch_size"] == 4 and saved["entries"]
    # the next run on this machine finds the calibration in the cache and times no whole model again
    again = autocomp.search(model, data, space=tiny_space(), trials=2, seed=0, runs_dir=tmp_path, name="r2",
                            progress=False, latency=latency, objectives=["accuracy", "latency_ms"])
    run2 = json.loads((tmp_path / "r2" / "run.json").read_text())
    assert run2["latency_calibration"] == run["latency_calibration"]
    assert again.latency_prediction is not None
    # each run anchors the table to the calibration's 9 models timed whole at its start, and its predictions
    # are the table's fit in that unit: the baseline's prediction is the anchor's scale x the fitted sum
    for name, doc in (("r", run), ("r2", run2)):
        anchor = doc["latency_anchor"]
        assert anchor["models"] == 9 and anchor["ratio_min"] > 0
        own = LatencyTable.load(tmp_path / name / "latency_table.json", Conditions.here("torch", 4, 1))
        layer_ms, elements = own.layer_sum(model, data[0][:1])
        a, b, c = doc["latency_calibration"]["coef"]
        assert own.measured == 0 and b > 0
        assert doc["baseline"]["latency_predicted_ms"] == pytest.approx(
            anchor["scale"] * (a + b * layer_ms + c * elements), rel=1e-9)


def test_resume_judges_trials_by_the_bounds_the_run_started_with(tmp_path, tiny):
    model, data = tiny
    args = dict(space=tiny_space(), seed=0, runs_dir=tmp_path, name="r", progress=False, latency=FAST,
                constraints=[Constraint(metric="latency_ms", max="2x")])
    autocomp.search(model, data, trials=3, **args)
    first = json.loads((tmp_path / "r" / "run.json").read_text())["constraints_resolved"]
    autocomp.search(model, data, trials=5, resume=True, **args)  # the baseline is timed again, differently
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["constraints_resolved"] == first and first[0]["max"] > 0


def test_resume_predicts_in_the_unit_the_run_started_with(tmp_path, tiny):
    model, data = tiny
    latency = autocomp.LatencySpec(repeats=3, warmup=1, batch_size=4, table=True)
    args = dict(space=tiny_space(), seed=0, runs_dir=tmp_path, name="r", progress=False, latency=latency,
                objectives=["accuracy", "latency_ms"])
    autocomp.search(model, data, trials=3, **args)
    first = json.loads((tmp_path / "r" / "run.json").read_text())
    autocomp.search(model, data, trials=5, resume=True, **args)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["latency_anchor"] == first["latency_anchor"]  # the journaled unit is kept
    assert run["baseline"]["latency_ms"] != first["baseline"]["latency_ms"]  # timed again (never the same ns)
    assert run["baseline"]["latency_predicted_ms"] == pytest.approx(first["baseline"]["latency_predicted_ms"])
