"""`autocomp bench parallel`: evaluations per second in process and on Ray workers, overhead, memory.

LeNet-5 on MNIST; each evaluation compresses with a random policy of search_spaces/lenet5_mnist.yaml and
scores it on 10,000 held-out images (the official test split, used here only as a fixed workload), packs
it and times it. Every configuration evaluates the same policies. Configurations run in interleaved
rounds and report the median evaluations per second over the rounds. A target's ratio is taken within
each round (the two configurations timed minutes apart at most) and judged on its median over the rounds
(at least 3, `--quick` too), with the spread (min-max) beside it.

- direct: the evaluator called in a plain loop in this process (1 thread): the reference.
- inprocess Tt: the in-process executor with T torch threads (the best single process).
- ray Wx1: W Ray workers of 1 thread each on a local Ray.
- cluster 2x1: two simulated nodes of 1 CPU each (ray.cluster_utils.Cluster), one worker per node.

Overhead = (wall seconds on 1 Ray worker - seconds inside the evaluator call on that worker) / the latter:
what dispatch, transfer and collection add to each evaluation. `ray_1_worker_vs_direct` also compares the
whole rate with the plain loop in this process.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from autocomp.bench.common import BenchResult, cached_baseline, publish
from autocomp.bench.search import SPACE_FILE
from autocomp.config import load_run_spec
from autocomp.evaluate import CompressionEvaluator
from autocomp.execution import Executor, InProcessExecutor, Task, run_all
from autocomp.metrics import torch_threads
from autocomp.runtimes import LatencySpec
from autocomp.testing.executors import sample_policies
from autocomp.zoo import DATASETS, MODELS
from autocomp.zoo.train import TrainSpec

LENET5_SPACE = SPACE_FILE.with_name("lenet5_mnist.yaml")
SHAPES = {"direct": (1, 1), "inprocess 1t": (1, 1), "inprocess 2t": (1, 2), "ray 1x1": (1, 1), "ray 2x1": (2, 1),
          "cluster 2x1": (2, 1)}  # config -> (workers, threads per worker)
COLUMNS = ("config", "workers", "threads", "evals", "evals_per_s", "s_per_eval", "rounds", "vs_1_worker",
           "driver_rss_mb", "worker_rss_mb")


def _timed(run: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds, evaluator seconds) of one call of `run`, which returns the time its evaluators took."""
    start = time.perf_counter()
    busy = run()
    return time.perf_counter() - start, busy


def _through(executor: Executor, policies: list[Any]) -> Callable[[], float]:
    def run() -> float:
        outcomes = list(run_all(executor, [Task(i, p) for i, p in enumerate(policies)]))
        failed = [o for o in outcomes if o.status != "complete"]
        if failed:
            raise RuntimeError(f"bench evaluation failed: {failed[0].error}")
        return sum(o.seconds for o in outcomes)  # measured around the evaluator call, inside the worker
    return run


