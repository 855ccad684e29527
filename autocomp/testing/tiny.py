"""Tiny models and generated data, so tests never need a real dataset."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocomp.config import parse_run_spec
from autocomp.runtimes import LatencySpec


def tiny_mlp(seed: int = 0, width: int = 32) -> nn.Module:
    """A seeded 3-layer MLP: 64 inputs (an 8x8 image, flattened), two hidden layers of `width`, 4 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 4))


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A seeded CNN for 1x8x8 images: two 3x3 convs of 8 channels and a Linear to 4 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 4))


TINY_SPACE_YAML = """
version: 1
model: {name: tiny}
data: {name: tiny}
groups:
  - name: all
    layers: ["type:Linear"]
    primitives:
      prune: {ratio: {float: [0.0, 0.9], step: 0.1}}
      quantize: {bits: {choice: [2, 4, 8, 32]}}
"""


def tiny_space():
    """Per-layer pruning ratio and bits for every Linear layer of `tiny_mlp`."""
    return parse_run_spec(TINY_SPACE_YAML).space


def fast_latency():
    """Latency settings that keep test searches quick (timings never decide a test)."""
    return LatencySpec(repeats=3, warmup=1)


def tiny_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 8, 8) images whose class (of 4) is which quadrant is bright: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    for cls in range(4):
        r, c = divmod(cls, 2)
        x[y == cls, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
    return x, y


def fit(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], steps: int = 100) -> nn.Module:
    """Train `model` full-batch with Adam for `steps` steps (seeded); returns it in eval mode."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(folder: str | Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """MNIST-format idx.gz files of 28x28 images where the class (0-9) is a bright horizontal band."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 5 + 2 * label, 4:24] = 250
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def write_fake_cifar10(folder: str | Path, rows: int = 200, seed: int = 0) -> Path:
    """CIFAR-10 python batches (pickled dicts, uint8 rows of 3072) of noise with a class-colour bias."""
    import pickle

    folder = Path(folder) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, rows)
        data = rng.integers(0, 128, (rows, 3072)).astype(np.uint8)
        data[:, :1024] += (labels[:, None] * 12).astype(np.uint8)  # the red plane encodes the class
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": [int(v) for v in labels], b"data": data}, f, protocol=2)
    return folder.parent
