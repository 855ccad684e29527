"""Data sources a user names in a run file or from Python: image folders, `.npz` arrays, idx files, text, factories.

Each source is a loader in `DATASETS`, called as `loader(dir, val_fraction=..., seed=..., **options)`, and
declares the options it takes in `SOURCE_OPTIONS` (key -> the rule a value must pass), so a run file's flat
`data:` keys are checked where they are written and a Python caller's keyword arguments the same way.

- `imagefolder`: `dir/train/<class>/*.png|jpg|jpeg` (and optionally `dir/val/`, `dir/test/`); class names sorted
  give the label ids; float32 (N, C, H, W) normalised with the training split's per-channel mean and std.
- `npz`: one `.npz` file with `x_train, y_train, x_test, y_test` (optional `x_val, y_val`).
- `idx`: MNIST-format idx files with any names (Fashion-MNIST, KMNIST...), normalised with the training mean/std.
- `text`: `.txt` files cut into blocks of `block_size` tokens for causal language modelling: inputs (N, T)
  int64 tokens and labels (N, T) int64, the same tokens shifted by one (label[i, t] is the token after
  input[i, t]). Bytes are the tokens (vocab 256) unless `tokenizer` names a locally available `transformers`
  tokenizer. The token stream is split into contiguous train, val and test regions (in that order), each cut
  into its own blocks, so no token of one split is ever an input or label of another.
- `"pkg.module:factory"`: a function (called with `kwargs`) returning train/val/test as a dict or a 3-tuple,
  each an (inputs, labels) pair of tensors or arrays, a torch Dataset or a DataLoader; materialised here.

A split that a source cannot find (val, or test for `imagefolder`/`text`) is carved from the training data:
val with `_carve` (seeded, `val_fraction`), test with `test_fraction`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autocomp.errors import DataError, SpaceError
from autocomp.refs import import_reference, is_reference
from autocomp.schema import At, Rule, hint, integer, plain, string
from autocomp.zoo.data import DATASETS, Splits, _carve, _find, _read_idx

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BYTE_VOCAB = 256
MNIST_STEMS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
MAX_IMAGE_SIDE = 8192
MAX_BLOCK = 1 << 20
Pair = tuple[torch.Tensor, torch.Tensor]


# -- option rules ------------------------------------------------------------------------------------------


def fraction(value: Any, at: At) -> float:
    """A share of the data held out: a number in (0, 0.5]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 0.5:
        raise at.fail("must be a number in (0, 0.5]", value)
    return float(value)


def image_size(value: Any, at: At) -> int | list[int]:
    """An image side (square) or [height, width], each in 1..8192."""
    side = integer(1, MAX_IMAGE_SIDE)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise at.fail("expected a side or [height, width]", value)
        return [side(v, at) for v in value]
    if isinstance(value, bool) or not isinstance(value, int):
        raise at.fail("expected a side or [height, width]", value)
    return side(value, at)


def channels(value: Any, at: At) -> int:
    """1 (grey) or 3 (RGB)."""
    if isinstance(value, bool) or value not in (1, 3):
        raise at.fail("must be 1 (grey) or 3 (RGB)", value)
    return int(value)


def keyword_arguments(value: Any, at: At) -> dict[str, Any]:
    """A mapping of keyword-argument names to plain values."""
    if not isinstance(value, Mapping):
        raise at.fail("expected a mapping of keyword arguments", value)
    for key in value:
        if not isinstance(key, str):
            raise at.fail("keyword argument names must be strings", key)
    return dict(plain(value))


# Options whose value is a file path: a run file's relative path is resolved against its folder. "name-or-path"
# is resolved only where such a file exists (a tokenizer is a local folder or a cached hub name).
PATH_OPTIONS: dict[str, str] = {"path": "path", "tokenizer": "name-or-path"}
IDX_OPTIONS: dict[str, Rule] = dict.fromkeys(MNIST_STEMS, string)
SOURCE_OPTIONS: dict[str, dict[str, Rule]] = {
    "imagefolder": {"image_size": image_size, "channels": channels, "test_fraction": fraction},
    "npz": {"path": string},
    "idx": IDX_OPTIONS,
    "text": {"block_size": integer(1, MAX_BLOCK), "tokenizer": string, "test_fraction": fraction},
}
FACTORY_OPTIONS: dict[str, Rule] = {"kwargs": keyword_arguments}


