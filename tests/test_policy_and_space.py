import numpy as np
import pytest

from autocomp.config import parse_run_spec
from autocomp.errors import SpaceError
from autocomp.policy import Policy
from autocomp.primitives import LowRank, Prune, Quantize
from autocomp.testing.tiny import tiny_mlp

SPACE = """
version: 1
model: {name: tiny}
data: {name: tiny}
groups:
  - name: hidden
    layers: ["re:[13]"]
    primitives:
      prune: {ratio: {float: [0.0, 0.9], step: 0.1}}
      quantize: {bits: {int: [2, 8]}}
  - name: head
    layers: ["5"]
    shared: true
    primitives:
      lowrank: {rank_ratio: {choice: [0.5, 1.0]}}
"""


def test_bind_gives_per_layer_and_shared_params():
    bound = parse_run_spec(SPACE).space.bind(tiny_mlp())
    names = [p.name for p in bound.params]
    assert names == ["1.prune.ratio", "3.prune.ratio", "1.quantize.bits", "3.quantize.bits",
                     "head.lowrank.rank_ratio"]
    assert bound.layers == ("1", "3", "5")
    assert set(bound.knobs()) == {"prune.ratio", "quantize.bits", "lowrank.rank_ratio"}


def test_policy_from_params_round_trips_and_fingerprints():
    bound = parse_run_spec(SPACE).space.bind(tiny_mlp())
    params = bound.sample(np.random.default_rng(0))
    assert bound.contains(params)
    policy = Policy.from_params(bound, params)
    assert policy.for_layer("1") == (Prune(ratio=params["1.prune.ratio"]),
                                     Quantize(bits=params["1.quantize.bits"]))
    assert policy.for_layer("5") == (LowRank(rank_ratio=params["head.lowrank.rank_ratio"]),)
    again = Policy.from_dict(policy.to_dict())
    assert again == policy and again.fingerprint() == policy.fingerprint()
    other = Policy.from_dict({**policy.to_dict(), "5": {"lowrank": {"rank_ratio": 0.123}}})
    assert other.fingerprint() != policy.fingerprint()


def test_policy_orders_stages():
    policy = Policy.of({"a": [Quantize(bits=4), Prune(ratio=0.5), LowRank(rank_ratio=0.5)]})
    assert [type(c) for c in policy.for_layer("a")] == [LowRank, Prune, Quantize]


def test_selector_matching_nothing_names_file_line_key_value():
    text = SPACE.replace('["5"]', '["fc9"]')
    with pytest.raises(SpaceError) as err:
        parse_run_spec(text, file="space.yaml").space.bind(tiny_mlp())
    assert err.value.file == "space.yaml" and err.value.line == 12 and err.value.value == "fc9"
    assert "groups.head.layers" in str(err.value)


def test_layer_in_two_groups_for_one_primitive_is_an_error():
    text = SPACE.replace('["5"]', '["3"]')  # head: lowrank on layer 3, which hidden prunes and quantizes
    bound = parse_run_spec(text).space.bind(tiny_mlp())
    assert {p.name for p in bound.params if "3" in p.layers} == {
        "3.prune.ratio", "3.quantize.bits", "head.lowrank.rank_ratio"}
    assert bound.layers == ("1", "3")
    with pytest.raises(SpaceError, match="selected by two groups .*'prune'"):
        same = text.replace("lowrank: {rank_ratio: {choice: [0.5, 1.0]}}", "prune: {ratio: 0.5}")
        parse_run_spec(same).space.bind(tiny_mlp())


def test_python_built_space_is_checked_against_what_primitives_allow():
    from autocomp import Choice, FloatRange, Group, KnobSpec, SearchSpace, Selector

    def space(knob, domain, primitive="quantize"):
        return SearchSpace(groups=(Group(name="g", selectors=(Selector(text="type:Linear"),),
                                         knobs=(KnobSpec(primitive=primitive, knob=knob, domain=domain),)),))

    with pytest.raises(SpaceError, match="value not allowed") as err:
        space("bits", Choice(values=(4, 16))).bind(tiny_mlp())
    assert err.value.value == 16
    with pytest.raises(SpaceError, match="takes names"):
        space("method", FloatRange(low=0.0, high=1.0), "lowrank").bind(tiny_mlp())
    with pytest.raises(SpaceError, match="range end not allowed"):
        space("ratio", FloatRange(low=0.0, high=1.5), "prune").bind(tiny_mlp())
    assert space("bits", Choice(values=(4, 32))).bind(tiny_mlp()).params
    assert space("method", Choice(values=("svd", "tucker2")), "lowrank").bind(tiny_mlp()).params
