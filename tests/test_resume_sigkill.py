"""A real `autocomp search` process killed with SIGKILL at random moments resumes with nothing lost."""

import random
import subprocess
import time

from autocomp.testing.processes import MNIST_SPACE, cli, journal, kill_when, whole_mnist_run

SPACE = MNIST_SPACE
TRIALS = 14


def test_sigkill_then_resume_keeps_every_trial_and_evaluates_none_twice(tmp_path):
    common, whole = whole_mnist_run(tmp_path, SPACE, TRIALS)

    run_dir = tmp_path / "cut"
    rng = random.Random(0)
    proc = subprocess.Popen(cli("search", str(tmp_path / "space.yaml"), "--name", "cut", *common),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kills = 0
    while kills < 4:
        if kills % 2:  # at a random time: start-up, baseline loading, ask/checkpoint windows, finalize
            time.sleep(rng.uniform(0.2, 3.0))
            target = 0
        else:  # shortly after a trial lands: mid-evaluation, mid-write, mid-checkpoint
            target = len(journal(run_dir)) + rng.randint(1, 3)
        if not kill_when(proc, run_dir, target, rng):
            break
        kills += 1
        before = journal(run_dir)
        proc = subprocess.Popen(cli("resume", str(run_dir), "--quiet"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert kills >= 2
    resumed = journal(run_dir)
    assert [r["id"] for r in resumed] == list(range(TRIALS))  # none lost, none twice
    assert before == resumed[: len(before)]  # what finished before the last kill was kept as it was
    # the resumed search asked exactly what the uninterrupted one did
    assert [r["params"] for r in resumed] == [r["params"] for r in whole]