def source_options(name: str) -> dict[str, Rule]:
    """The options data source `name` takes beyond name/dir/val_fraction/batch_size (key -> rule)."""
    return FACTORY_OPTIONS if is_reference(name) else SOURCE_OPTIONS.get(name, {})


def register_source(name: str, loader: Callable[..., Splits], options: Mapping[str, Rule] | None = None) -> None:
    """Add a data source: `loader(dir, *, val_fraction, seed, **options) -> Splits` and its options' rules.

    Args:
        name: The name a run file's `data.name` gives.
        loader: Builds the splits.
        options: Each option key the loader takes, with the rule (from `autocomp.schema`) its value must pass.
    """
    DATASETS[name] = loader
    SOURCE_OPTIONS[name] = dict(options or {})


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` for source `name`, each checked by its rule.

    Raises:
        DataError: A key the source does not take, or a value its rule refuses (named with the key).
    """
    rules = source_options(name)
    out = {}
    for key, value in options.items():
        if key not in rules:
            allowed = ", ".join(rules) or "none"
            raise DataError(f"data source '{name}' takes no option '{key}'{hint(key, rules)}; options: {allowed}")
        try:  # the message reads "data source 'x': <problem> (key 'data.k', value v)"
            out[key] = rules[key](value, At(f"data source '{name}'", None, f"data.{key}"))
        except SpaceError as err:
            raise DataError(str(err)) from None
    return out


def load_dataset(name: str, data_dir: str | Path | None, *, val_fraction: float, seed: int = 0,
                 **options: Any) -> Splits:
    """The train/val/test splits of a registered dataset or source, or of a `"pkg.module:factory"`.

    Args:
        name: A key of `DATASETS` (mnist, mnist5k, cifar10, imagefolder, npz, idx, text...) or a factory reference.
        data_dir: The source's folder (or file, for `npz` and `text`); unused by factories.
        val_fraction: Share of the training data held out (seeded) for validation where a source has no val split.
        seed: Seed of the carve.
        **options: The source's options (see `SOURCE_OPTIONS`; a factory takes `kwargs`).

    Returns:
        The splits.

    Raises:
        DataError: An unknown name or option, or data that cannot be read.
    """
    if not is_reference(name) and name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'{hint(name, DATASETS)}; known: {', '.join(sorted(DATASETS))}, "
                        "or a 'pkg.module:factory' reference")
    checked = check_options(name, options)
    if is_reference(name):
        return load_factory(name, val_fraction=val_fraction, seed=seed, **checked)
    return DATASETS[name](data_dir, val_fraction=val_fraction, seed=seed, **checked)


# -- helpers -----------------------------------------------------------------------------------------------


def _existing(data_dir: str | Path | None, source: str, *, files: bool = False) -> Path:
    """The folder (or, with `files`, folder or file) a source reads."""
    if data_dir is None:
        raise DataError(f"data source '{source}' needs a directory: data.dir in the run file (or --data-dir)")
    where = Path(data_dir).expanduser()
    if not (where.is_dir() or (files and where.is_file())):
        raise DataError(f"data source '{source}': '{where}' does not exist" if not where.exists()
                        else f"data source '{source}': '{where}' is not a folder")
    return where


def _carve_missing(train: Pair, val: Pair | None, test: Pair | None, *, val_fraction: float,
                   test_fraction: float, seed: int, where: str) -> tuple[Pair, Pair, Pair]:
    """Carve test (seed + 1, as mnist5k) then val (seed) from train where a source has no such split."""
    if test is None:
        train, test = _carve(*train, test_fraction, seed + 1)
    if val is None:
        train, val = _carve(*train, val_fraction, seed)
    if len(train[1]) == 0:
        raise DataError(f"{where}: too few training examples ({len(test[1]) + len(val[1])} in all) to carve "
                        "val and test from")
    return train, val, test


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> tuple[list[torch.Tensor], list[float], list[float]]:
    """Normalise (N, C, ...) float tensors per channel with the training split's mean and std."""
    dims = [0] + list(range(2, train.dim()))
    mean = train.mean(dim=dims, dtype=torch.float64)
    std = train.std(dim=dims, unbiased=False).double()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays as it is, centred
    shape = (1, -1) + (1,) * (train.dim() - 2)
    m, s = mean.float().view(shape), std.float().view(shape)
    return [(x - m) / s for x in (train, *others)], mean.tolist(), std.tolist()


# -- imagefolder -------------------------------------------------------------------------------------------


def _class_images(split_dir: Path, classes: list[str] | None) -> list[tuple[Path, int]]:
    """(file, label) of every image under `split_dir/<class>/`; `classes` None: this is train, it names them."""
    if not split_dir.is_dir():
        raise DataError(f"image folder '{split_dir}' does not exist (expected {split_dir}/<class>/*.png)")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"image folder '{split_dir}' has no class folders (expected {split_dir}/<class>/*.png)")
    names = [p.name for p in folders] if classes is None else classes
    out = []
    for folder in folders:
        if folder.name not in names:
            raise DataError(f"class folder '{folder}' is not a class of the training split "
                            f"({', '.join(names)})")
        images = sorted(p for p in folder.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not images:
            raise DataError(f"class folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        out += [(p, names.index(folder.name)) for p in images]
    return out


def _read_images(items: list[tuple[Path, int]], size: tuple[int, int], mode: str,
                 fixed: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C) pixels and int64 labels; `size` (h, w) resizes, else every image must have it."""
    from PIL import Image, UnidentifiedImageError

    pixels, labels = [], []
    for path, label in items:
        try:
            with Image.open(path) as opened:
                im = opened.convert(mode)
            if (im.height, im.width) != size:
                if not fixed:
                    raise DataError(f"image '{path}' is {im.height}x{im.width}, the first is {size[0]}x{size[1]}"
                                    " (set data.image_size to resize them all)")
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels.append(np.asarray(im, dtype=np.uint8).reshape(size[0], size[1], -1))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            raise DataError(f"cannot read image '{path}': {err}") from err
        labels.append(label)
    return np.stack(pixels), np.asarray(labels, dtype=np.int64)


def _image_mode(items: Iterable[tuple[Path, int]]) -> str:
    """"RGB" if any image is in colour, else "L"; reads headers only."""
    from PIL import Image, UnidentifiedImageError

    for path, _ in items:
        try:
            with Image.open(path) as im:
                if im.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    return "RGB"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            raise DataError(f"cannot read image '{path}': {err}") from err
    return "L"


def _first_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image '{path}': {err}") from err


def load_imagefolder(data_dir: str | Path | None, *, val_fraction: float = 0.1, seed: int = 0,
                     image_size: int | list[int] | None = None, channels: int | None = None,
                     test_fraction: float = 0.1) -> Splits:
    """Class folders of PNG/JPEG images: `dir/train/<class>/*`, optionally `dir/val/<class>/*`, `dir/test/...`.

    Args:
        data_dir: The folder holding `train/` (and optionally `val/`, `test/`).
        val_fraction: Share of train carved (seeded) as val when there is no `val/`.
        seed: Seed of the carves.
        image_size: Resize every image to this side (square) or [height, width]; default: the images' own
            size, which must then be the same for all.
        channels: 1 (grey) or 3 (RGB); default 3 if any training image is in colour, else 1.
        test_fraction: Share of train carved as test when there is no `test/`.

    Returns:
        float32 (N, C, H, W) images normalised with the training split's per-channel mean and std, and int64
        labels (the index of the class folder's name in sorted order); `info` has `classes`, `mean` and `std`.

    Raises:
        DataError: A missing or empty folder, a class folder that is not a training class, or an unreadable
            image (each named).
    """
    root = _existing(data_dir, "imagefolder")
    train_items = _class_images(root / "train", None)
    classes = sorted({p.parent.name for p, _ in train_items})
    split_items = {split: _class_images(root / split, classes) for split in ("val", "test") if (root / split).exists()}
    mode = {1: "L", 3: "RGB"}[channels] if channels else _image_mode(train_items)
    if image_size is None:
        size, fixed = _first_size(train_items[0][0]), False
    else:
        side = [image_size, image_size] if isinstance(image_size, int) else image_size
        size, fixed = (side[0], side[1]), True
    read = {split: _read_images(items, size, mode, fixed) for split, items in
            (("train", train_items), *split_items.items())}

    def pair(split: str) -> Pair | None:
        if split not in read:
            return None
        pixels, labels = read[split]
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        return x, torch.from_numpy(labels)

    train, val, test = _carve_missing(pair("train"), pair("val"), pair("test"),  # type: ignore[arg-type]
                                      val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                      where=str(root))
    (tr, va, te), mean, std = _standardise(train[0], val[0], test[0])
    c, h, w = tr.shape[1:]
    return Splits((tr, train[1]), (va, val[1]), (te, test[1]),
                  f"image folder {root} ({len(classes)} classes, {c}x{h}x{w})",
                  {"classes": classes, "mean": mean, "std": std})


# -- npz ---------------------------------------------------------------------------------------------------


def _npz_file(where: str | Path | None) -> Path:
    path = _existing(where, "npz", files=True)
    if path.is_file():
        return path
    found = sorted(path.glob("*.npz"))
    if len(found) != 1:
        raise DataError(f"data source 'npz': '{path}' holds {len(found)} .npz files; name one with data.path")
    return found[0]


def _as_tensor(array: np.ndarray, file: Path, key: str, *, labels: bool) -> torch.Tensor:
    """As a tensor: float as float32, integer as int64 (bool: labels int64, inputs float32); else refused."""
    kind = array.dtype.kind
    if kind == "f":
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if kind in "iu" or (kind == "b" and labels):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    if kind == "b":
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    raise DataError(f"{file}: array '{key}' has dtype {array.dtype}; expected numbers")


def load_npz(data_dir: str | Path | None = None, *, val_fraction: float = 0.1, seed: int = 0,
             path: str | None = None) -> Splits:
    """Arrays `x_train, y_train, x_test, y_test` (and optionally `x_val, y_val`) of one `.npz` file.

    Args:
        data_dir: The file, or a folder holding exactly one `.npz` (when `path` is not given).
        val_fraction: Share of train carved (seeded) as val when the file has no `x_val`.
        seed: Seed of the carve.
        path: The file.

    Returns:
        Float inputs as float32 and integer inputs as int64 (token ids); integer labels as int64 (classes),
        float labels as float32 (regression targets). Inputs are used as stored: scale images yourself.

    Raises:
        DataError: The file is missing or unreadable (pickled objects are refused), lacks an array, or an
            array's length differs from its labels'.
    """
    file = _npz_file(path if path is not None else data_dir)
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{file}: cannot read .npz: {err}") from err
    has_val = "x_val" in arrays or "y_val" in arrays
    needed = ["x_train", "y_train", "x_test", "y_test"] + (["x_val", "y_val"] if has_val else [])
    for key in needed:
        if key not in arrays:
            raise DataError(f"{file}: missing array '{key}' (it holds {', '.join(sorted(arrays)) or 'none'})")

    def pair(split: str) -> Pair:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
            raise DataError(f"{file}: x_{split} has shape {x.shape} but y_{split} {y.shape} (need equal, "
                            "non-zero lengths)")
        return (_as_tensor(x, file, f"x_{split}", labels=False), _as_tensor(y, file, f"y_{split}", labels=True))

    train, test = pair("train"), pair("test")
    if has_val:
        val = pair("val")
    else:
        train, val = _carve(*train, val_fraction, seed)
    return Splits(train, val, test, f"npz {file}")


# -- idx ---------------------------------------------------------------------------------------------------


def load_idx(data_dir: str | Path | None, *, val_fraction: float = 0.1, seed: int = 0, **stems: str) -> Splits:
    """Images and labels in idx files (MNIST's format, raw or .gz) with any names: Fashion-MNIST, KMNIST...

    Args:
        data_dir: The folder holding the four files.
        val_fraction: Share of train carved (seeded) as val.
        seed: Seed of the carve.
        **stems: `train_images`, `train_labels`, `test_images`, `test_labels`: the file names (without .gz);
            MNIST's by default.

    Returns:
        float32 images (N, 1, H, W) (or (N, ...) for idx arrays that are not 3-D), normalised with the training
        split's mean and std; int64 labels.

    Raises:
        DataError: A file is missing or unreadable, or image and label counts differ.
    """
    folder = _existing(data_dir, "idx")
    names = {**MNIST_STEMS, **stems}
    raw = {key: _read_idx(_find(folder, stem)) for key, stem in names.items()}

    def pair(split: str) -> Pair:
        images, labels = raw[f"{split}_images"], raw[f"{split}_labels"]
        if labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {names[f'{split}_images']} holds {len(images)} images but "
                            f"{names[f'{split}_labels']} has shape {labels.shape}")
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        return (x.unsqueeze(1) if x.dim() == 3 else x), torch.from_numpy(labels.astype(np.int64))

    train, val = _carve(*pair("train"), val_fraction, seed)
    test = pair("test")
    if train[0].dim() >= 2:
        (tr, va, te), mean, std = _standardise(train[0], val[0], test[0])
    else:
        (tr, va, te), mean, std = (train[0], val[0], test[0]), [], []
    return Splits((tr, train[1]), (va, val[1]), (te, test[1]),
                  f"idx files {names['train_images']}... in {folder}", {"mean": mean, "std": std})


# -- text --------------------------------------------------------------------------------------------------


def _text_files(where: Path) -> list[Path]:
    if where.is_file():
        return [where]
    files = sorted(p for p in where.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"data source 'text': '{where}' holds no .txt files")
    return files


def _tokens(files: list[Path], tokenizer: str | None) -> tuple[np.ndarray, int]:
    """All files' tokens in order (int64) and the vocabulary size."""
    if tokenizer is None:
        try:
            data = b"".join(f.read_bytes() for f in files)
        except OSError as err:
            raise DataError(f"data source 'text': cannot read {err.filename}: {err.strerror}") from err
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64), BYTE_VOCAB
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    except Exception as err:  # not cached, not a folder, or no transformers: autocomp downloads nothing
        raise DataError(f"data source 'text': tokenizer '{tokenizer}' is not available locally (nothing is "
                        f"downloaded; give a folder saved with save_pretrained): {type(err).__name__}: {err}") from err
    ids: list[int] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"data source 'text': cannot read '{f}' as UTF-8: {err}") from err
        ids += tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        if tok.eos_token_id is not None:  # a document boundary the model can learn
            ids.append(tok.eos_token_id)
    return np.asarray(ids, dtype=np.int64), len(tok)


def load_text(data_dir: str | Path | None, *, val_fraction: float = 0.1, seed: int = 0, block_size: int = 128,
              tokenizer: str | None = None, test_fraction: float = 0.1) -> Splits:
    """Text for causal language modelling: blocks of `block_size` tokens and the next token at each position.

    The files (a folder's `*.txt`, recursively, in sorted path order, or one file) are read as one token stream,
    which is split into three contiguous regions, train then val then test (about `val_fraction` and
    `test_fraction` of the blocks each, at least one block), each cut into non-overlapping blocks; a region
    keeps one extra token so its last block has labels, so no token crosses from one split into another.

    Args:
        data_dir: A folder of `.txt` files or one text file.
        val_fraction: Share of the blocks in val.
        seed: Unused: the split is by position, deterministic.
        block_size: Tokens per block (T).
        tokenizer: A `transformers` tokenizer name or folder, loaded with local_files_only=True; default bytes.
        test_fraction: Share of the blocks in test.

    Returns:
        inputs (N, T) int64 and labels (N, T) int64 with labels[:, t] the token after inputs[:, t];
        `info` has `vocab_size`, `block_size` and `tokenizer`.

    Raises:
        DataError: No text, an unreadable file, a tokenizer that is not available locally, or too little text
            for three blocks.
    """
    del seed
    where = _existing(data_dir, "text", files=True)
    files = _text_files(where)
    tokens, vocab = _tokens(files, tokenizer)
    n = (len(tokens) - 3) // block_size  # three regions, each one token longer than its blocks
    n_val, n_test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"data source 'text': '{where}' has {len(tokens)} tokens, too few for a train, a val and "
                        f"a test block of {block_size}: use a smaller block_size or more text")
    stream = torch.from_numpy(tokens)
    regions, start = [], 0
    for count in (n_train, n_val, n_test):
        region = stream[start:start + count * block_size + 1]
        regions.append((region[:-1].reshape(count, block_size).clone(), region[1:].reshape(count, block_size).clone()))
        start += count * block_size + 1
    kind = "bytes" if tokenizer is None else tokenizer
    what = f"text {where} ({len(files)} files, {len(tokens)} {kind} tokens, blocks of {block_size})"
    return Splits(regions[0], regions[1], regions[2], what,
                  {"vocab_size": vocab, "block_size": block_size, "tokenizer": kind})


# -- factories ---------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(_describe(v) for v in value[:4])})"
    return f"a {type(value).__name__}"


def _stack(parts: list[Any], ref: str, split: str, what: str) -> torch.Tensor:
    try:
        tensors = [torch.as_tensor(np.asarray(p) if not isinstance(p, torch.Tensor) else p) for p in parts]
        return torch.cat(tensors) if what == "batches" else torch.stack(tensors)
    except (TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"data factory '{ref}': the {what} of split '{split}' do not stack into one tensor: "
                        f"{err}") from err


def _tidy(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float32 (what models take); integer and bool as they are."""
    return x.float() if x.dtype == torch.float64 else x


def _materialise(ref: str, split: str, part: Any) -> Pair:
    """An (inputs, labels) pair of tensors from a pair of tensors/arrays, a Dataset or a DataLoader."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    wrong = DataError(f"data factory '{ref}' returned {_describe(part)} for split '{split}'; each split must be "
                      "an (inputs, labels) pair of tensors or arrays, a torch Dataset of (input, label) items, "
                      "or a DataLoader of (inputs, labels) batches")
    if isinstance(part, (tuple, list)) and len(part) == 2 and all(
            isinstance(v, (torch.Tensor, np.ndarray)) for v in part):
        x, y = (torch.as_tensor(v) for v in part)
    elif isinstance(part, (DataLoader, Dataset, IterableDataset)):
        batched = isinstance(part, DataLoader)
        xs, ys = [], []
        try:
            source: Any = part  # a map-style Dataset is read by index, the rest by iteration
            by_index = not batched and not isinstance(part, IterableDataset) and hasattr(source, "__len__")
            items = (source[i] for i in range(len(source))) if by_index else iter(source)
            for item in items:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise DataError(f"data factory '{ref}': split '{split}' yields {_describe(item)}, not an "
                                    "(input, label) pair")
                xs.append(item[0])
                ys.append(item[1])
        except DataError:
            raise
        except Exception as err:  # the user's Dataset code failing is a data error, named
            raise DataError(f"data factory '{ref}': reading split '{split}' failed: {type(err).__name__}: "
                            f"{err}") from err
        what = "batches" if batched else "items"
        x, y = _stack(xs, ref, split, what), _stack(ys, ref, split, what)
    else:
        raise wrong
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y) or len(x) == 0:
        raise DataError(f"data factory '{ref}': split '{split}' has inputs of shape {tuple(x.shape)} and labels "
                        f"of shape {tuple(y.shape)} (need equal, non-zero lengths)")
    return _tidy(x), _tidy(y)


def load_factory(ref: str, *, val_fraction: float = 0.1, seed: int = 0,
                 kwargs: Mapping[str, Any] | None = None) -> Splits:
    """The splits a user's function returns: `"pkg.module:factory"` called with `kwargs`.

    Args:
        ref: The function; modules in the current folder import as under `python -m`.
        val_fraction: Share of train carved (seeded) as val when the factory returns no `val`.
        seed: Seed of the carve.
        kwargs: Keyword arguments for the factory.

    Returns:
        The splits, materialised as tensors: a dict `{"train", "val" (optional), "test"}` or a 3-tuple
        (train, val, test), each an (inputs, labels) pair, a Dataset or a DataLoader. float64 becomes float32.

    Raises:
        DataError: The factory cannot be imported, raises, or returns something else (named with what it was).
    """
    factory = import_reference(ref, "data factory", DataError)
    if not callable(factory):
        raise DataError(f"data factory '{ref}' is {_describe(factory)}, not a function")
    try:
        result = factory(**dict(kwargs or {}))
    except Exception as err:  # the user's code: one line naming it
        raise DataError(f"data factory '{ref}' raised {type(err).__name__}: {err}") from err
    if isinstance(result, Mapping) and {"train", "test"} <= set(result) and set(result) <= {"train", "val", "test"}:
        parts = dict(result)
    elif isinstance(result, (tuple, list)) and len(result) == 3:
        parts = dict(zip(("train", "val", "test"), result, strict=True))
    else:
        shown = f"a dict with keys {sorted(map(str, result))}" if isinstance(result, Mapping) else _describe(result)
        raise DataError(f"data factory '{ref}' returned {shown}; expected a dict with 'train', 'test' (and "
                        "optionally 'val') or a (train, val, test) tuple")
    train = _materialise(ref, "train", parts["train"])
    test = _materialise(ref, "test", parts["test"])
    if "val" in parts:
        val = _materialise(ref, "val", parts["val"])
    else:
        train, val = _carve(*train, val_fraction, seed)
    args = ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())
    return Splits(train, val, test, f"factory {ref}({args})")


DATASETS.update({"imagefolder": load_imagefolder, "npz": load_npz, "idx": load_idx, "text": load_text})
