"""`autocomp bench lm --quick`: a tiny Llama on the standard library's sources, no network, NNCF not run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from autocomp.bench import BENCHES, lm


def test_split_is_deterministic_contiguous_and_disjoint():
    data = bytes(range(256)) * 200 + b"x"  # 400 blocks: 10 whole stripes
    a, b = lm.split_blocks(data), lm.split_blocks(data)
    assert torch.equal(a.val[0], b.val[0]) and torch.equal(a.test[1], b.test[1])
    blocks = (len(data) - 1) // lm.BLOCK
    assert len(a.train[0]) + len(a.val[0]) + len(a.test[0]) == blocks
    assert len(a.val[0]) == blocks // lm.STRIPE * lm.VAL_PER_STRIPE  # whole stripes here
    # labels are the next bytes of the inputs, within a block and across the block boundary
    assert torch.equal(a.train[1][0, :-1], a.train[0][0, 1:])
    assert int(a.train[1][0, -1]) == data[lm.BLOCK]


def test_stdlib_corpus_is_capped_python_source():
    corpus = lm.stdlib_corpus(cap=50_000)
    assert len(corpus.data) == 50_000 and corpus.licence == "PSF-2.0" and corpus.files > 0
    assert b"def " in corpus.data


def test_uniform_policy_covers_every_linear_and_the_embedding():
    model = lm.build_lm(lm.QUICK)
    policy = lm.uniform_policy(model, 4)
    assert "model.embed_tokens" in policy and "lm_head" in policy
    assert len(policy) == 1 + 7 * lm.QUICK.layers + 1  # embedding, q/k/v/o + 3 MLP per block, head


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = lm.run(quick=True, runs_dir=str(runs), peers=False, corpus="stdlib", log=lambda _: None)
    return result, result.write(runs)


def test_quick_bench_rows_sizes_and_targets(quick):
    result, out = quick
    assert BENCHES["lm"] == "autocomp.bench.lm"
    rows = {r["row"]: r for r in result.rows}
    fp32, b8, b4, b3 = (rows[n] for n in ("fp32", "uniform 8-bit per-channel", "uniform 4-bit per-channel",
                                          "uniform 3-bit per-channel"))
    assert fp32["size_bytes"] > b8["size_bytes"] > b4["size_bytes"] > b3["size_bytes"]
    params = result.settings["model"]["params"]
    assert 4 * params <= fp32["size_bytes"] < 4 * params + 20_000  # fp32 weights plus a header
    for row in (fp32, b8, b4, b3):
        assert math.isfinite(row["val_ppl"]) and 1.0 < row["val_ppl"] < 256.0
        assert math.isfinite(row["test_ppl"])
    assert abs(b8["val_ppl"] / fp32["val_ppl"] - 1) < 0.01  # 8-bit per channel barely moves a byte model
    missing = [r for r in result.rows if "missing" in r]
    assert any(r["row"].startswith("nncf") for r in missing)  # peers=False: marked missing, never passed
    grouped = {r["row"]: r for r in result.rows if r["row"].startswith("uniform") and "group" in r["row"]}
    assert len(grouped) == 4 and all(r["size_bytes"] > 0 for r in grouped.values())  # measured, not missing
    # smaller groups store more scales: group 64 is larger than group 128 at the same bits
    assert grouped["uniform 4-bit group 64"]["size_bytes"] > grouped["uniform 4-bit group 128"]["size_bytes"]
    searched = [r for r in result.rows if r["row"].startswith("search")]
    assert searched and all(r["repacked_bytes"] == r["size_bytes"] for r in searched)
    assert all(r["size_bytes"] <= rows[r["row"].removeprefix("search <= ")]["size_bytes"] for r in searched)
    targets = result.targets
    assert set(targets) == {"search_val_ppl_over_uniform4_at_its_bytes", "search_val_ppl_over_uniform3_at_its_bytes",
                            "search_val_ppl_over_fp32_at_uniform4_bytes", "search_val_ppl_over_nncf_at_its_bytes",
                            *(f"search_val_ppl_over_uniform{b}_g{g}_at_its_bytes" for b in (4, 3) for g in (64, 128))}
    assert all(isinstance(t["met"], bool) for t in targets.values())
    assert targets["search_val_ppl_over_nncf_at_its_bytes"]["met"] is False
    doc = json.loads((out / "results.json").read_text())
    corpus = doc["settings"]["corpus"]
    assert corpus["licence"] == "PSF-2.0" and sum(corpus["blocks"].values()) > 0
    assert doc["settings"]["search"]["evaluated"] >= 1
