"""The Ray executor: the same metrics as in process, every fault recorded, multi-node, kills and Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import ray

import autocomp
from autocomp.evaluate import CompressionEvaluator
from autocomp.execution import ExecutionSpec
from autocomp.execution.ray_executor import RayExecutor
from autocomp.testing.executors import FaultyEvaluator, check_faults, check_same_metrics, sample_policies
from autocomp.testing.processes import MNIST_SPACE, cli, journal
from autocomp.testing.tiny import fast_latency, tiny_space, write_fake_mnist

FAST = fast_latency()
TIMINGS = ("latency_ms", "latency_iqr_ms")


@pytest.fixture(scope="module")
def ray_tmp():
    """A private, short RAY_TMPDIR (Ray's socket paths must stay under the Unix limit)."""
    path = tempfile.mkdtemp(prefix="acray", dir="/tmp")
    os.makedirs(os.path.join(path, "ray"))  # where a Cluster records its address
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = path
    yield path
    if old is None:
        os.environ.pop("RAY_TMPDIR")
    else:
        os.environ["RAY_TMPDIR"] = old
    shutil.rmtree(path, ignore_errors=True)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split(")")[-1].split()[0] != "Z"


def group(pgid):
    """Processes of one process group (what a run started in its own session left running)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().split(")")[-1].split()[2]) == pgid:
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def wait_dead(pids, seconds=15.0):
    deadline = time.time() + seconds
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize("nodes, workers, each", [
    ([2.0], 1, 2.0), ([2.0], 2, 1.0), ([2.0], 4, 0.5), ([8.0, 8.0], 3, 4.0), ([4.0, 2.0], 3, 2.0)])
def test_workers_get_the_most_cpus_that_still_place_every_one(nodes, workers, each):
    from autocomp.execution.ray_executor import cpus_per_worker

    assert cpus_per_worker(nodes, workers) == each


def test_workers_give_the_metrics_of_a_direct_call_and_stop_on_close(ray_tmp, tiny, tmp_path):
    model, data = tiny
    evaluate = CompressionEvaluator(model, data, latency=FAST)
    executor = RayExecutor(evaluate, workers=2, log_dir=tmp_path / "logs")
    try:
        info = executor.worker_info()
        check_same_metrics(executor, evaluate, sample_policies(tiny_space().bind(model), 6), ignore=TIMINGS)
    finally:
        executor.close()
    pids = [w["pid"] for w in info]
    assert len(set(pids)) == 2 and os.getpid() not in pids and all(w["threads"] == 1 for w in info)
    assert not ray.is_initialized() and not wait_dead(pids)
    assert any(p.name.startswith("raylet") for p in (tmp_path / "logs").iterdir())  # Ray's logs were kept


def test_a_local_ray_listens_on_loopback_only(ray_tmp, tiny, tmp_path):
    import psutil  # Ray ships it (ray/thirdparty_files), on the path once ray is imported

    model, data = tiny
    executor = RayExecutor(CompressionEvaluator(model, data, latency=FAST), workers=1)
    try:
        assert executor.worker_info()
        ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
        listening = {(c.laddr.ip, c.pid) for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in ours}
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    finally:
        executor.close()
    assert len({pid for _, pid in listening}) >= 2  # the GCS and the raylet at least
    assert {ip for ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # put back after the start


def test_raise_nan_timeout_and_killed_workers_are_failed_trials_and_the_rest_complete(ray_tmp, tiny, tmp_path):
    model, data = tiny
    policies = sample_policies(tiny_space().bind(model), 8)
    faults = {1: "raise", 2: "nan", 3: "hang", 4: "die", 5: "die-once"}
    evaluate = FaultyEvaluator(CompressionEvaluator(model, data, latency=FAST),
                               {policies[i].fingerprint(): f for i, f in faults.items()}, tmp_path)
    # a hang check, not a timing: 8 s leaves a tiny evaluation room on a loaded machine (3 s did not)
    executor = RayExecutor(evaluate, workers=2, timeout=8.0)
    try:
        outcomes = check_faults(executor, policies, faults)
        assert "worker died 2 times" in outcomes[4].error  # run once more on a live worker, then failed
        assert (tmp_path / f"died-{policies[5].fingerprint()}").exists()  # die-once did die, then completed
        assert 8 <= outcomes[3].seconds < 60
        # the restarted workers take new work
        again = check_faults(executor, policies[6:], {})
        assert {o.status for o in again.values()} == {"complete"}
    finally:
        executor.close()


def test_a_search_on_ray_finds_what_the_in_process_search_finds(ray_tmp, tiny, tmp_path):
    model, data = tiny
    common = dict(space=tiny_space(), trials=8, seed=0, runs_dir=tmp_path, progress=False, latency=FAST)
    local = autocomp.search(model, data, name="local", **common)
    remote = autocomp.search(model, data, name="ray", execution=ExecutionSpec(executor="ray", workers=2), **common)

    def by_id(result):
        return {t.id: (t.params, {k: v for k, v in t.metrics.items() if k not in TIMINGS}) for t in result.trials}

    assert by_id(remote) == by_id(local)  # the random optimizer asks the same whatever the batch size
    workers = {t.worker for t in remote.trials}
    assert len(workers) == 2 and not any(w.startswith("local:") for w in workers)
    info = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert info["executor"]["executor"] == "ray" and info["executor"]["workers"] == 2
    assert (tmp_path / "ray" / "ray-logs").is_dir()


def test_a_two_node_cluster_runs_evaluations_on_both_nodes(ray_tmp, tiny):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        model, data = tiny
        evaluate = CompressionEvaluator(model, data, latency=FAST)
        executor = RayExecutor(evaluate, address=cluster.address)  # one worker per CPU of the cluster
        try:
            nodes = {w["node"] for w in executor.worker_info()}
            policies = sample_policies(tiny_space().bind(model), 8)
            check_same_metrics(executor, evaluate, policies, ignore=TIMINGS)
        finally:
            executor.close()
        assert executor.workers == 2 and len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


SPACE = MNIST_SPACE.replace("groups:", "execution: {executor: ray, workers: 2}\ngroups:")


def wait_for(run_dir, n, proc, seconds=120):
    deadline = time.time() + seconds
    while len(journal(run_dir)) < n and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)


@pytest.fixture
def cli_run(ray_tmp, tmp_path):
    write_fake_mnist(tmp_path / "mnist", n_train=400, n_test=100)
    (tmp_path / "space.yaml").write_text(SPACE)
    return ["--data-dir", str(tmp_path / "mnist"), "--runs-dir", str(tmp_path), "--quiet", "--seed", "5"]


def test_driver_killed_with_sigkill_resumes_on_ray_with_nothing_lost(cli_run, tmp_path):
    run_dir, total = tmp_path / "cut", 16
    # own sessions, so that what the killed driver leaves can be cleaned up: Ray's agent processes outlive
    # a SIGKILLed driver by a few minutes before they exit by themselves
    proc = subprocess.Popen(cli("search", str(tmp_path / "space.yaml"), "--name", "cut", "--trials", str(total),
                                *cli_run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    for _ in range(2):
        wait_for(run_dir, len(journal(run_dir)) + 3, proc)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = journal(run_dir)
        os.killpg(proc.pid, signal.SIGKILL)
        proc = subprocess.Popen(cli("resume", str(run_dir), "--quiet"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    records = journal(run_dir)
    assert sorted(r["id"] for r in records) == list(range(total))  # none lost, none twice
    assert records[: len(before)] == before


def test_ctrl_c_stops_the_run_within_seconds_with_workers_shut_down(cli_run, tmp_path):
    run_dir = tmp_path / "stop"
    # SIGINT as a terminal's foreground job has it: a suite started in the background (`cmd &` in a script)
    # runs with SIGINT ignored, which its children would inherit, and Python then never raises on Ctrl-C
    proc = subprocess.Popen(cli("search", str(tmp_path / "space.yaml"), "--name", "stop", "--trials", "400",
                                *cli_run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(run_dir, 3, proc)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    start, at_signal = time.time(), len(journal(run_dir))
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the driver, Ray and the workers alike
    _, err = proc.communicate(timeout=60)
    took = time.time() - start
    assert took < 15 and proc.returncode == 130, (
        f"rc {proc.returncode} after {took:.1f} s; journal {at_signal} -> {len(journal(run_dir))} lines; "
        f"stderr: {err.decode()[-2000:]}")
    records = journal(run_dir)
    assert len(records) >= 3 and len({r["id"] for r in records}) == len(records)
    assert all(r["status"] == "complete" for r in records), "an interrupted evaluation is not a failed trial"
    workers = {int(r["worker"].split(":")[1].split("@")[0]) for r in records}
    assert not wait_dead(workers | set(group(proc.pid)), seconds=10)  # workers, raylet, GCS: all gone
    proc = subprocess.run(cli("resume", str(run_dir), "--quiet", "--trials", str(len(records) + 2)),
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert sorted(r["id"] for r in journal(run_dir)) == list(range(len(records) + 2))
