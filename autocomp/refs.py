"""Import the object a `"pkg.module:attr"` reference names, as `python -m` would from the current folder."""

from __future__ import annotations

import importlib
import re
from typing import Any

from autocomp.errors import AutocompError
from autocomp.plugins import cwd_importable

# dotted module path, a colon, then a dotted attribute path (a factory may live on a class)
REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_reference(name: str) -> bool:
    """Whether `name` is written as a `pkg.module:attr` reference (rather than a registered name)."""
    return ":" in name


def import_reference(ref: str, what: str, error: type[AutocompError] = AutocompError) -> Any:
    """The object `ref` (`"pkg.module:attr"`) names; modules in the current folder import as under `python -m`.

    Args:
        ref: The reference, e.g. `"mydata:splits"` or `"pkg.module:Class.build"`.
        what: What it should be, for messages (e.g. "data factory").
        error: The error class raised when it cannot be imported.

    Returns:
        The named object.

    Raises:
        AutocompError: (`error`) `ref` is malformed, its module cannot be imported, or has no such attribute.
    """
    if not REFERENCE.fullmatch(ref):
        raise error(f"{what} '{ref}' is not a 'pkg.module:attr' reference")
    module_name, _, attr = ref.partition(":")
    cwd_importable()  # `python -m` puts the folder it runs from on sys.path; a console script does not
    importlib.invalidate_caches()  # a module written since the last import (tests, notebooks) must be found
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # a module's own error is the user's to fix: name it, no traceback
        raise error(f"{what} '{ref}' cannot be imported: {type(err).__name__}: {err}") from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(f"{what} '{ref}' cannot be imported: module '{module_name}' has no attribute "
                        f"'{attr}'") from None
    return obj
