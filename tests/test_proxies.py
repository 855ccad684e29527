"""Gradient proxies (Fisher, Hutchinson) and the allocator that uses them instead of measuring sensitivity."""

import itertools
import json

import pytest
import torch
from torch import nn

import autocomp
from autocomp.errors import AutocompError
from autocomp.optimizers import SearchContext, Told, make_optimizer
from autocomp.optimizers.knapsack import spread_order
from autocomp.proxies import fisher_diagonal, hutchinson_trace, proxy_table
from autocomp.space import BoundSpace
from autocomp.space.params import Choice, Param
from autocomp.tasks import get_task
from autocomp.testing.conformance import reference_space
from autocomp.testing.fake import fake_metrics
from autocomp.testing.tiny import fast_latency, fit, tiny_data, tiny_mlp, tiny_space

MO = ("maximize", "minimize")
TASK = get_task("classification")


@pytest.fixture(scope="module")
def trained():
    data = tiny_data(256)
    return fit(tiny_mlp(), data), data


def test_an_identity_change_has_a_proxy_of_exactly_zero(trained):
    model, data = trained
    model = tiny_mlp()
    model.load_state_dict(trained[0].state_dict())
    first = model[1].weight.data
    first[first.abs() <= first.abs().flatten().kthvalue(int(0.6 * first.numel())).values] = 0.0  # 60% zeros
    bound = tiny_space().bind(model)
    table = proxy_table(model, bound, data, TASK, probes=0)
    prune = table.entries["1.prune.ratio"]
    assert prune[repr(0.0)]["loss"] == 0.0  # the reference itself
    assert prune[repr(0.1)]["loss"] == 0.0 and prune[repr(0.5)]["loss"] == 0.0  # pruning zeros only
    assert prune[repr(0.9)]["loss"] > 0.0  # real weights go: a real change
    assert table.entries["1.quantize.bits"][repr(32)]["loss"] == 0.0


def test_two_bits_are_predicted_more_damaging_than_eight_and_the_prediction_is_fisher_weighted(trained):
    model, data = trained
    bound = tiny_space().bind(model)
    table = proxy_table(model, bound, data, TASK, probes=0, batches=2)
    for layer in ("1", "3", "5"):
        bits = table.entries[f"{layer}.quantize.bits"]
        assert bits[repr(2)]["loss"] > 10 * bits[repr(8)]["loss"] > 0.0
    # the number itself: 0.5 * sum(F * dW^2), with F from two gradients computed here
    x, y = data
    grads = [torch.autograd.grad(nn.functional.cross_entropy(model(xb), yb), model[3].weight)[0]
             for xb, yb in ((x[:128], y[:128]), (x[128:], y[128:]))]
    fisher = sum(g.double() ** 2 for g in grads)
    w = model[3].weight.detach().double()
    scale = w.abs().amax(dim=1, keepdim=True) / 1  # 2 bits: codes -1, 0, 1 per output channel
    dw = torch.clamp(torch.round(w / scale), -1, 1) * scale - w
    assert table.entries["3.quantize.bits"][repr(2)]["loss"] == pytest.approx(0.5 * float((fisher * dw**2).sum()),
                                                                              rel=1e-4)
    assert all(torch.allclose(a, b) for a, b in zip(fisher_diagonal(model, ["3"], data, TASK, batches=2).values(),
                                                   [fisher]))


def test_hutchinson_trace_matches_the_exact_hessian_trace(trained):
    model, data = trained
    x, y = data[0][:64], data[1][:64]
    weight = model[5].weight

    def loss_of(w):
        hidden = model[:5](x)
        return nn.functional.cross_entropy(nn.functional.linear(hidden, w, model[5].bias), y)

    exact = float(torch.autograd.functional.hessian(loss_of, weight.detach()).reshape(weight.numel(), -1).trace())
    estimate = hutchinson_trace(model, ["5"], (x, y), TASK, probes=400, seed=0)["5"]
    assert exact > 0 and estimate == pytest.approx(exact, rel=0.1)


