import json
import math
import os
import re
import subprocess
import sys

import pytest

import autocomp
from autocomp.artifacts import load_packed
from autocomp.errors import RunError
from autocomp.policy import Policy
from autocomp.testing.conformance import outputs
from autocomp.testing.tiny import fast_latency, tiny_space

SPACE = tiny_space()
FAST = fast_latency()


def run(tmp_path, tiny, **kw):
    model, data = tiny
    args = dict(space=SPACE, trials=6, seed=0, runs_dir=tmp_path, name="r", progress=False, latency=FAST)
    return autocomp.search(model, data, **{**args, **kw})


def score(m):
    return m["accuracy"] - 0.01 * math.log(m["size_bytes"]) + 1e-6 * m["zeros"]


ZEROS = {"zeros": lambda model: float(sum((p == 0).sum() for p in model.parameters()))}


def test_python_api_search_with_a_user_objective(tmp_path, tiny):
    result = run(tmp_path, tiny, objectives=score, extra_metrics=ZEROS)
    assert len(result.trials) == 6 and all(t.status == "complete" for t in result.trials)
    best = max(result.trials, key=lambda t: t.values[0])
    assert [t.id for t in result.pareto] == [best.id]
    assert all("zeros" in t.metrics for t in result.trials)
    journal = [json.loads(line) for line in (tmp_path / "r" / "trials.jsonl").read_text().splitlines()]
    assert [r["id"] for r in journal] == list(range(6))
    assert {"id", "params", "policy", "metrics", "status", "error", "seconds", "worker"} <= set(journal[0])
    # every journaled value is the user's function of that trial's journaled metrics, and they differ
    assert [r["values"] for r in journal] == [[score(r["metrics"])] for r in journal]
    assert len({r["values"][0] for r in journal}) > 1 and {r["metrics"]["zeros"] for r in journal} != {0.0}
    for name in ("run.json", "space.yaml", "pareto.json", "checkpoint.json"):
        assert (tmp_path / "r" / name).is_file()


def test_resume_refuses_a_changed_objective_function_and_names_it(tmp_path, tiny):
    run(tmp_path, tiny, trials=2, objectives=score, extra_metrics=ZEROS)
    saved = json.loads((tmp_path / "r" / "run.json").read_text())["signature"]["objective_code"]
    # a callable given alone is the objective named "objective"; its code is fingerprinted by qualified name + hash
    assert list(saved) == ["0:objective"] and saved["0:objective"].startswith("test_runner.score sha256:")

    def edited(m):  # the same function after an edit: same qualified name, another coefficient
        return m["accuracy"] - 0.02 * math.log(m["size_bytes"]) + 1e-6 * m["zeros"]

    edited.__qualname__ = score.__qualname__
    for other, named in ((edited, r"score sha256:\w+"), (lambda m: m["accuracy"], r".*\.<lambda> sha256:\w+")):
        with pytest.raises(RunError, match=rf"objective '0:objective' is test_runner\.{named}, the run was scored by "
                                           + re.escape(saved["0:objective"])):
            run(tmp_path, tiny, trials=3, resume=True, objectives=other, extra_metrics=ZEROS)
    assert len((tmp_path / "r" / "trials.jsonl").read_text().splitlines()) == 2  # nothing was evaluated
    resumed = run(tmp_path, tiny, trials=3, resume=True, objectives=score, extra_metrics=ZEROS)
    assert len(resumed.trials) == 3 and all(t.values == (score(t.metrics),) for t in resumed.trials)


def test_pareto_front_is_non_dominated_and_sizes_are_real(tmp_path, tiny):
    result = run(tmp_path, tiny, trials=8)
    front_ids = {t.id for t in result.pareto}
    for t in result.trials:
        dominated = any(o.metrics["accuracy"] >= t.metrics["accuracy"] and
                        o.metrics["size_bytes"] <= t.metrics["size_bytes"] and
                        (o.metrics["accuracy"], o.metrics["size_bytes"]) !=
                        (t.metrics["accuracy"], t.metrics["size_bytes"]) for o in result.trials)
        assert (t.id in front_ids) == (not dominated)
    assert (tmp_path / "r" / "pareto.png").stat().st_size > 1000
    # the reported size is the packed artifact's, and that artifact reproduces the model exactly
    model, (x, _) = tiny
    from autocomp.artifacts import artifact_meta, pack_model, write_bytes
    from autocomp.compress import compress

    t = result.pareto[-1]
    compressed = compress(model, Policy.from_dict(t.policy))
    path = tmp_path / "m.acz"
    assert write_bytes(path, pack_model(compressed, artifact_meta(None, Policy.from_dict(t.policy), (1, 8, 8)))) == \
        t.metrics["size_bytes"]
    assert outputs(load_packed(path, model=model), x).equal(outputs(compressed, x))


def test_failing_candidates_are_recorded_and_the_search_goes_on(tmp_path, tiny):
    def flaky(model):
        zeros = sum(int((p == 0).sum()) for p in model.parameters())
        if zeros % 2:
            raise RuntimeError("odd number of zeros")
        return float("nan") if zeros % 3 == 0 and zeros else 1.0

    result = run(tmp_path, tiny, trials=12, extra_metrics={"flaky": flaky})
    failed = [t for t in result.trials if t.status == "failed"]
    assert len(result.trials) == 12 and failed and len(failed) < 12
    assert all(t.error for t in failed)
    assert not {t.id for t in failed} & {t.id for t in result.pareto}


def test_constraints_keep_infeasible_trials_off_the_front(tmp_path, tiny):
    result = run(tmp_path, tiny, trials=8, constraints=[autocomp.Constraint(metric="size_bytes", max=2000)])
    assert result.pareto and all(t.metrics["size_bytes"] <= 2000 for t in result.pareto)
    assert any(t.violation > 0 for t in result.trials)


def test_interrupted_run_resumes_to_the_same_trials(tmp_path, tiny):
    whole = run(tmp_path, tiny, trials=8, name="whole")

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def stop_after_five(model):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # not an Exception: escapes like a Ctrl-C mid-evaluation
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny, trials=8, name="cut", extra_metrics={"x": stop_after_five})
    lines = (tmp_path / "cut" / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 4  # the baseline used one call; trials 0-3 finished, trial 4 was interrupted
    resumed = run(tmp_path, tiny, trials=8, name="cut", resume=True, extra_metrics={"x": lambda m: 0.0})
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    assert [t.id for t in resumed.trials] == list(range(8))


def test_resume_refuses_a_different_optimizer(tmp_path, tiny):
    run(tmp_path, tiny, trials=2)
    with pytest.raises(RunError, match="own settings; these differ: optimizer"):
        run(tmp_path, tiny, trials=3, resume=True, optimizer="uniform")


def test_an_objective_fingerprint_is_the_same_in_every_process():
    """Partials, set constants and objects with default reprs must not make a resume refuse the same function."""
    code = (
        "import functools\n"
        "from autocomp.runner import _code_fingerprint\n"
        "def f(m, w=0.1): return m['a'] in {'p', 'q', 'r', 's'}\n"
        "class C:\n"
        "    def __init__(self): self.x, self.k = object(), 3\n"
        "    def __call__(self, m): return 1\n"
        "print(_code_fingerprint(functools.partial(f, w=0.2)), _code_fingerprint(C()),"
        " _code_fingerprint(lambda m: m['a'] in {'p', 'q', 'r', 's'}))\n"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(outs) == 1 and outs.pop().count("sha256:") == 3
