"""Tasks: a language model is scored by perplexity and a regressor by its error, through the whole search."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

import autocomp
from autocomp.early_stop import bars
from autocomp.errors import AutocompError
from autocomp.metrics import accuracy
from autocomp.tasks import Classification, LanguageModel, Regression, Task, get_task
from autocomp.testing.tiny import fast_latency, fit, tiny_data, tiny_mlp

SPACE = """
- name: all
  layers: ["type:Linear", "type:Embedding"]
  primitives:
    quantize: {bits: {choice: [2, 3, 8]}}
"""


class Bigram(nn.Module):
    """A causal language model that sees one token back: logits (B, T, V) for token ids (B, T)."""

    def __init__(self, vocab: int = 16, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(torch.relu(self.hidden(self.embed(ids))))}  # a dict, as HF models give


def token_blocks(n: int = 96, length: int = 12, vocab: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences where each token is mostly the previous plus one: learnable by a bigram model."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    steps = 1 + (torch.rand(n, length, generator=g) < 0.1).long()
    seq = (start + steps.cumsum(1)) % vocab
    return seq[:, :-1], seq[:, 1:]  # inputs and the next tokens


def train_lm(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], steps: int = 150) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        LanguageModel().loss(model(data[0]), data[1]).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def lm():
    data = token_blocks()
    return train_lm(Bigram(), data), data


def test_classification_metrics_match_the_definitions():
    data = tiny_data()
    model = fit(tiny_mlp(), data, steps=20)
    got = Classification().evaluate(model, data, batch_size=100)
    with torch.no_grad():
        out = model(data[0])
    assert got["accuracy"] == pytest.approx(float((out.argmax(1) == data[1]).float().mean()))
    assert got["loss"] == pytest.approx(float(nn.functional.cross_entropy(out, data[1])), rel=1e-5)
    top5 = float((out.topk(4, dim=1).indices == data[1][:, None]).any(1).float().mean())  # 4 classes: all
    assert got["top5_accuracy"] == pytest.approx(top5) == pytest.approx(1.0)


def test_perplexity_is_exp_of_the_mean_token_cross_entropy_and_ignores_padding(lm):
    model, (x, y) = lm
    y = y.clone()
    y[:, -3:] = -100  # padding: not scored
    got = LanguageModel().evaluate(model, (x, y), batch_size=40)  # batches that split the rows unevenly
    with torch.no_grad():
        logits = model(x)["logits"]
    kept = y != -100
    nll = nn.functional.cross_entropy(logits[kept], y[kept])
    assert got["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert got["token_accuracy"] == pytest.approx(float((logits[kept].argmax(-1) == y[kept]).float().mean()))
    assert got["perplexity"] < 4  # it learnt the data (16 tokens: 16 would be chance)


def test_regression_metrics_and_capped_evaluation():
    torch.manual_seed(0)
    x = torch.randn(50, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
    model = nn.Linear(3, 1)
    got = Regression().evaluate(model, (x, y), batch_size=20)
    with torch.no_grad():
        error = model(x).squeeze(1) - y
    assert got["mse"] == pytest.approx(float((error**2).mean()), rel=1e-5)
    assert got["mae"] == pytest.approx(float(error.abs().mean()), rel=1e-5)
    first = Regression().evaluate(model, (x, y), batch_size=20, max_batches=1)
    assert first["mse"] == pytest.approx(float((error[:20] ** 2).mean()), rel=1e-5)


def test_bf16_autocast_changes_the_arithmetic_not_the_result(lm):
    model, data = lm
    fp32 = LanguageModel().evaluate(model, data)
    bf16 = LanguageModel().evaluate(model, data, precision="bf16")
    assert bf16["loss"] != fp32["loss"]  # the forward pass really ran in bfloat16
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)


def test_a_language_model_search_scores_perplexity_and_measures_it_on_test_once(lm, tmp_path):
    model, data = lm
    test = token_blocks(48, seed=1)
    result = autocomp.search(model, data, space=autocomp.SearchSpace.from_yaml(SPACE), task="language-model",
                             trials=6, optimizer="random", latency=fast_latency(), runs_dir=tmp_path, name="lm",
                             progress=False, test_data=test)
    assert [(o.name, o.direction) for o in result.objectives] == [("perplexity", "minimize"),
                                                                   ("size_bytes", "minimize")]
    assert result.baseline["perplexity"] == pytest.approx(LanguageModel().evaluate(model, data)["perplexity"])
    for trial in result.trials:  # each trial's perplexity is its compressed model's, measured again here
        if trial.status == "complete":
            again = LanguageModel().evaluate(autocomp.compress(model, trial.policy), data)
            assert trial.metrics["perplexity"] == pytest.approx(again["perplexity"], rel=1e-6)
    worst = max(t.metrics["perplexity"] for t in result.trials if t.status == "complete")
    assert worst > result.baseline["perplexity"]  # 2-bit weights cost perplexity: the metric sees compression
    assert set(result.test_metrics) == {t.id for t in result.pareto}
    point = result.pareto[0]
    again = LanguageModel().evaluate(autocomp.compress(model, point.policy), test)
    assert result.test_metrics[point.id]["test_perplexity"] == pytest.approx(again["perplexity"], rel=1e-6)
    assert "val perplexity" in result.table() and "test (measured once" in result.table()


def test_regression_search_fine_tunes_on_mse(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    y = torch.stack([x[:, :4].sum(1), x[:, 4:].sum(1)], 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    space = autocomp.SearchSpace.from_yaml(SPACE.replace(", \"type:Embedding\"", ""))
    tuned = autocomp.FineTuneSpec(epochs=2, lr=1e-3, batch_size=50)
    result = autocomp.search(model.eval(), (x, y), space=space, task="regression", trials=4, optimizer="random",
                             train_data=(x, y), finetune=tuned, latency=fast_latency(), runs_dir=tmp_path,
                             name="reg", progress=False)
    assert [o.name for o in result.objectives] == ["mse", "size_bytes"]
    complete = [t for t in result.trials if t.status == "complete"]
    assert complete and all("mse@1" in t.metrics for t in complete)  # the learning curve is the task's metric
    assert all("accuracy" not in t.metrics for t in complete)


def test_a_task_that_cannot_score_the_model_is_refused_before_anything_is_written(tmp_path):
    data = tiny_data()
    with pytest.raises(AutocompError, match="language model must give logits"):
        autocomp.search(tiny_mlp(), data, space=autocomp.SearchSpace.from_yaml(SPACE), task="language-model",
                        trials=2, runs_dir=tmp_path, name="bad", progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(AutocompError, match="unknown task 'clasification'"):
        get_task("clasification")


def test_a_users_task_is_named_by_module_and_attribute_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "mytasks.py").write_text(
        "from autocomp.tasks import Regression\n"
        "class Huber(Regression):\n"
        "    NAME = 'huber'\n"
        "    METRICS = {'mse': 'minimize', 'mae': 'minimize', 'loss': 'minimize'}\n"
        "not_a_task = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    task = get_task("mytasks:Huber")
    assert isinstance(task, Task) and task.NAME == "huber"
    with pytest.raises(AutocompError, match="gives a int, not an autocomp.tasks.Task"):
        get_task("mytasks:not_a_task")
    with pytest.raises(AutocompError, match="cannot be imported"):
        get_task("mytasks:missing")


def test_early_stopping_bars_for_a_metric_to_minimize():
    curves = [{1: 10.0}, {1: 20.0}, {1: 30.0}, {1: 40.0}]
    assert bars(curves, "median", 3, startup=2, maximize=False) == {1: 25.0}
    # halving keeps the best third: for perplexity the lowest values
    assert bars(curves, "halving", 3, startup=2, eta=3, maximize=False)[1] == 10.0
    assert bars(curves, "halving", 3, startup=2, eta=3)[1] == 40.0


def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    data = tiny_data()
    with pytest.raises(AutocompError, match="device 'cuda' is not available here"):
        space = autocomp.SearchSpace.from_yaml(SPACE.replace(", \"type:Embedding\"", ""))
        autocomp.search(tiny_mlp(), data, space=space, trials=2, runs_dir=tmp_path, name="gpu", progress=False,
                        execution=autocomp.ExecutionSpec(device="cuda"))
    assert not (tmp_path / "gpu").exists()


def test_a_capped_search_scores_on_the_first_batches_and_rescores_its_front_on_all(tmp_path):
    data = tiny_data(n=200)
    model = fit(tiny_mlp(), data, steps=30)
    space = autocomp.SearchSpace.from_yaml(SPACE.replace(", \"type:Embedding\"", ""))
    result = autocomp.search(model, data, space=space, trials=8, val_batches=1, batch_size=40,
                             constraints=[autocomp.Constraint(metric="accuracy", min="0.5x")],
                             latency=fast_latency(), runs_dir=tmp_path, name="capped", progress=False)
    first = (data[0][:40], data[1][:40])
    journal = {t.id: t for t in result.trials}
    assert result.baseline["accuracy"] == pytest.approx(accuracy(model, data))  # the baseline on all rows too
    assert result.baseline["accuracy@capped"] == pytest.approx(accuracy(model, first))
    for point in result.pareto:
        compressed = autocomp.compress(model, point.policy)
        assert point.metrics["accuracy"] == pytest.approx(accuracy(compressed, data))
        assert point.metrics["accuracy@capped"] == pytest.approx(accuracy(compressed, first))
        assert point.values[0] == point.metrics["accuracy"]  # the front was chosen on the full numbers
        assert point.metrics["accuracy_drop"] == pytest.approx(result.baseline["accuracy"] - point.metrics["accuracy"])
        # the relative bound was resolved on the baseline's full number, and every front point meets it
        assert point.violation == 0 and point.metrics["accuracy"] >= 0.5 * result.baseline["accuracy"]
    for trial in result.trials:  # the journal keeps what the search saw: the first 40 rows
        if trial.status == "complete" and trial.id not in {p.id for p in result.pareto}:
            assert "accuracy@capped" not in journal[trial.id].metrics


class Rows(torch.utils.data.Dataset):
    """Rows read one at a time (as from disk), counting reads: nothing hands autocomp the whole split."""

    def __init__(self, data):
        self.data, self.reads = data, 0

    def __len__(self):
        return len(self.data[1])

    def __getitem__(self, i):
        self.reads += 1
        return self.data[0][i], self.data[1][i]


def test_a_dataloader_is_streamed_batch_by_batch_and_scores_as_the_tensors_do(tmp_path):
    data = tiny_data(n=200)
    model = fit(tiny_mlp(), data, steps=30)
    space = autocomp.SearchSpace.from_yaml(SPACE.replace(", \"type:Embedding\"", ""))
    rows = Rows(data)
    loader = torch.utils.data.DataLoader(rows, batch_size=50)
    tuned = autocomp.FineTuneSpec(epochs=1, steps=2, batch_size=50)
    train_rows = Rows(data)
    train = torch.utils.data.DataLoader(train_rows, batch_size=25, shuffle=True)
    streamed = autocomp.search(model, loader, space=space, trials=3, optimizer="random", train_data=train,
                               finetune=tuned, latency=fast_latency(), runs_dir=tmp_path, name="s", progress=False)
    assert rows.reads >= 4 * 200  # every candidate (and the baseline) read the rows again, batch by batch
    for trial in streamed.trials:
        if trial.status == "complete":  # the same numbers the rows give as tensors, fine-tuned the same way
            compressed = autocomp.compress(model, trial.policy)
            autocomp.finetune.finetune(compressed, train, tuned)
            assert trial.metrics["accuracy"] == pytest.approx(accuracy(compressed, data))
    # fine-tuning drew `steps` batches per epoch from the loader, not the whole split
    per_candidate = 2 * 25
    assert train_rows.reads % per_candidate == 0 and train_rows.reads < 8 * 200
    with pytest.raises(AutocompError, match="one-shot iterator"):
        autocomp.search(model, (b for b in loader), space=space, trials=1, runs_dir=tmp_path, name="g",
                        progress=False)


def test_taylor_channel_scores_are_refused_for_a_task_not_trained_on_cross_entropy(tmp_path):
    x = torch.randn(64, 1, 8, 8)
    space = autocomp.SearchSpace.from_yaml("""
