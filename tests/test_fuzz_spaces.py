"""Property-based: any mutation of a shipped search-space file ends in a valid run or a clear error.

A clear error is exit code 2 with one `autocomp: error:` line naming the file (and, for the file's own
content, the line, key and value), no traceback, and no run directory left behind. Every case goes through
`autocomp check` (the checks `search` makes before writing anything); cases that pass and whose mutation
left the cost settings alone (train, finetune, latency, execution) on the LeNet files are then searched for
real (1 trial, tiny data) and must leave a complete run. `-m slow` runs 1,000 cases.
"""

import contextlib
import io
import itertools

import pytest
from fuzz_cases import cases
from hypothesis import HealthCheck, given, settings

from autocomp.cli import main
from autocomp.testing.tiny import write_fake_cifar10, write_fake_mnist

EXPENSIVE = ("resnet20_cifar10.yaml", "latency_resnet20.yaml")  # minutes per real run, even on tiny data
_names = itertools.count()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    write_fake_mnist(root / "data" / "mnist", n_train=96, n_test=32)
    write_fake_cifar10(root / "data" / "cifar10", rows=24)
    return root


def _cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(args))
    return rc, err.getvalue()


def check_case(root, case) -> str:
    """Runs one case; returns what it ended in ("error", "checked" or "run")."""
    n = next(_names)
    space = root / f"case{n}.yaml"
    space.write_bytes(case.data)
    data = str(root / "data")
    rc, err = _cli("check", str(space), "--data-dir", data)
    what = f"{case.source}, {case.mutation}: rc {rc}\n{err}\n{case.data[:2000]!r}"
    assert rc in (0, 2), what
    assert "Traceback" not in err, what
    if rc == 2:
        assert err.startswith("autocomp: error: ") and err.count("\n") == 1, what
        assert space.name in err, what  # names the file
        return "error"
    if case.touches_cost or case.source in EXPENSIVE:
        return "checked"
    runs = root / "runs"
    rc, err = _cli("search", str(space), "--data-dir", data, "--trials", "1", "--runs-dir", str(runs),
                   "--name", f"r{n}", "--quiet")
    assert rc == 0, what + err
    run = runs / f"r{n}"
    assert (run / "pareto.json").is_file() and len((run / "trials.jsonl").read_text().splitlines()) == 1, what
    return "run"


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_mutated_spaces_end_in_a_run_or_a_clear_error(root, case):
    check_case(root, case)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_a_thousand_mutated_spaces(root, case):
    check_case(root, case)
