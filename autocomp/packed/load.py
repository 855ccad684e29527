"""Loading packed bytes into a module built with the right shapes (codings reattached)."""

from __future__ import annotations

from torch import nn

from autocomp.errors import PackedFormatError
from autocomp.packed.decode import decode


def load_into(model: nn.Module, data: bytes) -> nn.Module:
    """Loads packed tensors and codings (WeightCoding or CodebookCoding) into a model of the same architecture.

    Modules that are not coded in ``data`` lose any stale ``weight_coding`` attribute.

    Args:
        model: a model whose state_dict has exactly the packed names, shapes and dtypes.
        data: output of :func:`pack`.

    Returns:
        The same ``model``.

    Raises:
        PackedFormatError: corrupt data, or the first name/shape/dtype that does not match.
    """
    _, rows, tensors, codings = decode(data)
    expected = model.state_dict()
    for name, target in expected.items():
        if name not in tensors:
            raise PackedFormatError(f"tensor '{name}' of the model is missing from the packed data")
        got = tensors[name]
        if got.shape != target.shape:
            raise PackedFormatError(
                f"tensor '{name}': packed shape {list(got.shape)} != model shape {list(target.shape)}"
            )
        if got.dtype != target.dtype:
            raise PackedFormatError(f"tensor '{name}': packed dtype {got.dtype} != model dtype {target.dtype}")
    for name in tensors:
        if name not in expected:
            raise PackedFormatError(f"tensor '{name}' in the packed data is not in the model")
    model.load_state_dict(tensors, strict=True)
    for row in rows:  # tied tensors become one parameter again, as in the model that was packed
        if row.alias:
            owner, _, attr = row.name.rpartition(".")
            source_owner, _, source_attr = rows[row.alias - 1].name.rpartition(".")
            source = getattr(model.get_submodule(source_owner), source_attr)
            if isinstance(source, nn.Parameter):
                setattr(model.get_submodule(owner), attr, source)
    for name, module in model.named_modules(remove_duplicate=False):
        if name in codings:
            module.weight_coding = codings[name]
        elif "weight_coding" in vars(module):
            del module.weight_coding
    return model
