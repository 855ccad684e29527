"""Zoo models (parameter counts, shapes) and dataset loaders on tiny generated files in the official formats."""

from __future__ import annotations

import collections
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from autocomp.errors import AutocompError, DataError
from autocomp.zoo import load_dataset
from autocomp.zoo.data import CIFAR10_MEAN, CIFAR10_STD, DATASETS, load_cifar10, load_mnist
from autocomp.zoo.models import MODELS, DenseNetMini, LeNet5, LeNet300, ResNet20, build_model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- models -------------------------------------------------------------------------------------------------


def test_parameter_counts():
    assert n_params(LeNet300()) == 266_610
    assert n_params(LeNet5()) == 431_080
    assert 260_000 <= n_params(ResNet20()) <= 280_000
    assert n_params(DenseNetMini()) < 150_000


@pytest.mark.parametrize("name", ["resnet20", "densenet"])
def test_cifar_models_on_32x32(name):
    model = build_model(name)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_lenets_output_shapes():
    assert LeNet300()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert LeNet5()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_grayscale_28x28_and_kwargs():
    assert build_model("resnet20", {"in_channels": 1})(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert DenseNetMini(in_channels=1, blocks=2)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert ResNet20(num_classes=7, width=0.5)(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert ResNet20(width=0.01).conv1.out_channels == 1  # rounded, never zero
    assert n_params(ResNet20(width=0.5)) < n_params(ResNet20()) / 3
    with pytest.raises(AutocompError):
        build_model("densenet", {"compression": 0})


def test_resnet20_module_names_and_shortcuts():
    names = dict(ResNet20().named_modules())
    for name in ("conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer3.2.conv2", "fc"):
        assert name in names
    # option B: a 1x1 conv + BN where the shape changes, identity elsewhere
    assert isinstance(names["layer2.0.shortcut.0"], torch.nn.Conv2d)
    assert names["layer2.0.shortcut.0"].kernel_size == (1, 1)
    assert isinstance(names["layer2.0.shortcut.1"], torch.nn.BatchNorm2d)
    assert isinstance(names["layer1.0.shortcut"], torch.nn.Identity)
    assert {"resnet20", "densenet"} <= set(MODELS)


# --- CIFAR-10 -----------------------------------------------------------------------------------------------

ROWS = 12  # per batch


def _batch(seed: int, rows: int = ROWS) -> dict:
    rng = np.random.default_rng(seed)
    # numpy data and list labels, as in the official batches
    return {
        b"batch_label": b"fake batch",
        b"labels": [int(v) for v in rng.integers(0, 10, rows)],
        b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
    }


def _write(path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


# protocol 2 as the original (Python 2) files; Python 3 writes its bytes via _codecs.encode. 4 as re-pickled copies.
@pytest.fixture(params=[2, 4])
def cifar_dir(tmp_path, request):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _batch(i) for i in range(1, 6)}
    batches["test_batch"] = _batch(99, rows=10)
    for name, batch in batches.items():
        _write(folder / name, batch, request.param)
    return folder, batches


def test_cifar10_loads_shapes_labels_and_normalisation(cifar_dir):
    folder, batches = cifar_dir
    splits = load_cifar10(folder, val_fraction=0.25, seed=3)
    (tx, ty), (vx, vy), (sx, sy) = splits.train, splits.val, splits.test
    assert tx.shape == (45, 3, 32, 32) and vx.shape == (15, 3, 32, 32) and sx.shape == (10, 3, 32, 32)
    assert tx.dtype == torch.float32 and ty.dtype == torch.int64
    assert sy.tolist() == batches["test_batch"][b"labels"]
    all_labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert sorted(ty.tolist() + vy.tolist()) == sorted(all_labels)

    raw = torch.from_numpy(batches["test_batch"][b"data"]).float().view(-1, 3, 32, 32) / 255
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(sx, (raw - mean) / std)
    # a train row is some original row, normalised the same way
    first = torch.from_numpy(batches["data_batch_1"][b"data"]).float().view(-1, 3, 32, 32) / 255
    flat = torch.cat([tx, vx]).flatten(1)
    assert torch.isclose(flat, ((first[0:1] - mean) / std).flatten(1), atol=1e-5).all(dim=1).any()

    again = load_cifar10(folder, val_fraction=0.25, seed=3)
    assert torch.equal(again.val[1], vy)  # the carve is seeded


@pytest.mark.parametrize("level", [0, 1, 2])
def test_cifar10_accepts_batch_folder_and_parents(cifar_dir, level):
    folder, _ = cifar_dir
    root = [folder, folder.parent, folder.parent.parent][level]
    splits = load_dataset("cifar10", root, val_fraction=0.1)
    assert len(splits.train[1]) + len(splits.val[1]) == 5 * ROWS
    assert DATASETS["cifar10"] is load_cifar10


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["ordered_dict", "os_system", "object_array"])
def test_cifar10_refuses_pickles_that_name_classes(cifar_dir, tmp_path, kind):
    folder, batches = cifar_dir
    marker = tmp_path / "pwned"
    if kind == "ordered_dict":
        payload = collections.OrderedDict(batches["data_batch_2"])
    elif kind == "os_system":
        payload = {b"data": _Shell(marker), b"labels": [0]}
    else:  # hidden inside a numpy object array, whose items are unpickled too
        payload = {b"data": np.array([_Shell(marker)], dtype=object), b"labels": [0]}
    _write(folder / "data_batch_2", payload)
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar10(folder)
    assert not marker.exists()


def test_cifar10_codecs_encode_is_latin1_only(cifar_dir):
    folder, _ = cifar_dir
    # protocol 0 spelling of _codecs.encode('x', 'rot13'): any other codec is refused
    (folder / "data_batch_4").write_bytes(b"c_codecs\nencode\n(Vx\nVrot13\ntR.")
    with pytest.raises(DataError, match="data_batch_4.*rot13"):
        load_cifar10(folder)


def test_cifar10_bad_content_and_missing_files(cifar_dir, tmp_path):
    folder, batches = cifar_dir
    _write(folder / "data_batch_3", [1, 2, 3])
    with pytest.raises(DataError, match="data_batch_3.*not a CIFAR-10 batch"):
        load_cifar10(folder)
    _write(folder / "data_batch_3", {**batches["data_batch_3"], b"labels": [0]})
    with pytest.raises(DataError, match="data_batch_3.*labels"):
        load_cifar10(folder)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(folder)
    _write(folder / "data_batch_3", batches["data_batch_3"])
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(folder)
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no cifar10 files"):
        load_cifar10(tmp_path / "empty")


# --- MNIST (guards the shared folder lookup) ----------------------------------------------------------------


def _idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_loads_from_parent_folder(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 5)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    splits = load_mnist(tmp_path, val_fraction=0.25)
    assert splits.train[0].shape == (15, 1, 28, 28) and splits.val[0].shape == (5, 1, 28, 28)
    assert splits.test[1].shape == (5,)
