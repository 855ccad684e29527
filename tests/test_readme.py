"""The README's commands and example stay true."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    assert any("autocomp search" in b and "pip install -e ." in b for b in blocks)


PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_its_python_snippets():
    assert len(PYTHON_BLOCKS) >= 2  # the API example and the extending example


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_snippet_runs(tmp_path, index):
    """Every Python snippet in the README runs as written, in a fresh process from a user's folder."""
    code = PYTHON_BLOCKS[index]
    (tmp_path / "search_spaces").symlink_to(ROOT / "search_spaces")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    if "autocomp.search(" in code:  # the API example: a real run, its table and an exported file
        assert "size_bytes" in done.stdout and "uncompressed" in done.stdout
        assert len(list((tmp_path / "runs").glob("*/trials.jsonl"))) == 1
        assert (tmp_path / "runs" / "best.acz").is_file()
