"""Each extension point is one call from outside the package: a toy primitive, optimizer, runtime and executor
are registered here and one search uses all four."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import autocomp
from autocomp.execution import InProcessExecutor
from autocomp.primitives import CONFIGS, HANDLERS, STAGES
from autocomp.runtimes import RUNTIMES
from autocomp.testing.tiny import fit, tiny_data, tiny_mlp


@dataclass(frozen=True, kw_only=True)
class Round(autocomp.PrimitiveConfig):
    """Toy primitive: weights rounded to `decimals` decimal digits (6 or more: unchanged)."""

    NAME: ClassVar[str] = "round"
    KNOBS: ClassVar[dict[str, autocomp.KnobRange]] = {"decimals": autocomp.KnobRange(kind=int, low=0, high=6,
                                                                                          compresses=-1)}
    decimals: int = 6

    def is_identity(self) -> bool:
        return self.decimals >= 6


def round_layer(layer: nn.Module, config: Round) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(torch.round(layer.weight * 10**config.decimals) / 10**config.decimals)
    return layer


class Sweep(autocomp.Optimizer):
    """Toy optimizer: every parameter at its i-th ordered value, i = 0, 1, 2, ..."""

    name = "sweep"
    SETTINGS: ClassVar[dict[str, type | tuple[type, ...]]] = {"start": int}

    def __init__(self, space, *, directions, seed=0, context=None, start: int = 0) -> None:
        super().__init__(space, directions=directions, seed=seed, context=context)
        self.next = start
        self.told: list[autocomp.Told] = []

    def ask(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            out.append({p.name: p.ordered()[min(self.next, len(p.ordered()) - 1)] for p in self.space.params})
            self.next += 1
        return out

    def tell(self, results) -> None:
        self.told += list(results)

    def state_dict(self) -> dict[str, Any]:
        return {"next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next = state["next"]


class CountingRuntime:
    """Toy runtime: eager PyTorch, counting the batches it runs."""

    calls = 0

    @classmethod
    def prepare(cls, model: nn.Module, calibration: torch.Tensor, threads: int, engine: str):
        def run(x: torch.Tensor) -> torch.Tensor:
            cls.calls += 1
            return model(x)

        return run


class CountingExecutor(InProcessExecutor):
    """Toy executor: in process, counting what it was given."""

    submitted: ClassVar[list[int]] = []

    def submit(self, task) -> None:
        CountingExecutor.submitted.append(task.trial_id)
        super().submit(task)


@pytest.fixture
def registered():
    """The four toys registered (one call each), and the registries restored afterwards."""
    before = (dict(CONFIGS), list(STAGES), dict(HANDLERS), dict(autocomp.optimizers.OPTIMIZERS), dict(RUNTIMES),
              dict(autocomp.execution.EXECUTORS))
    autocomp.register_primitive(Round, layer=round_layer, before="quantize")
    autocomp.register_optimizer("sweep", Sweep)
    autocomp.register_runtime(autocomp.Runtime("counting", CountingRuntime.prepare, folds_batchnorm=False))
    autocomp.register_executor("counting", lambda spec, evaluate, log_dir=None: CountingExecutor(evaluate))
    yield
    CONFIGS.clear(), CONFIGS.update(before[0])
    STAGES[:] = before[1]
    HANDLERS.clear(), HANDLERS.update(before[2])
    autocomp.optimizers.OPTIMIZERS.clear(), autocomp.optimizers.OPTIMIZERS.update(before[3])
    RUNTIMES.clear(), RUNTIMES.update(before[4])
    autocomp.execution.EXECUTORS.clear(), autocomp.execution.EXECUTORS.update(before[5])


def test_a_registered_primitive_is_applied_in_its_stage(registered):
    model = fit(tiny_mlp(), tiny_data())
    compressed = autocomp.compress(model, {"1": {"round": {"decimals": 1}}, "3": {"round": {"decimals": 6}}})
    assert torch.equal(compressed[1].weight, torch.round(model[1].weight * 10) / 10)
    assert not torch.equal(compressed[1].weight, model[1].weight)
    assert torch.equal(compressed[3].weight, model[3].weight)  # identity config: untouched
    assert STAGES.index(Round) == STAGES.index(autocomp.Quantize) - 1


def test_one_search_uses_the_toy_primitive_optimizer_runtime_and_executor(registered, tmp_path):
    data = tiny_data()
    model = fit(tiny_mlp(), data)
    space = autocomp.SearchSpace.from_yaml("""
