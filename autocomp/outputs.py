"""What a model returns, reduced to the logits autocomp scores and trains on.

A plain tensor is the logits. Hugging Face models return a `ModelOutput` (a mapping with `.logits`), others
tuples or dicts: `logits` finds the tensor in each. Language models give one row of logits per position,
(B, T, C) against labels (B, T): `per_position` flattens both so accuracy and cross-entropy count every
position (labels of -100, Hugging Face's "ignore", are left out by both).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

IGNORE_INDEX = -100  # cross_entropy's default ignore_index, and Hugging Face's padding label


def logits(output: Any) -> torch.Tensor:
    """The logits tensor in a model's output.

    A tensor is itself; a mapping (a dict, a Hugging Face `ModelOutput`) gives its "logits" entry if it has
    one, else its first tensor value; a tuple or list its first tensor element (searched recursively).

    Raises:
        TypeError: nothing in `output` is a tensor (naming the type found).
    """
    found = _first_tensor(output)
    if found is None:
        raise TypeError(f"the model returned a {type(output).__name__}, in which autocomp finds no logits tensor: "
                        "return a tensor, or a tuple, dict or ModelOutput holding one (\"logits\" first)")
    return found


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) or hasattr(output, "keys") and hasattr(output, "__getitem__"):
        keys = list(output.keys())
        if "logits" in keys and isinstance(output["logits"], torch.Tensor):
            return output["logits"]
        values = [output[k] for k in keys]
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        return None
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def per_position(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) logits and (N,) labels: per-position logits (B, T, C) with labels (B, T) become B*T rows.

    Anything else is returned as it is.
    """
    if scores.dim() == 3 and labels.dim() == 2:
        return scores.reshape(-1, scores.shape[-1]), labels.reshape(-1)
    return scores, labels


__all__ = ["IGNORE_INDEX", "logits", "per_position"]
