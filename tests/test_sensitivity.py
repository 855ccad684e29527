"""Sensitivity as a cached step of a run: sensitivity.json (the HTML report's format), its heat map, reuse."""

import json

import pytest
import torch

import autocomp
from autocomp.errors import AutocompError
from autocomp.html_report import _sensitivity_grids
from autocomp.metrics import accuracy
from autocomp.optimizers import SearchContext, Told, make_optimizer
from autocomp.optimizers.knapsack import spread_order
from autocomp.testing.conformance import reference_space
from autocomp.testing.fake import fake_metrics
from autocomp.testing.tiny import fast_latency, fit, tiny_data, tiny_mlp, tiny_space

MO = ("maximize", "minimize")


def run_to_the_end(opt, space, log=None):
    asked = []
    while candidates := opt.ask(4):
        asked += candidates
        results = [Told(c, tuple(fake_metrics(space, c).values())) for c in candidates]
        if log is not None:
            log += results
        opt.tell(results)
    return asked


def test_sensitivity_json_holds_each_measured_drop_and_the_report_reads_it(tmp_path):
    space = reference_space()
    opt = make_optimizer("knapsack", space, directions=MO, seed=0, context=SearchContext(workdir=str(tmp_path)),
                         levels=3, sweep=5)
    told = []
    run_to_the_end(opt, space, told)
    doc = json.loads((tmp_path / "sensitivity.json").read_text())
    assert (tmp_path / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["layers"] == ["fc1", "fc2", "fc3"] and set(doc["knobs"]) == {"prune.ratio", "quantize.bits",
                                                                            "lowrank.rank_ratio"}
    reference = {p.name: p.least_compressive() for p in space.params}
    ref_acc = fake_metrics(space, reference)["accuracy"]
    checked = 0
    for t in told[: doc["evaluations"]]:
        changed = [k for k in t.params if t.params[k] != reference[k]]
        if len(changed) != 1:
            continue
        layer, knob = changed[0].split(".", 1)
        spec = doc["knobs"][knob]
        cell = spec["drop"][doc["layers"].index(layer)][spec["values"].index(t.params[changed[0]])]
        assert cell == pytest.approx(ref_acc - t.values[0], abs=1e-12)  # accuracy is maximized: drop = ref - it
        checked += 1
    assert checked == doc["evaluations"] - 1  # every one-knob move, the reference aside
    # the least compressive column is the identity change itself: zero in every layer
    assert all(row[0] == 0.0 for spec in doc["knobs"].values() for row in spec["drop"])
    grids, skipped = _sensitivity_grids(doc)
    assert not skipped and {g[0] for g in grids} == set(doc["knobs"])


def test_a_matching_cached_file_is_reused_and_another_space_or_levels_is_not(tmp_path):
    space = reference_space()
    first = make_optimizer("knapsack", space, directions=MO, seed=0, context=SearchContext(workdir=str(tmp_path)),
                           levels=3, sweep=5)
    run_to_the_end(first, space)
    sensitivity_points = json.loads((tmp_path / "sensitivity.json").read_text())["evaluations"]
    # another optimizer of the run (another seed orders the measurements differently): nothing re-measured
    again = make_optimizer("knapsack", space, directions=MO, seed=4, context=SearchContext(workdir=str(tmp_path)),
                           levels=3, sweep=5)
    assert again.cached == str(tmp_path / "sensitivity.json")
    allocations = [first.plan[i]["params"] for i in spread_order(len(first.plan))]  # the order they are asked in
    assert run_to_the_end(again, space) == allocations
    guided = make_optimizer("tpe", space, directions=MO, seed=0, guided=True, levels=3, sweep=5,
                            sensitivity=str(tmp_path))
    assert guided.ask(3) == allocations[:3]  # straight to the allocations
    other = make_optimizer("knapsack", space, directions=MO, seed=0, context=SearchContext(workdir=str(tmp_path)),
                           levels=4, sweep=5)
    assert other.cached is None and len(run_to_the_end(other, space)) > sensitivity_points
    with pytest.raises(AutocompError, match="measured on another space"):
        make_optimizer("knapsack", space, directions=("maximize", "maximize"), seed=0, levels=3,
                       sensitivity=str(tmp_path / "sensitivity.json"))
    with pytest.raises(AutocompError, match="no sensitivity.json"):
        make_optimizer("greedy", space, directions=MO, seed=0, sensitivity=str(tmp_path / "nowhere"))


def test_sensitivity_of_an_identity_change_is_zero_on_a_real_model(tmp_path):
    """Pruning only weights that are already zero changes nothing: its measured drop is exactly zero."""
    data = tiny_data(256)
    model = fit(tiny_mlp(), data)
    first = model[1].weight.data
    threshold = first.abs().flatten().kthvalue(int(0.6 * first.numel())).values
    first[first.abs() <= threshold] = 0.0  # 60% zeros: pruning 10% or 50% removes zeros only
    accuracy_before, kept = accuracy(model, data), int(torch.count_nonzero(first))
    autocomp.search(model, data, space=tiny_space(), optimizer="knapsack",
                    optimizer_settings={"levels": 3, "sweep": 3}, trials=40, seed=0, runs_dir=tmp_path, name="s",
                    progress=False, latency=fast_latency())
    doc = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert doc["reference"][0] == pytest.approx(accuracy_before)
    spec = doc["knobs"]["prune.ratio"]
    row = spec["drop"][doc["layers"].index("1")]
    assert spec["values"][:3] == [0.0, 0.1, 0.5] and row[:3] == [0.0, 0.0, 0.0]
    # measured, not assumed: the same moves changed the size (quantizing changes every layer's size)
    assert all(cell[1] < 0 for r in doc["knobs"]["quantize.bits"]["delta"] for cell in r[1:] if cell is not None)
    assert int(torch.count_nonzero(model[1].weight)) == kept < 0.5 * first.numel()  # the model was not touched
