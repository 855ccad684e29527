"""A language model from the command line: the user's model module, a folder of text, `task: language-model`;
search scores perplexity, finalize selects on validation perplexity and then measures test perplexity once."""

from __future__ import annotations

import json

import pytest

from autocomp.cli import main

MODEL = '''
import torch
from torch import nn


class ByteBigram(nn.Module):
    def __init__(self, dim=24):
        super().__init__()
        self.embed = nn.Embedding(256, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 256)

    def forward(self, ids):
        return {"logits": self.head(torch.relu(self.mix(self.embed(ids))))}
'''

RUN = """\
version: 1
model: {name: "lmmodels:ByteBigram"}
data: {name: text, dir: corpus, block_size: 16, val_fraction: 0.2, val_batches: 1, batch_size: 8}
task: language-model
train: {epochs: 3, batch_size: 16, lr: 0.01}
finetune: {epochs: 2, batch_size: 16, lr: 0.001, early_stop: median, startup: 2}
latency: {repeats: 3, warmup: 1}
constraints: {perplexity: {max: 3.0x}}
groups:
  - name: all
    layers: ["type:Linear", "type:Embedding"]
    primitives:
      quantize: {bits: {choice: [2, 4, 8]}}
"""


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    (root / "lmmodels.py").write_text(MODEL)
    (root / "corpus").mkdir()
    words = "the quick brown fox jumps over the lazy dog while a small cat sleeps in the warm sun ".split()
    text = " ".join(words[(i * 7) % len(words)] for i in range(900))
    (root / "corpus" / "a.txt").write_text(text)
    (root / "run.yaml").write_text(RUN)
    return root


def test_search_and_finalize_a_language_model_from_a_text_folder(lm_run, monkeypatch, capsys):
    monkeypatch.chdir(lm_run)  # the model module imports from the folder the command runs in, as `python -m`
    assert main(["check", "run.yaml"]) == 0
    assert main(["search", "run.yaml", "--trials", "4", "--runs-dir", "runs", "--name", "lm", "--quiet"]) == 0
    run = lm_run / "runs" / "lm"
    info = json.loads((run / "run.json").read_text())
    pareto = json.loads((run / "pareto.json").read_text())
    assert info["task"] == "language-model" and pareto["metric"] == "perplexity"
    assert [o["name"] for o in info["objectives"]] == ["perplexity", "size_bytes"]
    baseline = info["baseline"]["perplexity"]
    assert 1 < baseline < 64  # trained on the corpus: far below the 256 of a uniform guess over bytes
    trials = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    scored = [t for t in trials if t["status"] in ("complete", "pruned")]
    assert scored and all("perplexity@1" in t["metrics"] for t in scored)  # learning curves of perplexity
    assert all(t["test_perplexity"] is None for t in pareto["trials"])  # search never looks at test
    assert "val perplexity" in capsys.readouterr().out

    assert main(["finalize", str(run), "--top", "1", "--epochs", "1"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["metric"] == "perplexity" and "test_perplexity" in final["baseline"]
    row = final["trials"][0]
    assert row["test_perplexity"] > 1 and "search_perplexity" in row and row["id"] == final["selected"]


def test_a_classification_model_with_a_language_model_task_is_refused_by_check(lm_run, monkeypatch, capsys):
    monkeypatch.chdir(lm_run)
    (lm_run / "clf.py").write_text("from torch import nn\n\ndef net():\n"
                                   "    return nn.Sequential(nn.Embedding(256, 8), nn.Flatten(), nn.Linear(128, 4))\n")
    (lm_run / "bad.yaml").write_text(RUN.replace("lmmodels:ByteBigram", "clf:net"))
    assert main(["check", "bad.yaml"]) == 2
    assert "a language model must give logits (B, T, vocabulary)" in capsys.readouterr().err


REGRESSION = """\
version: 1
model: {name: "regmodels:mlp"}
data: {name: npz, path: reg.npz}
task: regression
train: {epochs: 20, batch_size: 32, lr: 0.01}
finetune: {epochs: 1, batch_size: 32, lr: 0.001}
artifact: {entropy: true}
latency: {repeats: 3, warmup: 1}
groups:
  - name: all
    layers: ["type:Linear"]
    primitives:
      quantize: {bits: {choice: [3, 4]}}
      prune: {ratio: {choice: [0.0, 0.5]}}
"""


def test_export_rebuilds_a_regression_trial_with_the_runs_own_loss_byte_for_byte(tmp_path, monkeypatch):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    w = rng.normal(size=(8, 2)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x_train=x[:240], y_train=x[:240] @ w, x_test=x[240:], y_test=x[240:] @ w)
    (tmp_path / "regmodels.py").write_text("from torch import nn\n\ndef mlp():\n"
                                           "    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))\n")
    (tmp_path / "run.yaml").write_text(REGRESSION)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "run.yaml", "--trials", "3", "--runs-dir", "runs", "--name", "reg", "--quiet"]) == 0
    run = tmp_path / "runs" / "reg"
    assert json.loads((run / "run.json").read_text())["baseline"]["mse"] < float(((x @ w) ** 2).mean())
    trials = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    for trial in (t for t in trials if t["status"] == "complete"):
        out = tmp_path / f"t{trial['id']}.acz"
        assert main(["export", str(run), "--trial", str(trial["id"]), "--out", str(out)]) == 0
        # Huffman-coded: any other fine-tuning (another loss) would give other codes and another length
        assert out.stat().st_size == trial["metrics"]["size_bytes"]
