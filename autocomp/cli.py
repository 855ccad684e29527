"""The `autocomp` command: search | check | resume | export | finalize | report | bench."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from importlib import resources
from pathlib import Path

from autocomp.artifacts import (
    artifact_meta,
    export_int8,
    export_onnx,
    export_program,
    measure_artifact,
    pack_model,
    write_bytes,
)
from autocomp.bench import BENCHES
from autocomp.compress import compress
from autocomp.errors import AutocompError
from autocomp.execution.registry import executor_names
from autocomp.finalize import final_table, finalize_run
from autocomp.html_report import write_html_report
from autocomp.optimizers import OPTIMIZERS
from autocomp.plugins import load_plugins
from autocomp.policy import Policy
from autocomp.report import latency_prediction_line, pareto_table, plot_pareto
from autocomp.runner import trial_record
from autocomp.session import (
    check_search,
    finetuned_as_evaluated,
    load_run_calibration,
    load_run_model,
    read_spec,
    resume_run,
    run_info,
    run_spec_search,
)
from autocomp.store import RunStore, write_atomic

DEFAULT_SPACE = "lenet300_mnist5k.yaml"


def default_space() -> Path:
    """The built-in default: LeNet-300-100 on the MNIST subset that installs with the package.

    From a checkout (and an editable install) it is search_spaces/ beside the package; a wheel carries
    the same files as the `autocomp.search_spaces` package data.
    """
    beside = Path(__file__).resolve().parents[1] / "search_spaces" / DEFAULT_SPACE
    if beside.is_file():
        return beside
    return Path(str(resources.files("autocomp.search_spaces") / DEFAULT_SPACE))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _unit(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _add_execution_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution", "where candidates are evaluated (defaults: the file's execution: block)")
    g.add_argument("--executor", choices=executor_names(),
                   help="inprocess (default) or ray; --workers or --address imply ray")
    g.add_argument("--workers", type=_positive, help="parallel evaluations (default: the cores allow)")
    g.add_argument("--threads", type=_positive, help="torch threads per worker (default: workers x threads <= cores)")
    g.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: start a local Ray)")
    g.add_argument("--num-cpus", type=_positive_float, help="Ray CPUs each evaluation holds")
    g.add_argument("--num-gpus", type=float, help="Ray GPUs each evaluation holds")
    g.add_argument("--trial-timeout", type=_positive_float, metavar="SECONDS",
                   help="fail an evaluation that runs longer")


def _add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-model-code", action="store_true",
                   help="let model.weights be a whole pickled module (unpickling runs code from the file); "
                        "by default only tensors are read")


def _execution_overrides(args: argparse.Namespace) -> dict:
    given = {"executor": args.executor, "workers": args.workers, "threads": args.threads, "address": args.address,
             "num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "timeout": args.trial_timeout}
    return {k: v for k, v in given.items() if v is not None}


def _print_result(result, log=print) -> None:
    log("")
    counts = {status: sum(t.status == status and not t.copied for t in result.trials)
              for status in ("failed", "pruned")}
    skipped = sum(t.status == "infeasible" and not t.copied for t in result.trials)
    copies = sum(t.copied for t in result.trials)
    log(f"Pareto front ({len(result.pareto)} of {sum(t.evaluated for t in result.trials)} evaluated trials; "
        + ", ".join(f"{n} {status}" for status, n in counts.items() if n or status == "failed")
        + (f"; {skipped} skipped as infeasible before fine-tuning" if skipped else "")
        + (f"; {copies} repeated asks answered from the journal" if copies else "") + "):")
    log(result.table())
    log("")
    log("every row (fp32 too) is compressed as its policy says, fine-tuned as the search fine-tunes, and scored on "
        "the validation split; the test split is left to `autocomp finalize`, which measures it once for the "
        "points it retrains, after choosing on validation")
    log("size_bytes = bytes of the packed artifact (`autocomp export --format packed`); ratio = fp32 bytes / "
        "size_bytes; flops = 2 x MACs at batch 1; latency = median forward pass")
    log(f"run directory: {result.run_dir}  (pareto.json, pareto.png, trials.jsonl)")

    try:
        log(f"report: {write_html_report(result.run_dir)}")
    except Exception as err:  # the run is complete and saved; `autocomp report RUN --html` can redo the page
        log(f"report: not written ({one_line(str(err))})")


def cmd_search(args: argparse.Namespace) -> None:
    """`autocomp search`: run the search a space file describes, then print its Pareto front."""
    space = Path(args.space) if args.space else default_space()
    spec = read_spec(space)
    result = run_spec_search(spec, optimizer=args.optimizer, trials=spec.trial_count(args.trials), seed=args.seed,
                             runs_dir=args.runs_dir, name=args.name, data_dir=args.data_dir,
                             progress=not args.quiet, seed_from=args.seed_from,
                             execution=_execution_overrides(args), trust_code=args.trust_model_code)
    _print_result(result)


def coverage_table(rows: list) -> str:
    """The coverage of a space on its model: per selected layer and primitive, `ok` or `refused: reason`."""
    refused = sum(row.reason is not None for row in rows)
    lines = [f"coverage: {len(rows) - refused} of {len(rows)} (layer, primitive) pairs supported"
             + (f", {refused} refused" if refused else "")]
    width = max([len(row.layer) for row in rows] + [5])
    pwidth = max([len(row.primitive) for row in rows] + [9])
    lines.append(f"  {'layer':<{width}}  {'primitive':<{pwidth}}  coverage")
    lines += [f"  {row.layer:<{width}}  {row.primitive:<{pwidth}}  "
              + ("ok" if row.reason is None else f"refused: {row.reason}") for row in rows]
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> None:
    """`autocomp check`: validate a space file, its model, data and optimizer, without searching."""
    space = Path(args.space) if args.space else default_space()
    checked = check_search(read_spec(space), optimizer=args.optimizer, data_dir=args.data_dir,
                           execution=_execution_overrides(args), trust_code=args.trust_model_code,
                           on_coverage=lambda rows: print(coverage_table(rows)))
    splits = checked.splits
    print(f"{space}: ok: {checked.params} searched parameters, optimizer {checked.optimizer}, "
          f"{checked.execution.executor} executor, data {splits.description} (train {len(splits.train[1])}, "
          f"val {len(splits.val[1])}, test {len(splits.test[1])}); nothing was written")


def cmd_resume(args: argparse.Namespace) -> None:
    """`autocomp resume`: continue a killed or finished run in its directory, then print its Pareto front."""
    result = resume_run(args.run_dir, trials=args.trials, data_dir=args.data_dir, progress=not args.quiet,
                        execution=_execution_overrides(args))
    _print_result(result)


def cmd_export(args: argparse.Namespace) -> None:
    """`autocomp export`: rebuild a trial's compressed model and write it as a file, measured as loaded back."""
    if Path(args.out).is_dir():
        raise AutocompError(f"--out '{args.out}' is a directory; give a file name")
    info = run_info(args.run_dir)
    record = trial_record(args.run_dir, args.trial)
    if record["status"] != "complete":
        raise AutocompError(f"trial {args.trial} of {args.run_dir} did not complete ({record.get('error')})")
    policy = Policy.from_dict(record["policy"])
    calibration = load_run_calibration(args.run_dir)
    example = calibration[0][:1]
    # the same calls the evaluator made, so the bytes are the very ones the trial measured
    model = load_run_model(args.run_dir)
    compressed = compress(model, policy, example=example, calibration=calibration)
    compressed = finetuned_as_evaluated(args.run_dir, compressed, model)  # its task, device and precision
    if args.format == "packed":
        meta = artifact_meta(info["model_ref"], policy, info["input_shape"])
        size = write_bytes(args.out, pack_model(compressed, meta, entropy=info["signature"].get("entropy", False)))
        print(f"wrote {args.out}: {size:,} bytes (trial {args.trial} reported size_bytes "
              f"{int(record['metrics']['size_bytes']):,})")
    elif args.format == "pt":
        size = export_program(args.out, compressed, example)
        print(f"wrote {args.out}: {size:,} bytes, a torch.export program "
              f"(load with torch.export.load(path).module())")
    elif args.format == "onnx":
        size = export_onnx(args.out, compressed, calibration[0][:8])
        print(f"wrote {args.out}: {size:,} bytes, ONNX, checked against PyTorch with ONNX Runtime (<= 1e-4)")
    else:
        size, engine = export_int8(args.out, compressed, calibration[0])
        print(f"wrote {args.out}: {size:,} bytes, int8 kernels for the '{engine}' engine "
              f"(load with autocomp.int8.load_int8(path), or set torch.backends.quantized.engine = "
              f"'{engine}' before torch.jit.load)")
    # what the file really gives, measured on the file as loaded back, beside the theory
    batch = calibration[0][: info["latency"]["batch_size"]]
    report = measure_artifact(args.out, args.format, model, compressed, batch,
                              threads=info["latency"]["threads"])
    report["trial"] = args.trial
    sidecar = Path(f"{args.out}.json")
    write_atomic(sidecar, json.dumps(report, indent=1) + "\n")
    print(f"measured: {report['bytes_on_disk']:,} B on disk ({report['fp32_bytes'] / report['bytes_on_disk']:.1f}x "
          f"smaller than fp32), {report['latency_ms']:.3f} ms vs {report['baseline_latency_ms']:.3f} ms fp32 "
          f"(x{report['speedup']:.2f}) at batch {report['batch_size']}, {report['threads']} threads; "
          f"theory: FLOPs x{report['baseline_flops'] / report['flops']:.2f}, weight bits "
          f"x{report['baseline_weight_bits'] / max(report['weight_bits_nonzero'], 1):.1f} -> {sidecar}")