def synthetic(space):
    """Proxies from the fake evaluator: loss = accuracy drop, size_bytes = size change, each knob alone."""
    reference = {p.name: p.least_compressive() for p in space.params}
    base = fake_metrics(space, reference)
    out = {}
    for p in space.params:
        out[p.name] = {}
        for value in p.ordered():
            m = fake_metrics(space, {**reference, p.name: value})
            out[p.name][repr(value)] = {"loss": base["accuracy"] - m["accuracy"],
                                        "size_bytes": m["size_bytes"] - base["size_bytes"]}
    return out, {"reference": {"size_bytes": base["size_bytes"]}}


def fisher_knapsack(space, **settings):
    proxies, info = synthetic(space)
    context = SearchContext(objectives=("accuracy", "size_bytes"), proxies=proxies, proxy_info=info)
    return make_optimizer("knapsack", space, directions=MO, seed=0, context=context, sensitivity="fisher", **settings)


def test_knapsack_with_fisher_evaluates_no_sensitivity_and_keeps_every_budget():
    space = reference_space()
    opt = fisher_knapsack(space, sweep=12)
    asked = []
    while candidates := opt.ask(4):
        asked += candidates
        opt.tell([Told(c, tuple(fake_metrics(space, c).values())) for c in candidates])
    assert opt.measured == []  # no sensitivity measurement at all
    assert asked[0] == opt.reference and len(opt.plan) >= 6
    assert asked[1:] == [opt.plan[i]["params"] for i in spread_order(len(opt.plan))]
    proxies, _ = synthetic(space)
    worse = {p.name: p for p in space.params}
    for entry in opt.plan:
        size = sum(proxies[k][repr(v)]["size_bytes"] for k, v in entry["params"].items() if v != opt.reference[k])
        assert entry["predicted"][1] == pytest.approx(fake_metrics(space, opt.reference)["size_bytes"] + size)
        assert entry["predicted"][1] <= entry["budget"] + 1e-9 * abs(entry["budget"])
        assert all(worse[k].domain.contains(v) for k, v in entry["params"].items())
    json.dumps(opt.state_dict())


def test_fisher_allocations_are_optimal_by_brute_force():
    params = tuple(Param(name=f"l{i}.quantize.bits", domain=Choice(values=(8, 4, 3, 2)), primitive="quantize",
                         knob="quantize.bits", layers=(f"l{i}",), compresses=-1) for i in range(3))
    space = BoundSpace(params=params, layers=("l0", "l1", "l2"))
    weight = {"l0": 1.0, "l1": 5.0, "l2": 0.3}
    proxies = {f"{layer}.quantize.bits": {repr(b): {"loss": w * (2.0 ** (8 - b) - 1), "size_bytes": 100.0 * (b - 8)}
                                          for b in (8, 4, 3, 2)} for layer, w in weight.items()}
    context = SearchContext(objectives=("accuracy", "size_bytes"), proxies=proxies,
                            proxy_info={"reference": {"size_bytes": 2400.0}})
    opt = make_optimizer("knapsack", space, directions=MO, seed=0, context=context, sensitivity="fisher", sweep=8)
    opt.ask(100)
    assert opt.plan
    for entry in opt.plan:
        best = min(sum(proxies[p.name][repr(b)]["loss"] for p, b in zip(params, combo))
                   for combo in itertools.product((8, 4, 3, 2), repeat=3)
                   if sum(proxies[p.name][repr(b)]["size_bytes"] for p, b in zip(params, combo)) <= entry["capacity"])
        assert entry["proxy_loss"] == pytest.approx(best, abs=1e-9)
        assert entry["predicted"][1] <= entry["budget"] + 1e-9