- name: convs
  layers: ["type:Conv2d"]
  primitives: {channels: {ratio: 0.25, criterion: {choice: [l1, taylor]}}}
""")
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 1))
    with pytest.raises(AutocompError, match="criterion 'taylor'.*regression"):
        autocomp.search(model, (x, torch.randn(64, 1)), space=space, task="regression", trials=1,
                        runs_dir=tmp_path, name="t", progress=False)
    assert not (tmp_path / "t").exists()


class ScaledMSE(Regression):
    NAME = "scaled-mse"


def test_a_task_object_is_recorded_so_that_it_can_be_found_again(tmp_path):
    from autocomp.tasks import task_reference

    assert task_reference(LanguageModel()) == "language-model"
    ref = task_reference(ScaledMSE())
    assert ref == f"{__name__}:ScaledMSE" and isinstance(get_task(ref), ScaledMSE)


def test_the_gpu_latency_runtime_is_refused_where_there_is_no_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    space = autocomp.SearchSpace.from_yaml(SPACE.replace(", \"type:Embedding\"", ""))
    with pytest.raises(AutocompError, match="latency runtime 'torch-cuda': device 'cuda' is not available"):
        autocomp.search(tiny_mlp(), tiny_data(), space=space, trials=1, runs_dir=tmp_path, name="c", progress=False,
                        latency=autocomp.LatencySpec(runtime="torch-cuda", repeats=2, warmup=1))
    assert not (tmp_path / "c").exists()


def test_rescoring_a_capped_front_keeps_going_until_every_front_point_is_measured_whole():
    """Capped scores flatter trial 0; trial 1's full measurement fails; trial 2 surfaces in a second round."""
    import collections

    from autocomp.execution.base import Outcome
    from autocomp.runner import Trial, front_of, rescore_front

    capped = {0: (0.9, 100.0), 1: (0.95, 200.0), 2: (0.85, 100.0), 3: (0.8, 50.0)}
    full = {-1: 0.9, 0: 0.7, 2: 0.84, 3: 0.6}

    class Executor:
        def __init__(self):
            self.queue, self.rounds = collections.deque(), []

        def submit(self, task):
            assert task.split == "val-full"
            self.queue.append(task)
            self.rounds.append(task.trial_id)

        def next_outcome(self):
            task = self.queue.popleft()
            if task.trial_id in full:
                return Outcome(task.trial_id, "complete", {"accuracy": full[task.trial_id]})
            return Outcome(task.trial_id, "failed", error="boom")

    objectives = autocomp.objective.as_objectives(["accuracy", "size_bytes"])
    trials = [Trial(id=i, params={}, policy={}, status="complete", metrics={"accuracy": a, "size_bytes": s},
                    values=(a, s)) for i, (a, s) in capped.items()]
    executor = Executor()
    # 0.9x of the capped baseline (0.95) would be 0.855, which trial 2's full 0.84 misses; of the full one, 0.81
    out, baseline = rescore_front(executor, trials, objectives, [autocomp.Constraint(metric="accuracy", min="0.9x")],
                                  {"accuracy": 0.95})
    assert sorted(executor.rounds) == [-1, 0, 1, 2, 3] and executor.rounds.count(-1) == 1
    assert baseline == {"accuracy": 0.9, "accuracy@capped": 0.95}
    status = {t.id: t.status for t in out}
    assert status == {0: "complete", 1: "failed", 2: "complete", 3: "complete"}
    by_id = {t.id: t for t in out}
    # the drop is from the baseline's full number (0.9), not its capped one (0.95)
    assert by_id[0].metrics == pytest.approx({"accuracy": 0.7, "accuracy@capped": 0.9, "size_bytes": 100.0,
                                              "accuracy_drop": 0.2})
    assert by_id[2].violation == 0 and by_id[3].violation > 0  # 0.6 < 0.81
    assert [t.id for t in front_of(out, objectives)] == [2]


def test_an_evaluator_on_a_persistent_worker_loader_pickles_for_ray(tmp_path):
    import pickle

    from autocomp.evaluate import CompressionEvaluator

    data = tiny_data(n=120)
    model = fit(tiny_mlp(), data, steps=30)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=20, num_workers=1,
                                         persistent_workers=True)
    evaluator = CompressionEvaluator(model, loader, latency=fast_latency(), val_batches=2)
    first = evaluator.score(model, loader)
    copy = pickle.loads(pickle.dumps(evaluator))  # what Ray's object store does to it: no live iterator travels
    assert copy.score(copy.model, copy.data) == first  # the first 2 batches of 20 rows
    assert first == pytest.approx(Classification().evaluate(model, (data[0][:40], data[1][:40])), rel=1e-5)
    shuffling = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=20, shuffle=True)
    space = autocomp.SearchSpace.from_yaml(SPACE.replace(", \"type:Embedding\"", ""))
    with pytest.raises(AutocompError, match="val_data: a shuffling DataLoader"):
        autocomp.search(model, shuffling, space=space, trials=1, runs_dir=tmp_path, name="s", progress=False)
