"""Helpers for tests that run `autocomp` as a real process and read its journal while it runs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from autocomp.testing.tiny import write_fake_mnist

# LeNet-300-100 on generated MNIST (write_fake_mnist): a real CLI run that takes seconds
MNIST_SPACE = """\
version: 1
model: {name: lenet300}
data: {name: mnist, val_fraction: 0.2}
train: {epochs: 1, batch_size: 64}
latency: {repeats: 20, warmup: 2}
groups:
  - name: fc
    layers: ["type:Linear"]
    primitives:
      prune: {ratio: {float: [0.0, 0.9], step: 0.1}}
      quantize: {bits: {choice: [2, 4, 8, 32]}}
"""


def cli(*args: str) -> list[str]:
    """The command line of `autocomp ARGS` in this Python."""
    return [sys.executable, "-m", "autocomp.cli", *args]


def journal(run_dir: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a run's trials.jsonl (a line being written is left out)."""
    path = Path(run_dir) / "trials.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.endswith(b"}")]


def whole_mnist_run(root: Path, space: str, trials: int, seed: int = 5) -> tuple[list[str], list[dict[str, Any]]]:
    """Generated MNIST and `space` under `root`, and one uninterrupted `autocomp search` of it named "whole".

    Returns the command-line arguments every run of the test shares (data, trials, runs dir, seed) and the
    whole run's journal, which a killed-and-resumed run must reproduce.
    """
    write_fake_mnist(root / "mnist", n_train=400, n_test=100)
    (root / "space.yaml").write_text(space)
    common = ["--data-dir", str(root / "mnist"), "--trials", str(trials), "--runs-dir", str(root), "--quiet",
              "--seed", str(seed)]
    subprocess.run(cli("search", str(root / "space.yaml"), "--name", "whole", *common), check=True,
                   capture_output=True)
    return common, journal(root / "whole")


def kill_when(proc: subprocess.Popen[bytes], run_dir: str | Path, trials: int, rng: random.Random,
              timeout: float = 120.0) -> bool:
    """SIGKILL `proc` shortly after its run's journal reaches `trials` lines (a random pause of up to 50 ms).

    Returns False, killing nothing, when the process has already ended.
    """
    deadline = time.time() + timeout
    while len(journal(run_dir)) < trials and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.05))
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


__all__ = ["MNIST_SPACE", "cli", "journal", "kill_when", "whole_mnist_run"]
