"""`autocomp bench models --quick` end to end: results.json's contract, targets recomputed from the rows, and
real cells of every status (works, refused, failed, n/a)."""

import collections
import json

import pytest
import torch
from torch import nn

from autocomp.bench import BENCHES
from autocomp.bench.common import OPS
from autocomp.bench.models import CASES, MEASURED, ModelCase, main, run_models

pytest.importorskip("transformers")


class _NeedsDenseWeights(nn.Module):
    """A model whose own forward refuses zeros in its weight: pruning it must give a failed cell, not a crash."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if bool((self.fc.weight == 0).any()):
            raise RuntimeError("this model needs dense weights")
        return self.fc(x)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    main(quick=True, runs_dir=str(out))
    return json.loads((out / "bench-models" / "results.json").read_text())


def test_registered_and_every_family_group_in_quick():
    assert BENCHES["models"] == "autocomp.bench.models"
    assert len(CASES) >= 30
    quick = [c for c in CASES if c.quick]
    assert {c.kind for c in quick} == {"cnn", "transformer"} and 5 <= len(quick) <= 10


def test_results_contract_and_targets_recomputed(quick):
    assert {"name", "machine", "settings", "rows", "targets"} <= set(quick) and quick["name"] == "models"
    rows, columns = quick["rows"], quick["settings"]["primitives"]
    assert [r["model"] for r in rows] == [c.name for c in CASES if c.quick]
    for target in quick["targets"].values():  # met is the stated comparison of the value
        op, bound = target["target"].split(" ", 1)
        assert target["met"] is OPS[op](target["value"], float(bound))
    for row in rows:
        assert set(row["cells"]) == {*columns, "onnx", "int8"}
        for cell in row["cells"].values():
            assert cell["status"] in ("works", "refused", "failed", "n/a")
            assert cell["status"] == "works" or cell["reason"]
        assert 0 < row["reachable"] <= 1 and row["analysis_s"] >= 0
    cells = [c for r in rows for c in r["cells"].values()]
    targets = quick["targets"]
    assert targets["failed_cells"]["value"] == sum(c["status"] == "failed" for c in cells)
    for name in MEASURED:
        counts = collections.Counter(r["cells"][name]["status"] for r in rows)
        judged = counts["works"] + counts["refused"] + counts["failed"]
        assert targets[f"works_share_{name}"]["value"] == pytest.approx(counts["works"] / judged)
    assert targets["packed_not_bit_exact"]["value"] == sum(c.get("exact") is False for c in cells)
    assert targets["min_reachable_bytes"]["value"] == min(r["reachable"] for r in rows)
    assert targets["slowest_analysis_s"]["value"] == max(r["analysis_s"] for r in rows)
    for name in ("channels_cnn_families", "heads_or_channels_transformer_families"):
        assert targets[name]["value"] == len(targets[name]["working"])
        assert float(targets[name]["target"].split()[1]) == len(targets[name]["families"])


def test_real_cells_of_each_status(quick):
    statuses = {c["status"] for r in quick["rows"] for c in r["cells"].values()}
    assert {"works", "refused", "n/a"} <= statuses
    by = {r["model"]: r["cells"] for r in quick["rows"]}
    assert by["zoo-resnet20"]["prune"]["status"] == "works" and by["zoo-resnet20"]["prune"]["exact"]
    assert by["grouped-se-concat"]["skip"]["status"] == "n/a"  # no residual branch
    assert by["bert"]["int8"]["status"] == "refused"  # torch.fx cannot trace it


def test_an_exception_after_binding_is_a_failed_cell(tmp_path):
    case = ModelCase("dense-only", "test", "cnn", lambda: _NeedsDenseWeights().eval(),
                     lambda: torch.randn(2, 8, generator=torch.Generator().manual_seed(0)))
    result = run_models([case], str(tmp_path))
    cells = result.rows[0]["cells"]
    assert cells["prune"]["status"] == "failed" and "needs dense weights" in cells["prune"]["reason"]
    assert cells["lowrank"]["status"] == "works"  # the same model, another primitive: a cell of its own
    assert result.targets["failed_cells"]["value"] >= 1 and not result.targets["failed_cells"]["met"]
