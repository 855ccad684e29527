"""The public API's type hints are ones a checker accepts (mypy, settings in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_accepts_the_public_api(tmp_path):
    tool = Path(sys.executable).with_name("mypy")
    tool = str(tool) if tool.exists() else shutil.which("mypy")
    if tool is None:
        pytest.skip("mypy not installed (pip install -e '.[dev]')")
    done = subprocess.run([tool, "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
