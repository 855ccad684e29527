"""Every primitive in one search space: candidates compose, run, and their packed files reload exactly."""

from pathlib import Path

import torch

import autocomp
from autocomp.artifacts import load_packed
from autocomp.policy import Policy
from autocomp.zoo import ResNet20

ROOT = Path(__file__).resolve().parents[1]


def test_resnet20_space_with_every_primitive(tmp_path):
    spec = autocomp.load_run_spec(ROOT / "search_spaces" / "resnet20_cifar10.yaml")
    torch.manual_seed(0)
    model = ResNet20(width=0.5).eval()
    x = torch.randn(96, 3, 32, 32)
    y = torch.randint(0, 10, (96,))
    result = autocomp.search(
        model, (x, y), space=spec.space, trials=4, seed=1, runs_dir=tmp_path, name="all", progress=False,
        latency=autocomp.LatencySpec(batch_size=8, threads=1, warmup=1, repeats=2), entropy=True,
        calibration_data=(x[:32], y[:32]),
    )
    assert [t.status for t in result.trials] == ["complete"] * 4, [t.error for t in result.trials]
    primitives = {p for t in result.trials for layer in t.policy.values() for p in layer}
    assert primitives == {"channels", "lowrank", "prune", "share", "quantize"}
    smaller = [t for t in result.trials if t.metrics["params_stored"] < sum(p.numel() for p in model.parameters())]
    assert smaller  # channel removal / factorisation really shrank a model
    from autocomp.evaluate import CompressionEvaluator

    evaluator = CompressionEvaluator(model, (x, y), calibration=(x[:32], y[:32]), entropy=True)
    trial = result.trials[0]
    policy = Policy.from_dict(trial.policy)
    compressed = evaluator.compressed(policy)
    data = evaluator.artifact(compressed, policy)
    assert len(data) == trial.metrics["size_bytes"]
    path = tmp_path / "m.acz"
    path.write_bytes(data)
    with torch.no_grad():
        assert torch.equal(load_packed(path, model=ResNet20(width=0.5))(x[:8]), compressed(x[:8]))
