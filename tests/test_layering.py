"""The one-way flow of DESIGN.md is enforced: a wrong-way import fails the suite."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name):
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else shutil.which(name)


def test_import_contracts_hold():
    tool = _tool("lint-imports")
    if tool is None:
        pytest.skip("import-linter not installed (pip install -e '.[dev]')")
    done = subprocess.run([tool], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_ruff_is_clean():
    tool = _tool("ruff")
    if tool is None:
        pytest.skip("ruff not installed (pip install -e '.[dev]')")
    done = subprocess.run([tool, "check", "autocomp", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