def _direct(evaluate: CompressionEvaluator, policies: list[Any]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        for p in policies:
            evaluate(p)
        return time.perf_counter() - start
    return run


def _rss_mb(nbytes: float) -> float:
    return round(nbytes / 2**20, 1)


QUICK, FULL = (4, 3, 2000), (8, 3, 10_000)  # evaluations per round, rounds (>= 3: targets), images


def summarize(result: BenchResult, rates: dict[str, list[float]], overheads: list[float], driver_rss: float,
              worker_rss: dict[str, float]) -> BenchResult:
    """Rows (median rate over the rounds) and targets.

    Each ratio is taken within each round (configurations timed in turn, so machine drift reaches both
    alike), judged on its median over the rounds, spread beside.
    """
    n_eval, rounds = result.settings["evals_per_round"], result.settings["rounds"]
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, (workers, threads) in SHAPES.items():
        result.rows.append({
            "config": name, "workers": workers, "threads": threads, "evals": n_eval * rounds,
            "evals_per_s": median[name], "s_per_eval": 1 / median[name], "rounds": rounds,
            "vs_1_worker": median[name] / median["ray 1x1"],
            "driver_rss_mb": _rss_mb(driver_rss), "worker_rss_mb": _rss_mb(worker_rss.get(name, 0)) or None,
        })
    per_round = list(zip(rates["ray 2x1"], rates["ray 1x1"], rates["inprocess 1t"], rates["inprocess 2t"]))
    result.timed_target("ray_2_workers_vs_1_worker", [two / one for two, one, _, _ in per_round], ">=", 1.6)
    result.timed_target("ray_2_workers_vs_best_single_process",
                        [two / max(t1, t2) for two, _, t1, t2 in per_round], ">=", 1.2)
    result.timed_target("ray_overhead_fraction_of_eval_time", overheads, "<=", 0.05)
    result.settings["ray_1_worker_vs_direct"] = median["ray 1x1"] / median["direct"]
    return result


def main(quick: bool = False, data_dir: str | None = None, runs_dir: str = "runs") -> BenchResult:
    """Run the parallel bench (`quick`: fewer evaluations, rounds and images) and publish its results."""
    n_eval, rounds, n_images = QUICK if quick else FULL
    model, splits = cached_baseline("lenet5", "mnist", data_dir, TrainSpec(epochs=1 if quick else 2, seed=0),
                                    runs_dir)
    data = (splits.test[0][:n_images], splits.test[1][:n_images])
    latency = LatencySpec(repeats=20, warmup=3)
    evaluate = CompressionEvaluator(model, data, latency=latency, calibration=(splits.train[0][:256],
                                                                                splits.train[1][:256]))
    space = load_run_spec(LENET5_SPACE, models=MODELS, datasets=DATASETS).space.bind(model)
    policies = sample_policies(space, n_eval, seed=0)
    result = BenchResult("parallel", {"model": "lenet5", "images": len(data[1]), "evals_per_round": n_eval,
                                      "rounds": rounds, "cores": os.cpu_count(), "quick": quick,
                                      "latency": vars(latency)})
    print(f"parallel: {n_eval} LeNet-5 evaluations on {len(data[1]):,} images per round, {rounds} rounds")
    rates, overheads, driver_rss, worker_rss, nodes = measure(evaluate, policies, rounds)
    result.settings["cluster_nodes_used"] = nodes
    return publish(summarize(result, rates, overheads, driver_rss, worker_rss), COLUMNS, runs_dir)


def measure(evaluate: CompressionEvaluator, policies: list[Any], rounds: int
            ) -> tuple[dict[str, list[float]], list[float], float, dict[str, float], int]:
    """Evaluations per second of every configuration in each of `rounds` interleaved rounds, and more.

    Also the Ray overhead per round, driver and worker memory, and how many simulated nodes the cluster
    used.
    """
    import ray
    from ray.cluster_utils import Cluster

    from autocomp.execution.ray_executor import RayExecutor, process_rss_bytes, ray_environment

    n_eval = len(policies)
    ray_environment()
    temp = tempfile.mkdtemp(prefix="acbench", dir=os.environ.get("RAY_TMPDIR"))
    os.makedirs(os.path.join(temp, "ray"), exist_ok=True)  # where the simulated cluster records its address
    outer_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp  # private: never the machine-wide /tmp/ray

    # one local Ray hosts both Ray configurations; actors of the idle one wait without using a core
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    executors: dict[str, Any] = {}
    try:
        executors = {"ray 1x1": RayExecutor(evaluate, workers=1, threads=1, num_cpus=1),
                     "ray 2x1": RayExecutor(evaluate, workers=2, threads=1, num_cpus=1)}
        for ex in executors.values():
            ex.worker_info()  # started and set up before any clock runs
        runs: dict[str, Callable[[], float]] = {
            "direct": _direct(evaluate, policies),
            "inprocess 1t": _through(InProcessExecutor(evaluate), policies),
            "inprocess 2t": _through(InProcessExecutor(evaluate), policies),
            "ray 1x1": _through(executors["ray 1x1"], policies),
            "ray 2x1": _through(executors["ray 2x1"], policies),
        }
        for ex in executors.values():  # warm-up: first calls import and allocate
            _through(ex, policies[:2])()
        _direct(evaluate, policies[:1])()
        rates: dict[str, list[float]] = {name: [] for name in runs}
        overheads: list[float] = []  # per round: (wall - evaluator time) / evaluator time on 1 Ray worker
        for r in range(rounds):
            for name, run in runs.items():
                with torch_threads(SHAPES[name][1]):  # the driver's threads (what in-process configs use)
                    wall, busy = _timed(run)
                rates[name].append(n_eval / wall)
                if name == "ray 1x1":
                    overheads.append((wall - busy) / busy)
                print(f"  round {r + 1}: {name}: {rates[name][-1]:.3f} evals/s", flush=True)
        worker_rss = {name: max(w["rss_bytes"] for w in ex.worker_info()) for name, ex in executors.items()}
    finally:
        for ex in executors.values():
            ex.close()
        ray.shutdown()
    driver_rss = process_rss_bytes()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "temp_dir": temp})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ex = RayExecutor(evaluate, address=cluster.address, threads=1)
        try:
            nodes = {w["node"] for w in ex.worker_info()}
            _through(ex, policies[:2])()
            rates["cluster 2x1"] = [n_eval / _timed(_through(ex, policies))[0] for _ in range(rounds)]
            worker_rss["cluster 2x1"] = max(w["rss_bytes"] for w in ex.worker_info())
        finally:
            ex.close()
            ray.shutdown()
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if outer_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = outer_tmpdir
    return rates, overheads, driver_rss, worker_rss, len(nodes)


__all__ = ["main", "measure", "summarize"]
