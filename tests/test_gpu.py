"""On a CUDA GPU (skipped without one; `.ci/gpu` runs these on a GPU machine): evaluation and fine-tuning run
there, and what they produce is a CPU artifact that loads and runs on a CPU."""

from __future__ import annotations

import json

import pytest
import torch

import autocomp
from autocomp.evaluate import CompressionEvaluator
from autocomp.policy import Policy
from autocomp.testing.tiny import fast_latency, fit, tiny_data, tiny_mlp, tiny_space

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_search_on_the_gpu_fine_tunes_there_and_exports_for_the_cpu(tmp_path, precision):
    data = tiny_data()
    model = fit(tiny_mlp(), data)
    tuned = autocomp.FineTuneSpec(epochs=1, batch_size=64, lr=1e-3)
    result = autocomp.search(model, data, space=tiny_space(), trials=4, train_data=data, finetune=tuned,
                             latency=fast_latency(), runs_dir=tmp_path, name=precision, progress=False,
                             execution=autocomp.ExecutionSpec(device="cuda", precision=precision), test_data=data)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["device"]["evaluated_on"].startswith("cuda")
    assert all(t.status == "complete" for t in result.trials)
    point = result.pareto[-1]
    evaluator = CompressionEvaluator(model, data, train=data, finetune=tuned, latency=fast_latency(), device="cuda",
                                     precision=precision)
    compressed = evaluator.compressed(Policy.from_dict(point.policy))  # fine-tuned on the GPU, returned on the CPU
    assert all(p.device.type == "cpu" for p in compressed.parameters())
    packed = evaluator.artifact(compressed, Policy.from_dict(point.policy))
    assert len(packed) == point.metrics["size_bytes"]
    (tmp_path / "p.acz").write_bytes(packed)
    reloaded = autocomp.load_packed(tmp_path / "p.acz", model=model)
    assert torch.equal(reloaded(data[0][:16]), compressed(data[0][:16]))


def test_latency_on_the_gpu_is_timed_to_the_end_of_its_kernels():
    from autocomp.latency_table import Conditions, measure_model

    model = tiny_mlp()
    batch = tiny_data(64)[0]
    times = measure_model(model, batch, Conditions.here("torch-cuda", 64, 1), calibration=batch, warmup=2,
                          repeats=5)
    assert len(times) == 5 and all(t > 0 for t in times)
