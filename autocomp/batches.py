"""Data as autocomp reads it: (inputs, targets) tensors held in memory, or batches streamed from a loader.

A split is either a pair of tensors (batched here) or any re-iterable of (inputs, targets) batches — a
torch `DataLoader`, whose dataset may read from disk on demand — so data larger than memory is scored and
fine-tuned on batch by batch and never concatenated. Only a few leading rows are ever held whole: the
example row, the calibration rows and the latency batch (`head`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from autocomp.errors import AutocompError

Pair = tuple[torch.Tensor, torch.Tensor]
Data = Pair | Iterable[Pair]


def is_pair(data: Any) -> bool:
    """Whether `data` is an (inputs, targets) pair of tensors (rather than a source of batches)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data)


def checked(data: Any, what: str, *, shuffled: bool = True) -> Data:
    """`data` if autocomp can read it more than once: a tensor pair, or a re-iterable source of batches.

    Args:
        data: What the caller passed.
        what: Its name in messages (`val_data`, ...).
        shuffled: Whether a shuffling loader is acceptable (training data); scoring data must come in one
            order, or candidates would be scored on different rows.

    Raises:
        AutocompError: `data` is neither, is a one-shot iterator (a generator), or shuffles where it may not.
    """
    if is_pair(data):
        return data[0], data[1]
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes, torch.Tensor)):
        raise AutocompError(f"{what}: expected (inputs, targets) tensors or a DataLoader of such batches, "
                            f"not {type(data).__name__}")
    if isinstance(data, Iterator):  # (asking a loader for an iterator would start its workers)
        raise AutocompError(f"{what}: a one-shot iterator ({type(data).__name__}) is read once; autocomp reads "
                            "the data for every candidate: pass a DataLoader or tensors")
    if not shuffled and isinstance(getattr(data, "sampler", None), torch.utils.data.RandomSampler):
        raise AutocompError(f"{what}: a shuffling DataLoader would score each candidate on other rows; pass "
                            "shuffle=False")
    return data


def batches(data: Data, batch_size: int, *, limit: int | None = None) -> Iterator[Pair]:
    """The (inputs, targets) batches of `data`: tensor pairs sliced into `batch_size` rows, a source's own.

    Args:
        data: A tensor pair, or a re-iterable of batches (its batch size is its own).
        batch_size: Rows per batch of a tensor pair.
        limit: Stop after this many batches.

    Raises:
        AutocompError: A streamed batch is not an (inputs, targets) pair of tensors.
    """
    if is_pair(data):
        x, y = data  # type: ignore[misc]
        for k, start in enumerate(range(0, len(y), batch_size)):
            if limit is not None and k >= limit:
                return
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    for k, batch in enumerate(data):
        if limit is not None and k >= limit:
            return
        if not is_pair(batch):
            raise AutocompError(f"a data batch must be (inputs, targets) tensors, not {type(batch).__name__}")
        yield batch[0], batch[1]


def head(data: Data, rows: int) -> Pair:
    """The first `rows` rows of `data` as tensors (fewer if it has fewer), reading only the batches needed.

    A shuffling loader is read with the global generator seeded (and restored), so its head is the same rows
    every time.
    """
    if is_pair(data):
        return data[0][:rows], data[1][:rows]  # type: ignore[index]
    xs, ys, seen = [], [], 0
    with same_order():
        for x, y in batches(data, rows):
            xs.append(x[: rows - seen])
            ys.append(y[: rows - seen])
            seen += len(xs[-1])
            if seen >= rows:
                break
    if not xs:
        raise AutocompError("the data holds no batch")
    return torch.cat(xs), torch.cat(ys)


@contextlib.contextmanager
def same_order(seed: int = 0) -> Iterator[None]:
    """Read a shuffling loader in the same order every time: the global generator seeded, then restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def picklable(data: Data) -> Data:
    """`data` without a live iterator (a loader with persistent workers keeps one, which cannot be pickled)."""
    if getattr(data, "_iterator", None) is None:
        return data
    bare = copy.copy(data)
    bare._iterator = None  # type: ignore[union-attr]
    return bare


def streamed(data: Data) -> bool:
    """Whether `data` is a source of batches rather than tensors in memory."""
    return not is_pair(data)


__all__ = ["Data", "Pair", "batches", "checked", "head", "is_pair", "picklable", "same_order", "streamed"]
