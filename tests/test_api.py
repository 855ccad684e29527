"""The Python API a user lives in: spaces without a run file, trials whose policy `compress` takes, one's own
optimizer object, and `export` of a trial that writes exactly the bytes the search measured."""

from __future__ import annotations

import pytest
import torch

import autocomp
from autocomp.errors import AutocompError, SpaceError
from autocomp.optimizers.random import RandomSearch
from autocomp.testing.tiny import fast_latency, fit, tiny_data, tiny_mlp

GROUPS = """
- name: fc
  layers: ["type:Linear"]
  primitives:
    prune: {ratio: {float: [0.0, 0.9], step: 0.1}}
    quantize: {bits: {choice: [2, 4, 8]}}
"""


@pytest.fixture(scope="module")
def trained():
    data = tiny_data()
    return fit(tiny_mlp(), data), data


def test_space_from_yaml_and_from_dict_agree_and_round_trip():
    space = autocomp.SearchSpace.from_yaml(GROUPS)
    assert [g.name for g in space.groups] == ["fc"]
    assert autocomp.SearchSpace.from_dict(space.to_dict()) == space
    assert autocomp.SearchSpace.from_dict({"groups": space.to_dict()}) == space
    bound = space.bind(tiny_mlp())
    assert {p.name for p in bound.params} == {f"{i}.{k}" for i in (1, 3, 5) for k in ("prune.ratio", "quantize.bits")}


def test_space_errors_name_the_key_and_value():
    with pytest.raises(SpaceError, match=r"<string>:6: value not allowed.*key 'groups.fc.primitives.quantize.bits'"):
        autocomp.SearchSpace.from_yaml(GROUPS.replace("[2, 4, 8]", "[2, 4, 9]"))
    with pytest.raises(SpaceError, match="key 'groups.0.layers'"):
        autocomp.SearchSpace.from_dict([{"name": "fc", "primitives": {"prune": {"ratio": 0.5}}}])


def test_trials_policy_is_what_compress_and_export_take(trained, tmp_path):
    model, data = trained
    space = autocomp.SearchSpace.from_yaml(GROUPS)
    result = autocomp.search(model, data, space=space, trials=4, latency=fast_latency(), runs_dir=tmp_path,
                             name="api", progress=False)
    trial = result.pareto[-1]
    compressed = autocomp.compress(model, trial.policy)  # the dict form, as journaled
    assert torch.equal(compressed(data[0][:8]), autocomp.compress(model, autocomp.Policy.from_dict(trial.policy))(
        data[0][:8]))
    # export of a trial writes the very bytes the search measured; the file loads back to the same outputs
    size = autocomp.export(trial, model=model, path=tmp_path / "t.acz", example=data[0][:1])
    assert size == trial.metrics["size_bytes"] == (tmp_path / "t.acz").stat().st_size
    reloaded = autocomp.load_packed(tmp_path / "t.acz", model=model)
    assert torch.equal(reloaded(data[0][:8]), compressed(data[0][:8]))
    with pytest.raises(AutocompError, match="needs the uncompressed model"):
        autocomp.export(trial, path=tmp_path / "x.acz")
    with pytest.raises(AutocompError, match="unknown export format"):
        autocomp.export(compressed, path=tmp_path / "x.bin", format="tflite")


def test_search_takes_an_optimizer_class_or_instance(trained, tmp_path):
    model, data = trained
    space = autocomp.SearchSpace.from_yaml(GROUPS)
    by_name = autocomp.search(model, data, space=space, optimizer="random", trials=3, seed=5,
                              latency=fast_latency(), runs_dir=tmp_path, name="name", progress=False)
    by_class = autocomp.search(model, data, space=space, optimizer=RandomSearch, trials=3, seed=5,
                               latency=fast_latency(), runs_dir=tmp_path, name="class", progress=False)
    instance = RandomSearch(space.bind(model), directions=["maximize", "minimize"], seed=5)
    by_instance = autocomp.search(model, data, space=space, optimizer=instance, trials=3, latency=fast_latency(),
                                  runs_dir=tmp_path, name="instance", progress=False)
    params = [t.params for t in by_name.trials]
    assert [t.params for t in by_class.trials] == params == [t.params for t in by_instance.trials]
    other = RandomSearch(autocomp.SearchSpace.from_yaml(GROUPS.replace("type:Linear", "1")).bind(model),
                         directions=["maximize", "minimize"])
    with pytest.raises(AutocompError, match="built on another space"):
        autocomp.search(model, data, space=space, optimizer=other, trials=1, runs_dir=tmp_path, name="other",
                        progress=False)


def test_test_data_is_measured_once_for_the_chosen_front_exactly_as_evaluated(trained, tmp_path):
    from autocomp.metrics import accuracy

    model, data = trained
    test = tiny_data(n=128, seed=1)
    space = autocomp.SearchSpace.from_yaml(GROUPS)
    result = autocomp.search(model, data, space=space, trials=6, test_data=test, latency=fast_latency(),
                             runs_dir=tmp_path, name="tested", progress=False)
    assert set(result.test_accuracy) == {t.id for t in result.pareto}  # the front only, after it was chosen
    for t in result.pareto:
        assert result.test_accuracy[t.id] == accuracy(autocomp.compress(model, t.policy, calibration=data), test)
    assert result.baseline["test_accuracy"] == accuracy(model, test)
    assert "test (measured once, not used for selection)" in result.table()
