"""Evaluate candidates on Ray actors, on this machine or on a cluster.

Each actor receives the evaluator (model, data, settings) once, through the object store, and then takes
one policy at a time. The driver streams outcomes as they finish, fails evaluations that run past the
per-trial timeout (killing the actor, which Ray restarts), and runs a trial whose worker died once more on
a live worker before recording it failed.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayError, RayTaskError

from autocomp.execution.base import EvaluateFn, Outcome, Task, evaluate_safely, timeout_outcome

POLL_SECONDS = 0.5  # how often the driver wakes to check timeouts (and to notice Ctrl-C)


def ray_environment() -> None:
    """Ray settings this project needs: no auth prompt, no usage reporting."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local Ray starts: make it listen on 127.0.0.1 only.

    Ray on Linux turns a node IP of 127.0.0.1 into the machine's reachable address, and its servers then
    listen on every interface; with its "clusters enabled" switch off it keeps the loopback address and
    binds only that. The switch is read at call time in this process (the module constant) and from the
    environment by the processes Ray spawns now; both are put back afterwards.
    """
    from ray._private import ray_constants

    saved_env, saved_constant = os.environ.get(_CLUSTERS_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(_CLUSTERS_ENV, None)
        else:
            os.environ[_CLUSTERS_ENV] = saved_env


_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def process_rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where that is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpus_per_worker(node_cpus: list[float], workers: int) -> float:
    """The most whole CPUs each of `workers` can hold with every worker placed on some node.

    A fraction when there are more workers than CPUs (they then share).
    """
    for cpus in range(int(max(node_cpus)), 0, -1):
        if sum(int(c // cpus) for c in node_cpus) >= workers:
            return float(cpus)
    return sum(node_cpus) / workers


def _check_listening(address: str, seconds: float = 5.0) -> None:
    """Fail fast when nobody listens at HOST:PORT (Ray itself keeps retrying for minutes)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address must be auto or HOST:PORT, got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as err:
        raise ConnectionError(f"no Ray cluster answers at {address} ({err.strerror or err})") from None


class _Worker:
    """One evaluation slot: holds the evaluator and runs policies through it.

    The evaluator arrives by `setup`, not the constructor, so that the driver knows when a restarted
    actor is ready again (and Ray need not keep constructor arguments alive for restarts).
    """

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.evaluate: EvaluateFn | None = None
        self.node = ray.get_runtime_context().get_node_id()
        self.name = f"{socket.gethostname()}:{os.getpid()}@{self.node[:8]}"

    def setup(self, evaluator_ref: list[Any]) -> str:
        # the reference comes inside a list so that this actor fetches the value (once) from the object store
        self.evaluate = ray.get(evaluator_ref[0])
        return self.name

    def run(self, task: Task) -> Outcome | None:
        if self.evaluate is None:  # restarted since its setup: the driver sets it up and sends the task again
            return None
        return evaluate_safely(self.evaluate, task, self.name)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "node": self.node, "pid": os.getpid(), "rss_bytes": process_rss_bytes(),
                "threads": torch.get_num_threads()}


@dataclass
class _Running:
    actor: Any
    task: Task
    attempt: int
    started: float


