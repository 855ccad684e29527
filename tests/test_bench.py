"""`autocomp bench primitives --quick` runs every code path on generated data and writes the contract."""

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
    assert doc["targets"]["packed_disk_vs_reported_max_rel_diff"]["met"]
    for row in doc["rows"]:
        if row.get("size_bytes"):
            assert row["disk_bytes"] == row["size_bytes"]
    assert "targets:" in capsys.readouterr().out
