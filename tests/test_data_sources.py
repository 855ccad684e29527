"""Data sources a user names (imagefolder, npz, idx, text, factories), each built from tiny data made here."""

from __future__ import annotations

import gzip
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autocomp.config import parse_run_spec
from autocomp.errors import DataError, SpaceError
from autocomp.session import read_spec, spec_splits
from autocomp.zoo import DATASETS, MODELS, load_dataset

RUN = """\
version: 1
model: {{name: lenet300}}
data: {data}
groups:
  - name: fc
    layers: [fc1]
    primitives: {{prune: {{ratio: 0.5}}}}
"""


def run_file(tmp_path: Path, data: str, extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(RUN.format(data=data) + extra)
    return path


@pytest.fixture
def cwd_module(tmp_path, monkeypatch):
    """Write a module into tmp_path and run from there (sys.path and sys.modules restored afterwards)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    written: list[str] = []

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)

    yield write
    for name in written:  # the next test's module of the same name is a new one
        sys.modules.pop(name, None)


# --- imagefolder ----------------------------------------------------------------------------------------------

COLOURS = {"dog": (200, 30, 30), "ant": (10, 220, 40), "cat": (60, 60, 250)}  # sorted: ant 0, cat 1, dog 2


def write_images(root: Path, split: str, per_class: int, *, size=(5, 6), mode="RGB", seed=0) -> None:
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-5, 6, size=(size[0], size[1], 3))
            pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, "RGB")
            image = image.convert("L") if mode == "L" else image
            image.save(folder / f"{i}.{'png' if i % 2 else 'jpg'}", quality=95)


def test_imagefolder_labels_shapes_and_train_normalisation(tmp_path):
    write_images(tmp_path, "train", 6)
    write_images(tmp_path, "val", 2, seed=1)
    splits = load_dataset("imagefolder", tmp_path, val_fraction=0.1, seed=0, test_fraction=0.2)
    assert splits.info["classes"] == ["ant", "cat", "dog"]
    (x, y), (vx, vy), (tx, ty) = splits.train, splits.val, splits.test
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == tx.shape[1:] == (3, 5, 6)
    assert len(vy) == 6 and torch.bincount(vy).tolist() == [2, 2, 2]  # val/ was read, not carved
    assert len(y) + len(ty) == 18 and len(ty) == round(18 * 0.2)  # test carved from train/
    # training split: zero mean, unit std per channel; val uses the training statistics
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    mean, std = torch.tensor(splits.info["mean"]), torch.tensor(splits.info["std"])
    raw_val = vx * std.view(1, 3, 1, 1).float() + mean.view(1, 3, 1, 1).float()
    for images, labels in ((raw_val, vy), (x * std.view(1, 3, 1, 1).float() + mean.view(1, 3, 1, 1).float(), y)):
        names = sorted(COLOURS)
        for image, label in zip(images, labels, strict=True):
            # each image is its class's colour (JPEG and noise move it a little)
            expected = torch.tensor(COLOURS[names[label]], dtype=torch.float32) / 255
            assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=0.04)


def test_imagefolder_channels_and_resize(tmp_path):
    write_images(tmp_path, "train", 4, mode="L")
    grey = load_dataset("imagefolder", tmp_path, val_fraction=0.2, seed=0)
    assert grey.train[0].shape[1:] == (1, 5, 6)  # grey images: one channel by default
    rgb = load_dataset("imagefolder", tmp_path, val_fraction=0.2, seed=0, channels=3, image_size=[4, 3])
    assert rgb.train[0].shape[1:] == (3, 4, 3)
    assert torch.equal(rgb.train[1], grey.train[1])  # the seeded carves are the same
    assert load_dataset("imagefolder", tmp_path, val_fraction=0.2, image_size=8).val[0].shape[1:] == (1, 8, 8)


def test_imagefolder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(DataError, match=f"'{tmp_path / 'train'}' does not exist"):
        load_dataset("imagefolder", tmp_path, val_fraction=0.1)
    write_images(tmp_path, "train", 2)
    (tmp_path / "train" / "eel").mkdir()
    with pytest.raises(DataError, match=f"class folder '{tmp_path / 'train' / 'eel'}' holds no images"):
        load_dataset("imagefolder", tmp_path, val_fraction=0.1)
    (tmp_path / "train" / "eel" / "1.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=f"cannot read image '{tmp_path / 'train' / 'eel' / '1.png'}'"):
        load_dataset("imagefolder", tmp_path, val_fraction=0.1)
    Image.new("RGB", (9, 9)).save(tmp_path / "train" / "eel" / "1.png")
    with pytest.raises(DataError, match=r"1.png' is 9x9, the first is 5x6 \(set data.image_size"):
        load_dataset("imagefolder", tmp_path, val_fraction=0.1)
    write_images(tmp_path, "val", 1)
    (tmp_path / "val" / "yak").mkdir()
    Image.new("RGB", (5, 6)).save(tmp_path / "val" / "yak" / "0.png")
    with pytest.raises(DataError, match="class folder '.*yak' is not a class of the training split"):
        load_dataset("imagefolder", tmp_path, val_fraction=0.1, image_size=4)


# --- npz ------------------------------------------------------------------------------------------------------


def test_npz_dtypes_val_and_carve(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(20, 3)), "y_train": rng.normal(size=20),  # regression: float targets
              "x_test": rng.normal(size=(5, 3)), "y_test": rng.normal(size=5)}
    np.savez(tmp_path / "reg.npz", **arrays)
    splits = load_dataset("npz", tmp_path, val_fraction=0.25, seed=3)
    (x, y), (vx, vy) = splits.train, splits.val
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and (len(y), len(vy)) == (15, 5)
    # the carve keeps rows with their targets
    rows = {tuple(np.round(r, 5)): t for r, t in zip(arrays["x_train"], arrays["y_train"], strict=True)}
    for r, t in zip(vx.numpy(), vy.numpy(), strict=True):
        assert rows[tuple(np.round(r.astype(np.float64), 5))] == pytest.approx(float(t), abs=1e-6)

    ints = {"x_train": np.arange(12).reshape(4, 3), "y_train": np.array([0, 1, 2, 1], np.uint8),
            "x_val": np.zeros((2, 3), np.float16), "y_val": np.array([1, 0]),
            "x_test": np.ones((1, 3)), "y_test": np.array([2])}
    np.savez(tmp_path / "cls.npz", **ints)
    splits = load_dataset("npz", None, val_fraction=0.1, path=str(tmp_path / "cls.npz"))
    assert splits.train[0].dtype == torch.int64 and splits.train[1].tolist() == [0, 1, 2, 1]
    assert splits.val[0].dtype == torch.float32 and splits.val[1].tolist() == [1, 0]  # x_val used, not carved


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", x_train=np.zeros((3, 2)), y_train=np.zeros(3), x_test=np.zeros((1, 2)))
    with pytest.raises(DataError, match=r"a.npz: missing array 'y_test' \(it holds x_test, x_train, y_train\)"):
        load_dataset("npz", tmp_path / "a.npz", val_fraction=0.1)
    np.savez(tmp_path / "b.npz", x_train=np.zeros((3, 2)), y_train=np.zeros(2), x_test=np.zeros((1, 2)),
             y_test=np.zeros(1))
    with pytest.raises(DataError, match="holds 2 .npz files"):
        load_dataset("npz", tmp_path, val_fraction=0.1)
    with pytest.raises(DataError, match=r"x_train has shape \(3, 2\) but y_train \(2,\)"):
        load_dataset("npz", tmp_path / "b.npz", val_fraction=0.1)
    np.savez(tmp_path / "c.npz", x_train=np.array([{"a": 1}] * 2, dtype=object), y_train=np.zeros(2),
             x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(DataError, match="c.npz: cannot read .npz"):  # pickled objects are refused
        load_dataset("npz", tmp_path / "c.npz", val_fraction=0.1)


# --- idx ------------------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_idx_user_stems(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, size=(30, 7, 7)), rng.integers(0, 4, size=30)
    write_idx(tmp_path / "fa-train-x.gz", images)
    write_idx(tmp_path / "fa-train-y", labels)
    write_idx(tmp_path / "fa-test-x", images[:5])
    write_idx(tmp_path / "fa-test-y.gz", labels[:5])
    stems = {"train_images": "fa-train-x", "train_labels": "fa-train-y", "test_images": "fa-test-x",
             "test_labels": "fa-test-y"}
    splits = load_dataset("idx", tmp_path, val_fraction=0.2, seed=0, **stems)
    (x, y), (vx, vy), (tx, ty) = splits.train, splits.val, splits.test
    assert x.shape == (24, 1, 7, 7) and vx.shape == (6, 1, 7, 7) and y.dtype == vy.dtype == torch.int64
    assert ty.tolist() == labels[:5].tolist()
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    raw = tx * splits.info["std"][0] + splits.info["mean"][0]  # test normalised with train's statistics
    assert torch.allclose(raw, torch.from_numpy(images[:5] / 255.0).float().unsqueeze(1), atol=1e-5)
    with pytest.raises(DataError, match="missing idx file 't10k-images-idx3-ubyte'"):
        load_dataset("idx", tmp_path, val_fraction=0.2, **{**stems, "test_images": "t10k-images-idx3-ubyte"})


# --- text -----------------------------------------------------------------------------------------------------


def block_spans(stream: bytes, inputs: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, int]]:
    """Where each block sits in the stream: [start, end] covering its inputs and its last label."""
    spans = []
    for block, label in zip(inputs, labels, strict=True):
        assert torch.equal(label[:-1], block[1:])  # the labels are the inputs shifted by one
        start = stream.find(bytes(block.tolist()) + bytes([int(label[-1])]))
        assert start >= 0
        spans.append((start, start + len(block)))
    return spans


def test_text_blocks_shift_and_splits_do_not_overlap(tmp_path):
    rng = np.random.default_rng(0)
    parts = [bytes(rng.integers(0, 256, size=n).astype(np.uint8)) for n in (700, 555, 300)]
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "b.txt").write_bytes(parts[1])
    (tmp_path / "corpus" / "sub" / "c.txt").write_bytes(parts[2])
    (tmp_path / "corpus" / "sub" / "notes.md").write_bytes(b"ignored: not .txt")
    (tmp_path / "corpus" / "a.txt").write_bytes(parts[0])
    splits = load_dataset("text", tmp_path / "corpus", val_fraction=0.1, block_size=16, test_fraction=0.2)
    stream = b"".join(parts)  # sorted path order, folders recursively
    assert splits.info == {"vocab_size": 256, "block_size": 16, "tokenizer": "bytes"}
    spans = {}
    for name in ("train", "val", "test"):
        x, y = getattr(splits, name)
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] == 16
        spans[name] = block_spans(stream, x, y)
    n = sum(len(s) for s in spans.values())
    assert n == (len(stream) - 3) // 16 and (len(spans["val"]), len(spans["test"])) == (round(n * 0.1), round(n * 0.2))
    # contiguous regions in order, and no token of one split is an input or label of another
    assert spans["train"][-1][1] < spans["val"][0][0] and spans["val"][-1][1] < spans["test"][0][0]
    for name in spans:
        assert all(b[0] == a[0] + 16 for a, b in zip(spans[name], spans[name][1:], strict=False))


def test_text_single_file_tokenizer_and_errors(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[EOS]", "the", "cat", "sat", "on", "mat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[EOS]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="[EOS]").save_pretrained(tmp_path / "tok")
    rng = np.random.default_rng(1)
    ids = rng.integers(1, len(words), size=60)
    (tmp_path / "one.txt").write_text(" ".join(words[i] for i in ids))
    splits = load_dataset("text", tmp_path / "one.txt", val_fraction=0.2, block_size=4, tokenizer=str(tmp_path / "tok"))
    assert splits.info["vocab_size"] == len(words)
    stream = np.append(ids, 0)  # the document ends with the tokenizer's eos
    assert splits.train[0][0].tolist() == stream[:4].tolist() and splits.train[1][0].tolist() == stream[1:5].tolist()

    with pytest.raises(DataError, match="tokenizer 'no-such/tokenizer' is not available locally"):
        load_dataset("text", tmp_path / "one.txt", val_fraction=0.1, tokenizer="no-such/tokenizer")
    (tmp_path / "short.txt").write_bytes(b"x" * 20)
    with pytest.raises(DataError, match="20 tokens, too few for a train, a val and a test block of 8"):
        load_dataset("text", tmp_path / "short.txt", val_fraction=0.1, block_size=8)
    with pytest.raises(DataError, match="holds no .txt files"):
        load_dataset("text", tmp_path / "tok", val_fraction=0.1)


# --- factories ------------------------------------------------------------------------------------------------

FACTORIES = """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

    def pairs(n=12):
        x = torch.arange(n * 2, dtype=torch.float64).view(n, 2)
        return x, torch.arange(n) % 3

    class Items(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full(2, i, dtype=np.float32), i % 2

    def mixed(n=12):
        x, y = pairs(n)
        return {"train": (x, y), "val": Items(), "test": DataLoader(TensorDataset(x[:7], y[:7]), batch_size=3)}

    class Stream(IterableDataset):
        def __len__(self):  # a length, but no indexing: read by iteration
            return 4

        def __iter__(self):
            return iter([(torch.tensor([float(i)]), i) for i in range(4)])

    def streamed():
        return Stream(), Stream(), Stream()

    def no_val():
        return pairs(10), pairs(4)[0], pairs(4)

    def train_test():
        return {"train": pairs(10), "test": pairs(4)}

    def broken(**kwargs):
        raise RuntimeError("disk on fire")

    def strings():
        return {"train": "train.csv", "val": pairs(), "test": pairs()}

    def two():
        return pairs(), pairs()

    def bad_items():
        return pairs(), [1, 2], pairs()
"""


def test_factory_from_cwd_materialises_every_kind(cwd_module, tmp_path):
    cwd_module("userdata_ok", FACTORIES)
    splits = load_dataset("userdata_ok:mixed", None, val_fraction=0.1, kwargs={"n": 9})
    (x, y), (vx, vy), (tx, ty) = splits.train, splits.val, splits.test
    assert x.dtype == torch.float32 and x.shape == (9, 2) and y.tolist() == [0, 1, 2] * 3  # float64 -> float32
    assert vx.shape == (5, 2) and vx[:, 0].tolist() == [0, 1, 2, 3, 4] and vy.tolist() == [0, 1, 0, 1, 0]
    assert torch.equal(tx, x[:7]) and torch.equal(ty, y[:7])  # the DataLoader's batches, concatenated
    streamed = load_dataset("userdata_ok:streamed", None, val_fraction=0.1).test
    assert streamed[0].tolist() == [[0.0], [1.0], [2.0], [3.0]] and streamed[1].tolist() == [0, 1, 2, 3]
    carved = load_dataset("userdata_ok:train_test", None, val_fraction=0.2, seed=0)
    assert (len(carved.train[1]), len(carved.val[1]), len(carved.test[1])) == (8, 2, 4)

    # from a run file, with kwargs, through the CLI's reader
    path = run_file(tmp_path, '{name: "userdata_ok:mixed", kwargs: {n: 6}}')
    spec = read_spec(path)
    assert spec.data.options == {"kwargs": {"n": 6}}
    assert len(spec_splits(spec, None).train[1]) == 6


@pytest.mark.parametrize(("factory", "message"), [
    ("broken", "data factory 'userdata_bad:broken' raised RuntimeError: disk on fire"),
    ("strings", "returned a str for split 'train'; each split must be an .inputs, labels. pair"),
    ("no_val", r"returned a tensor of shape \(4, 2\) for split 'val'"),
    ("two", "returned a tuple of 2: .*expected a dict with 'train', 'test'"),
    ("bad_items", "returned a list of 2: .* for split 'val'"),
    ("missing", "'userdata_bad:missing' cannot be imported: module 'userdata_bad' has no attribute 'missing'"),
])
def test_factory_errors_name_the_factory(cwd_module, factory, message):
    cwd_module("userdata_bad", FACTORIES)
    with pytest.raises(DataError, match=message):
        load_dataset(f"userdata_bad:{factory}", None, val_fraction=0.1)


def test_factory_module_not_found():
    with pytest.raises(DataError, match="'nowhere_mod:f' cannot be imported: ModuleNotFoundError"):
        load_dataset("nowhere_mod:f", None, val_fraction=0.1)


# --- run files and options ------------------------------------------------------------------------------------


def test_run_file_options_resolved_and_loaded(tmp_path):
    write_images(tmp_path / "pets", "train", 3)
    path = run_file(tmp_path, "{name: imagefolder, dir: pets, image_size: 4, channels: 1, val_fraction: 0.2}",
                    "task: classification\n")
    spec = read_spec(path)
    assert spec.data.dir == str(tmp_path / "pets") and spec.data.options == {"image_size": 4, "channels": 1}
    splits = spec_splits(spec, spec.data.dir)
    assert splits.train[0].shape[1:] == (1, 4, 4)
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 2)), y_train=np.zeros(4, np.int64), x_test=np.zeros((2, 2)),
             y_test=np.zeros(2, np.int64))
    assert read_spec(run_file(tmp_path, "{name: npz, path: d.npz}")).data.options == {"path": str(tmp_path / "d.npz")}


@pytest.mark.parametrize(("data", "key", "value", "message"), [
    ("{name: text, dir: c, blocksize: 64}", "data.blocksize", 64,
     "unknown key 'blocksize' .did you mean 'block_size'.. for data source 'text'"),
    ("{name: text, dir: c, block_size: 0}", "data.block_size", 0, "must be >= 1"),
    ("{name: imagefolder, dir: p, channels: 2}", "data.channels", 2, "must be 1 .grey. or 3"),
    ("{name: imagefolder, dir: p, image_size: [4, 4, 4]}", "data.image_size", [4, 4, 4], r"\[height, width\]"),
    ("{name: npz, tokenizer: gpt2}", "data.tokenizer", "gpt2", "unknown key 'tokenizer'"),
    ("{name: mnist, block_size: 8}", "data.block_size", 8,
     r"allowed: name, dir, val_fraction, batch_size, val_batches \(key"),
    ('{name: "m:f", kwargs: [1]}', "data.kwargs", [1], "expected a mapping of keyword arguments"),
    ('{name: "m:f", image_size: 3}', "data.image_size", 3, "allowed: .*, kwargs"),
    ('{name: "m-x:f"}', "data.name", "m-x:f", "a data factory is written 'pkg.module:function'"),
    ("{name: imagefolderr, dir: p}", "data.name", "imagefolderr", "did you mean 'imagefolder'"),
])
def test_bad_options_name_file_line_key_and_value(tmp_path, data, key, value, message):
    path = run_file(tmp_path, data)
    with pytest.raises(SpaceError, match=message) as info:
        parse_run_spec(path.read_text(), file=str(path), models=MODELS, datasets=DATASETS)
    err = info.value
    assert (err.file, err.line, err.key, err.value) == (str(path), 3, key, value)


def test_python_options_are_checked():
    with pytest.raises(DataError, match="data source 'text' takes no option 'blocks'.*options: block_size"):
        load_dataset("text", ".", val_fraction=0.1, blocks=3)
    with pytest.raises(DataError, match=r"data source 'imagefolder': must be 1 \(grey\) or 3 \(RGB\) "
                                        r"\(key 'data.channels', value 4\)"):
        load_dataset("imagefolder", ".", val_fraction=0.1, channels=4)
    with pytest.raises(DataError, match="unknown dataset 'npzz' .did you mean 'npz'"):
        load_dataset("npzz", ".", val_fraction=0.1)


def test_readme_example_is_a_valid_run_file(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Your own data"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n", section.index("```yaml\n") + 8)]
    path = tmp_path / "example.yaml"
    path.write_text(example)
    spec = read_spec(path)
    assert spec.task == "language-model" and spec.data.name == "text"
    assert spec.data.dir == str(tmp_path / "corpus") and spec.data.options["block_size"] == 128