class RayExecutor:
    """`workers` Ray actors evaluating in parallel.

    Args:
        evaluate: the evaluator; pickled once into the object store (it must be picklable by cloudpickle).
        workers: evaluation slots; default: the cluster's CPUs / `num_cpus` (this machine's cores locally).
        threads: torch threads per worker; default: `num_cpus` rounded down, so workers x threads <= cores.
        address: join a running cluster ("auto" or "HOST:PORT"); None starts a local Ray and stops it on close.
        num_cpus, num_gpus: Ray resources each evaluation holds.
        timeout: seconds after which an evaluation is failed (and its actor killed and restarted).
        retries: how often a trial whose worker process died is run again before it is recorded failed.
        log_dir: where a local Ray's logs are copied on close (the run directory's `ray-logs`).
    """

    def __init__(
        self,
        evaluate: EvaluateFn,
        *,
        workers: int | None = None,
        threads: int | None = None,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float = 0.0,
        timeout: float | None = None,
        retries: int = 1,
        log_dir: str | os.PathLike | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.timeout, self.retries, self.address = timeout, retries, address
        self.log_dir = Path(log_dir) if log_dir else None
        self._temp_dir: str | None = None
        self._connected = False
        self._connect(address)
        try:
            node_cpus = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1.0]
            if num_cpus is None:
                num_cpus = cpus_per_worker(node_cpus, workers) if workers else 1.0
            self.workers = workers or max(1, sum(int(c // num_cpus) for c in node_cpus))
            self.threads = threads or max(1, int(num_cpus))
            self.num_cpus, self.num_gpus = num_cpus, num_gpus
            self._evaluator_ref = ray.put(evaluate)
            actor_class = ray.remote(_Worker).options(
                num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1, max_task_retries=0)
            self.actors = [actor_class.remote(self.threads) for _ in range(self.workers)]
        except BaseException:
            self._disconnect()
            raise
        self.idle: deque[Any] = deque()
        self.setting_up: dict[Any, Any] = {}  # setup call -> actor; the actor is idle once it returns
        self.queue: deque[tuple[Task, int]] = deque()
        self.running: dict[Any, _Running] = {}
        self.finished: deque[Outcome] = deque()
        for actor in self.actors:
            self._set_up(actor)

    # -- Ray lifetime ---------------------------------------------------------------------------------------
    def _connect(self, address: str | None) -> None:
        ray_environment()
        if ray.is_initialized():  # the caller's Ray (Python API): use it, leave it running
            return
        if address:
            _check_listening(address)
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            # a short private directory: Ray's socket paths must stay under the Unix limit
            self._temp_dir = tempfile.mkdtemp(prefix="autocomp-ray-", dir=os.environ.get("RAY_TMPDIR"))
            with _loopback_only():
                ray.init(num_cpus=usable_cores(), include_dashboard=False, _temp_dir=self._temp_dir,
                         _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
        self._connected = True

    def _disconnect(self) -> None:
        if self._connected:
            ray.shutdown()
            self._connected = False
        if self._temp_dir:
            self._keep_logs()
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def _keep_logs(self) -> None:
        logs = Path(self._temp_dir or "") / "session_latest" / "logs"
        if self.log_dir is None or not logs.is_dir():
            return
        shutil.rmtree(self.log_dir, ignore_errors=True)
        shutil.copytree(logs, self.log_dir, ignore=shutil.ignore_patterns("*.sock", "events", "old"),
                        ignore_dangling_symlinks=True, dirs_exist_ok=True)

    def describe(self) -> dict[str, Any]:
        """What run.json records: workers, their resources, the cluster address, timeout, retries, Ray version."""
        return {"executor": "ray", "workers": self.workers, "threads": self.threads, "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus, "address": self.address or "local", "timeout": self.timeout,
                "retries": self.retries, "ray": ray.__version__}

    def worker_info(self) -> list[dict[str, Any]]:
        """Name, node, pid and resident memory of each worker (for benchmarks and tests)."""
        return ray.get([actor.info.remote() for actor in self.actors])

    # -- evaluation -----------------------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        """Queue the task (first attempt) and hand queued tasks to idle workers."""
        self.queue.append((task, 0))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            task, attempt = self.queue.popleft()
            actor = self.idle.popleft()
            self.running[actor.run.remote(task)] = _Running(actor, task, attempt, time.monotonic())

    def _set_up(self, actor: Any) -> None:
        self.setting_up[actor.setup.remote([self._evaluator_ref])] = actor

    def _collect_setup(self, ref: Any) -> None:
        actor = self.setting_up.pop(ref)
        try:
            ray.get(ref)
        except RayActorError:  # still restarting: ask again shortly
            time.sleep(0.1)
            self._set_up(actor)
            return
        self.idle.append(actor)

    def next_outcome(self) -> Outcome:
        """Wait for the first finished evaluation on any worker, handling deaths, timeouts and retries meanwhile."""
        while not self.finished:
            if not self.running and not self.queue:
                raise RuntimeError("next_outcome() with no evaluation submitted")
            done, _ = ray.wait([*self.running, *self.setting_up], num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                if ref in self.setting_up:
                    self._collect_setup(ref)
                else:
                    self._collect(ref)
            self._expire()
            self._dispatch()
        return self.finished.popleft()

    def _collect(self, ref: Any) -> None:
        job = self.running.pop(ref)
        try:
            outcome = ray.get(ref)
        except RayActorError as err:  # the worker process died (or its node did)
            self._set_up(job.actor)  # Ray restarts it; once set up again it takes new work
            if job.attempt < self.retries:
                self.queue.appendleft((job.task, job.attempt + 1))
            else:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                self.finished.append(Outcome(
                    job.task.trial_id, "failed", seconds=time.monotonic() - job.started,
                    error=f"worker died {job.attempt + 1} times evaluating this trial: {type(err).__name__}: "
                          f"{reason}"))
            return
        except (RayTaskError, RayError) as err:  # e.g. the task could not be deserialized on the worker
            if isinstance(getattr(err, "cause", None), KeyboardInterrupt):
                raise KeyboardInterrupt from None  # Ctrl-C reached the worker too: stop, it is not a failure
            self.idle.append(job.actor)
            self.finished.append(Outcome(job.task.trial_id, "failed", error=f"{type(err).__name__}: {err}",
                                         seconds=time.monotonic() - job.started))
            return
        if outcome is None:  # the actor had restarted unnoticed: set it up, run the task again
            self._set_up(job.actor)
            self.queue.appendleft((job.task, job.attempt))
            return
        self.idle.append(job.actor)
        self.finished.append(outcome)

    def _expire(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for ref, job in list(self.running.items()):
            if now - job.started > self.timeout:
                del self.running[ref]
                ray.kill(job.actor, no_restart=False)  # the only way to stop a running evaluation
                self._set_up(job.actor)
                self.finished.append(timeout_outcome(job.task, self.timeout, now - job.started, "ray"))

    def close(self) -> None:
        """Kill the workers and, when this executor started Ray, stop it (its logs go to `log_dir`)."""
        for actor in getattr(self, "actors", []):
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone: nothing to stop
                pass
        self.actors, self.running, self.setting_up, self.idle = [], {}, {}, deque()
        self._disconnect()