def cmd_finalize(args: argparse.Namespace) -> None:
    """`autocomp finalize`: retrain chosen Pareto points longer and measure them on the test split."""
    finalize_run(args.run_dir, top=args.top, trial_ids=args.trial, epochs=args.epochs, lr=args.lr,
                 kd_alpha=args.kd_alpha, iterations=args.iterations, schedule=args.schedule,
                 optimizer=args.retrain_optimizer, tolerance=args.tolerance)


def cmd_report(args: argparse.Namespace) -> None:
    """`autocomp report`: print a finished run's Pareto table (and final results), optionally plot or HTML."""
    if not (Path(args.run_dir) / "run.json").is_file():
        raise AutocompError(f"'{args.run_dir}' is not a run directory (no run.json)")
    store = RunStore(args.run_dir)
    pareto = store.read_json("pareto.json")
    if pareto is None:
        raise AutocompError(f"{args.run_dir}: no pareto.json yet (the run has not finished)")
    metric = pareto.get("metric", "accuracy")  # the task's primary metric (runs before tasks: accuracy)
    rows = [{**t["metrics"], "id": t["id"], "policy": t["policy"], f"test_{metric}": t.get(f"test_{metric}"),
             "latency_measured_ms": t.get("latency_measured_ms")} for t in pareto["trials"]]
    print(pareto_table(rows, baseline=pareto["baseline"], metric=metric))
    if pareto.get("latency_prediction"):
        print(latency_prediction_line(pareto["latency_prediction"]))
    final = store.read_json("final.json")
    if final is not None:
        print()
        print(final_table(final))
    if args.plot:
        plot_pareto(store.path / "pareto.png", store.trials(), pareto["trials"], pareto["baseline"], y=metric,
                    title=store.path.name)
        print(f"wrote {store.path / 'pareto.png'}")
    if args.json:
        print(json.dumps(pareto, indent=1))
    if args.html or args.html_out:
        print(f"wrote {write_html_report(store.path, args.html_out)}")


