"""Plugins: modules that register primitives, optimizers, runtimes or executors for the command line.

Python code registers its extensions by importing them; the `autocomp` command imports, before it reads any
file, every module named in the `AUTOCOMP_PLUGINS` environment variable (comma-separated, importable from
the current directory as `python -m` would) and every entry point of the group `autocomp.plugins` that an
installed package declares (`[project.entry-points."autocomp.plugins"] name = "package.module"`).
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

from autocomp.errors import AutocompError

ENV = "AUTOCOMP_PLUGINS"
GROUP = "autocomp.plugins"


def cwd_importable() -> None:
    """Put the folder the command runs from on the import path, as `python -m` does (once)."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def load_plugins() -> list[str]:
    """Import the plugin modules; returns their names.

    Raises:
        AutocompError: a plugin module cannot be imported (named, with the reason).
    """
    cwd_importable()
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    names += [ep.value for ep in entry_points(group=GROUP)]
    for name in names:
        try:
            importlib.import_module(name.split(":")[0])
        except Exception as err:  # a plugin's own error is the user's to fix: name it, no traceback
            raise AutocompError(f"plugin '{name}' cannot be imported: {type(err).__name__}: {err}") from err
    return names
