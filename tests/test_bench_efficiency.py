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
    assert set(rows) == set(bench.STRATEGIES)
    assert rows["tpe"]["evals"] == 24 and rows["tpe"]["evals_to_tpe_hv"] <= 24  # TPE reaches its own final
    assert rows["knapsack"]["evals"] < 24  # the allocator stops after its sweep
    # with the proxies: no sensitivity phase, only the reference and the allocations, and their wall time
    assert rows["knapsack-fisher"]["evals"] <= 1 + bench.SWEEP and rows["knapsack-fisher"]["proxy_s"] > 0
    assert rows["knapsack"]["proxy_s"] is None and rows["tpe-guided-fisher"]["proxy_s"] > 0
    per = doc["settings"]["per_seed"]
    for label in bench.GUIDED:  # the surrogate's figures come from the run's surrogate.json
        summary = json.loads((tmp_path / "bench-efficiency" / "runs" / f"{label}-s0" / "surrogate.json")
                             .read_text())["summary"]
        assert per[label][0]["screened_share"] == summary["screened_share"]
        assert rows[label]["acc_err_median"] == summary["error"]["median"][0]
    for label in bench.GUIDED:  # guided runs begin from the allocator and screen: work the plain run does not
        assert per[label][0]["screened_share"] > 0 or rows[label]["evals_to_tpe_hv"] is not None
    # the targets are there, each with its value and whether it was met (checked against `target` above)
    assert any(k.startswith("best_guided_") for k in doc["targets"])
    assert {f"{label}_final_hv_minus_knapsack" for label in bench.GUIDED} <= set(doc["targets"])