def cmd_bench(args: argparse.Namespace) -> None:
    """`autocomp bench`: run one of the named benchmarks (`--only`: some of its parts, where it has parts)."""
    run = importlib.import_module(BENCHES[args.name]).main
    chosen: dict[str, tuple[str, ...]] = {}
    if args.only is not None:  # a bench whose main takes `only` has parts; the others refuse the option
        if "only" not in inspect.signature(run).parameters:
            raise AutocompError(f"bench '{args.name}' has no parts to choose: it does not take --only")
        chosen["only"] = tuple(p.strip() for p in args.only.split(",") if p.strip())  # the bench checks them
    run(quick=args.quick, data_dir=args.data_dir, runs_dir=args.runs_dir, **chosen)


def build_parser() -> argparse.ArgumentParser:
    """The `autocomp` argument parser: one subcommand per `cmd_*` function."""
    parser = argparse.ArgumentParser(prog="autocomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search compression policies for a model")
    p.add_argument("space", nargs="?", help=f"search-space YAML (default: built-in {DEFAULT_SPACE})")
    p.add_argument("--data-dir", help="data folder, overriding data.dir (mnist, cifar10: the dataset's own "
                   "folder or a parent holding mnist/ ...)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                   help="search strategy (default: the file's optimizer.name, else random); its settings come "
                        "from the file's optimizer.<name> block")
    p.add_argument("--seed-from", metavar="RUN_DIR",
                   help="start from a finished run's Pareto points (e.g. a greedy run), for tpe/gp/nsga2/ga")
    p.add_argument("--trials", type=_positive, help="evaluated trials (default: the file's `trials:`, else 40)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--name", help="run name (default: <space>-<timestamp>)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_trust_arg(p)
    _add_execution_args(p)
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("check", help="validate a search-space file, its data and model; writes nothing")
    p.add_argument("space", nargs="?", help=f"search-space YAML (default: built-in {DEFAULT_SPACE})")
    p.add_argument("--data-dir", help="data folder, overriding data.dir (mnist, cifar10: the dataset's own "
                   "folder or a parent holding mnist/ ...)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="check this optimizer's settings instead")
    _add_trust_arg(p)
    _add_execution_args(p)
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("resume", help="continue a killed or finished run")
    p.add_argument("run_dir")
    p.add_argument("--trials", type=_positive, help="total trials (default: the run's own)")
    p.add_argument("--data-dir", help="dataset folder, if it moved since the run started")
    p.add_argument("--quiet", action="store_true")
    _add_execution_args(p)
    p.set_defaults(fn=cmd_resume)

    p = sub.add_parser("export", help="write one trial's compressed model")
    p.add_argument("run_dir")
    p.add_argument("--trial", type=int, required=True)
    p.add_argument("--format", choices=("packed", "pt", "onnx", "int8"), default="packed",
                   help="packed: the .acz whose size is size_bytes; pt: torch.export program; onnx; int8: "
                        "the real int8 model on PyTorch's quantized engine")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("finalize", help="retrain chosen Pareto points longer, select one on validation, test "
                                        "them once, export them")
    p.add_argument("run_dir")
    p.add_argument("--top", type=_positive, default=3, help="how many points, spread along the front (default 3)")
    p.add_argument("--trial", type=int, action="append", help="a front trial to finalize (repeatable)")
    p.add_argument("--epochs", type=_positive, default=10, help="retraining epochs (full passes; default 10)")
    p.add_argument("--iterations", type=_positive, default=1,
                   help="reach the pruning ratios in this many prune-and-retrain steps (default 1)")
    p.add_argument("--lr", type=_positive_float, help="default: the run's finetune.lr")
    p.add_argument("--kd-alpha", type=_unit, help="distillation weight (default: the run's finetune.kd_alpha)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="lr per retraining step: decays to 0 (cosine, default) or stays at --lr")
    p.add_argument("--retrain-optimizer", choices=("adam", "sgd"),
                   help="adam or sgd (momentum 0.9); default: the run's finetune.optimizer")
    p.add_argument("--tolerance", type=_non_negative_float, default=0.001,
                   help="select the smallest retrained point within this much of the baseline's validation value "
                        "of the task's metric, in its units (default 0.001 = 0.1 pt of accuracy; for perplexity "
                        "e.g. 0.5)")
    p.set_defaults(fn=cmd_finalize)

    p = sub.add_parser("bench", help="run a benchmark; prints a table, writes <runs-dir>/bench-NAME/results.json")
    p.add_argument("name", choices=sorted(BENCHES))
    p.add_argument("--quick", action="store_true", help="a small version that exercises every code path")
    p.add_argument("--data-dir", help="folder holding mnist/ and cifar10/ (or one dataset's own folder)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--only", metavar="PARTS",
                   help="comma-separated parts of the bench to run (efficiency: lenet300, resnet20, lm); a bench "
                        "without parts refuses it")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("report", help="print a finished run's Pareto table")
    p.add_argument("run_dir")
    p.add_argument("--plot", action="store_true", help="redraw pareto.png")
    p.add_argument("--json", action="store_true", help="also print pareto.json")
    p.add_argument("--html", action="store_true",
                   help="write a self-contained HTML report (RUN/report.html; opens offline in a browser)")
    p.add_argument("--html-out", metavar="PATH", help="write the HTML report here instead (implies --html)")
    p.set_defaults(fn=cmd_report)
    return parser


def one_line(text: str) -> str:
    """The message with control characters escaped (a key in a file may hold a newline): one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 on an error, 130 when interrupted)."""
    try:
        load_plugins()  # before the parser: a plugin's optimizer or executor is a valid choice
    except AutocompError as err:
        print(f"autocomp: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except AutocompError as err:
        print(f"autocomp: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a full or read-only disk, a vanished file: the OS's words, with the path
        print(f"autocomp: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autocomp: interrupted; the run directory is intact: `autocomp resume` continues it",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