- name: all
  layers: ["type:Linear"]
  primitives:
    round: {decimals: {int: [0, 6]}}
""")
    text = f"""
version: 1
model: {{name: tiny}}
data: {{name: tiny}}
latency: {{runtime: counting, repeats: 3, warmup: 1}}
execution: {{executor: counting}}
optimizer: {{name: sweep, sweep: {{start: 0}}}}
groups: {json.dumps(space.to_dict())}
"""
    spec = autocomp.parse_run_spec(text)  # the run file knows the new names too
    assert (spec.latency.runtime, spec.execution.executor, spec.optimizer.name) == ("counting", "counting", "sweep")
    CountingRuntime.calls, CountingExecutor.submitted[:] = 0, []
    result = autocomp.search(model, data, space=spec.space, optimizer="sweep", optimizer_settings={"start": 0},
                             trials=4, latency=spec.latency, execution=spec.execution, runs_dir=tmp_path,
                             name="toys", progress=False)
    assert [t.params["1.round.decimals"] for t in result.trials] == [6, 5, 4, 3]  # the sweep's order (fewer
    # decimals compress more, as ordered() goes from least to most compressive)
    assert CountingExecutor.submitted == [0, 1, 2, 3]
    assert CountingRuntime.calls > 0 and all(t.metrics["latency_ms"] > 0 for t in result.trials)
    coarsest = autocomp.compress(model, result.trials[-1].policy)
    assert torch.equal(coarsest[1].weight, torch.round(model[1].weight * 1000) / 1000)


def test_unknown_names_are_refused_with_the_registered_ones_listed(registered):
    with pytest.raises(autocomp.errors.SpaceError, match="unknown runtime.*known: torch, torch-int8, onnx, onnx-int8, "
                                                         "torch-cuda, counting"):
        autocomp.parse_run_spec("version: 1\nmodel: {name: m}\ndata: {name: d}\nlatency: {runtime: fast}\n"
                                "groups: [{name: a, layers: [x], primitives: {prune: {ratio: 0.5}}}]")
    with pytest.raises(autocomp.errors.SpaceError, match="unknown executor.*known: inprocess, ray, counting"):
        autocomp.parse_run_spec("version: 1\nmodel: {name: m}\ndata: {name: d}\nexecution: {executor: dask}\n"
                                "groups: [{name: a, layers: [x], primitives: {prune: {ratio: 0.5}}}]")


PLUGIN = '''
import autocomp
from autocomp.execution import InProcessExecutor

autocomp.register_runtime(autocomp.Runtime("plugin-eager", lambda m, c, t, e: m.eval(), folds_batchnorm=False))
autocomp.register_executor("plugin-local", lambda spec, evaluate, log_dir=None: InProcessExecutor(evaluate))
'''


def test_the_command_line_loads_plugins_named_in_the_environment(tmp_path, monkeypatch, capsys):
    """A module in the folder the command runs from, named in AUTOCOMP_PLUGINS, registers before files are read."""
    from autocomp.cli import main
    from autocomp.testing.processes import MNIST_SPACE
    from autocomp.testing.tiny import write_fake_mnist

    write_fake_mnist(tmp_path / "data" / "mnist", n_train=200, n_test=50)
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    (tmp_path / "space.yaml").write_text(MNIST_SPACE.replace("latency: {", "latency: {runtime: plugin-eager, ")
                                         + "execution: {executor: plugin-local}\n")
    monkeypatch.chdir(tmp_path)
    before = (dict(RUNTIMES), dict(autocomp.execution.EXECUTORS))
    try:
        monkeypatch.delenv("AUTOCOMP_PLUGINS", raising=False)
        assert main(["check", "space.yaml", "--data-dir", "data"]) == 2  # unknown without the plugin
        err = capsys.readouterr().err
        assert "unknown runtime" in err and "key 'latency.runtime', value 'plugin-eager'" in err
        monkeypatch.setenv("AUTOCOMP_PLUGINS", "my_plugin")
        assert main(["check", "space.yaml", "--data-dir", "data"]) == 0
        assert "plugin-local executor" in capsys.readouterr().out
        monkeypatch.setenv("AUTOCOMP_PLUGINS", "no_such_plugin")
        assert main(["check", "space.yaml", "--data-dir", "data"]) == 2
        assert "plugin 'no_such_plugin' cannot be imported" in capsys.readouterr().err
    finally:
        RUNTIMES.clear(), RUNTIMES.update(before[0])
        autocomp.execution.EXECUTORS.clear(), autocomp.execution.EXECUTORS.update(before[1])