def test_fisher_settings_are_checked():
    with pytest.raises(ValueError, match="gradient proxies"):
        make_optimizer("knapsack", reference_space(), directions=MO, seed=0, sensitivity="fisher").ask(1)
    with pytest.raises(AutocompError, match="fisher is not supported by greedy"):
        make_optimizer("greedy", reference_space(), directions=MO, seed=0, sensitivity="fisher")
    proxies, info = synthetic(reference_space())
    context = SearchContext(objectives=("accuracy", "latency_ms"), proxies=proxies, proxy_info=info)
    with pytest.raises(ValueError, match="not the second objective 'latency_ms'"):
        make_optimizer("knapsack", reference_space(), directions=MO, seed=0, context=context,
                       sensitivity="fisher").ask(1)


def test_a_fisher_search_makes_no_sensitivity_evaluations_and_writes_the_proxies(tmp_path, trained):
    model, data = trained
    result = autocomp.search(model, data, space=tiny_space(), optimizer="knapsack",
                             optimizer_settings={"sensitivity": "fisher", "sweep": 6}, trials=40, seed=0,
                             runs_dir=tmp_path, name="f", progress=False, latency=fast_latency())
    doc = json.loads((tmp_path / "f" / "sensitivity.json").read_text())
    assert doc["evaluations"] == 0 and doc["source"] == "fisher" and "cache" not in doc
    assert set(doc["fisher"]["trace"]) == {"1", "3", "5"} and doc["fisher"]["seconds"] > 0
    bits = doc["knobs"]["quantize.bits"]
    row = bits["fisher"][doc["layers"].index("3")]
    assert row[bits["values"].index(32)] == 0.0 and row[bits["values"].index(2)] > row[bits["values"].index(8)]
    assert (tmp_path / "f" / "sensitivity.png").is_file()
    # the reference, then only allocations: each within its budget in predicted size
    assert result.trials[0].params == {p: v for p, v in result.trials[0].params.items()}
    assert all(v in (0.0, 32) for v in result.trials[0].params.values())
    assert 2 <= len(result.trials) <= 7
    sizes = [t.metrics["size_bytes"] for t in result.trials]
    assert min(sizes[1:]) < 0.5 * sizes[0]  # the allocations compress


def test_proxies_skip_weightless_layers_and_leave_their_knobs_without_a_loss():
    # the language-model space searches heads on LlamaAttention, a module with no weight of its own
    from autocomp.bench import lm as lm_bench

    torch.manual_seed(0)
    model = lm_bench.build_lm(lm_bench.QUICK).eval()
    x = torch.randint(0, 256, (8, 16))
    data = (x, torch.roll(x, -1, dims=1))
    bound = autocomp.SearchSpace.from_dict(lm_bench.search_space(True)).bind(model, example=x[:1])
    table = proxy_table(model, bound, data, get_task("language-model"), probes=2)
    heads = [p.name for p in bound.params if p.primitive == "heads"]
    assert heads and all("loss" not in e for name in heads for v, e in table.entries[name].items() if v != "0.0")
    assert not any(name.endswith("self_attn") for name in table.trace)  # no weight, no trace
    bits = [p.name for p in bound.params if p.knob == "quantize.bits"]
    assert bits and all(table.entries[n][repr(2)]["loss"] > table.entries[n][repr(4)]["loss"] > 0.0
                        and table.entries[n][repr(8)]["loss"] == 0.0 for n in bits)  # 8 bits: the reference
    # attention alone: nothing to differentiate, no proxy at all (and no crash)
    attention = ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    task = get_task("language-model")
    assert fisher_diagonal(model, attention, data, task) == {} == hutchinson_trace(model, attention, data, task)


def test_a_fisher_knapsack_with_nothing_the_proxies_predict_says_so():
    space = reference_space()
    proxies, info = synthetic(space)
    blind = {name: {value: {k: v for k, v in entry.items() if k != "loss"} for value, entry in row.items()}
             for name, row in proxies.items()}  # every knob changes a weight's shape: no loss anywhere
    context = SearchContext(objectives=("accuracy", "size_bytes"), proxies=blind, proxy_info=info)
    opt = make_optimizer("knapsack", space, directions=MO, seed=0, context=context, sensitivity="fisher")
    with pytest.raises(ValueError, match="predict no knob of this space.*sensitivity: measured"):
        opt.ask(1)
