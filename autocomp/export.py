"""The real artifacts: packed bytes (what size_bytes counts) and a loadable PyTorch program."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocomp import packed
from autocomp.compress import compress
from autocomp.errors import PackedFormatError
from autocomp.policy import Policy
from autocomp.zoo.models import build_model


def artifact_meta(model_ref: Mapping[str, Any] | None, policy: Policy) -> dict[str, Any]:
    """What the packed header records: how to rebuild the architecture (zoo name + kwargs) and the policy."""
    return {"model": dict(model_ref) if model_ref else None, "policy": policy.to_dict()}


def pack_model(compressed: nn.Module, meta: Mapping[str, Any]) -> bytes:
    return packed.pack(compressed, meta=dict(meta))


def write_bytes(path: str | os.PathLike, data: bytes) -> int:
    """Write `data` whole (temporary file, then rename) and return the size on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path.stat().st_size


def load_packed(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a compressed model from a packed file.

    The architecture comes from `model` (the uncompressed model the policy was applied to) or, for zoo
    models, from the file's header; the policy in the header reshapes it, then the packed tensors fill it.
    """
    data = Path(path).read_bytes()
    meta = packed.read_meta(data)
    if model is None:
        if not meta.get("model"):
            raise PackedFormatError(f"{path}: built from a user model; pass that model to load_packed(model=...)")
        model = build_model(meta["model"]["name"], meta["model"].get("kwargs"))
    skeleton = compress(model, Policy.from_dict(meta.get("policy", {})))
    return packed.load_into(skeleton, data)


def export_program(path: str | os.PathLike, compressed: nn.Module, example: torch.Tensor) -> int:
    """Save a torch.export program (load with `torch.export.load(path).module()`), batch size dynamic."""
    batch = torch.export.Dim("batch", min=1)
    example = torch.cat([example[:1], example[:1]])  # a batch of 2, so the batch dim is not specialised to 1
    program = torch.export.export(compressed, (example,), dynamic_shapes=({0: batch},))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.export.save(program, tmp)
    os.replace(tmp, path)
    return path.stat().st_size
