"""From a search-space file to a ready search: data, model, trained (cached) baseline, run directory.

Everything a user can get wrong (the file, the data directory, the layer selectors) is checked before
anything is written, so a bad input leaves no half-made run directory behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autocomp import outputs
from autocomp.config import RunSpec, dump_run_spec, load_run_spec, parse_run_spec
from autocomp.devices import on_device, resolve_device
from autocomp.errors import AutocompError, RunError, SpaceError
from autocomp.execution import ExecutionSpec
from autocomp.finetune import finetune_as_evaluated
from autocomp.optimizers import OPTIMIZERS, check_settings, optimizer_class
from autocomp.runner import SearchResult, check_optimizer, check_taylor, search
from autocomp.store import write_atomic
from autocomp.tasks import Task, get_task
from autocomp.zoo import DATASETS, MODELS, Splits, build_model, load_dataset, train_baseline

if TYPE_CHECKING:  # the space is the run file's; session only passes its coverage rows on
    from autocomp.space import Coverage

BASELINE = "baseline.pt"
CALIBRATION = "calibration.pt"  # the rows that calibrate activation ranges: export must use the same


def calibration_rows(splits: Splits, run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """256 training rows, saved in the run directory once, so evaluation, resume and export agree."""
    path = run_dir / CALIBRATION
    if path.is_file():
        rows = torch.load(path, weights_only=True)
        return rows["inputs"], rows["labels"]
    x, y = splits.train[0][:256].clone(), splits.train[1][:256].clone()
    save_tensors(path, {"inputs": x, "labels": y})
    return x, y


def save_tensors(path: Path, tensors: Any) -> None:
    """torch.save into memory, then one atomic write.

    A full disk gives a clear RunError, not torch's "unexpected pos" from a half-written zip, and never a
    truncated file under the real name.
    """
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    write_atomic(path, buffer.getvalue())


def read_spec(path: str | os.PathLike) -> RunSpec:
    """Load a run file (search-space YAML), resolving model and data names against the built-in zoo."""
    return load_run_spec(path, models=MODELS, datasets=DATASETS)


TRUST_FLAG = "--trust-model-code"


def _load_weights(model: nn.Module, path: str | os.PathLike, *, trust_code: bool = False) -> None:
    """Load a state_dict (or, with `trust_code`, a whole pickled module's weights) into `model`.

    Without `trust_code` torch's weights-only unpickler reads tensors and containers and refuses any other
    object, so a file can't run code; a pickled nn.Module needs the user's explicit --trust-model-code.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust_code)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line), None)  # a class or function it won't load
        if refused is None:  # not a pickle of objects: a torn or foreign file
            raise AutocompError(f"cannot load weights '{path}' into the model: {lines[-1] if lines else err}") from err
        raise AutocompError(f"model.weights '{path}' holds pickled objects beyond tensors, which autocomp does "
                            f"not unpickle unless you pass {TRUST_FLAG} ({refused})") from None
    except Exception as err:  # any unreadable file is the user's input, not a crash
        raise AutocompError(f"cannot load weights '{path}' into the model: {err}") from err
    if isinstance(state, nn.Module):
        state = state.state_dict()
    try:
        model.load_state_dict(state)
    except Exception as err:
        raise AutocompError(f"cannot load weights '{path}' into the model: {err}") from err


def _baseline_key(spec: RunSpec, splits: Splits) -> str:
    what = {"model": asdict(spec.model), "data": splits.description, "train": asdict(spec.train),
            **({"task": spec.task} if spec.task != "classification" else {}),  # old keys stay valid
            "val_fraction": spec.data.val_fraction, "n_train": len(splits.train[1]), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_baseline(spec: RunSpec, splits: Splits, run_dir: Path, cache_dir: Path, log=print, *,
                     trust_code: bool = False) -> nn.Module:
    """The model to compress: the run's saved baseline, its given weights, a cached one, or trained now.

    Whichever it is, the run keeps it as baseline.pt (a state_dict), the one file later commands load.
    """
    model = build_model(spec.model.name, spec.model.kwargs)
    saved = run_dir / BASELINE
    if saved.is_file():
        _load_weights(model, saved)
    elif spec.model.weights:
        _load_weights(model, spec.model.weights, trust_code=trust_code)
        save_tensors(saved, model.state_dict())
    else:
        cached = cache_dir / f"baseline-{_baseline_key(spec, splits)}.pt"
        if cached.is_file():
            _load_weights(model, cached)
            log(f"baseline: cached weights {cached}")
        else:
            start = time.perf_counter()
            log(f"baseline: training {spec.model.name} for {spec.train.epochs} epochs (seed {spec.train.seed})")
            train_baseline(model, splits.train, spec.train, get_task(spec.task))
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RunError(f"cannot create '{cache_dir}': {err.strerror or err}") from err
            save_tensors(cached, model.state_dict())
            log(f"baseline: trained in {time.perf_counter() - start:.1f} s")
        write_atomic(saved, cached.read_bytes())  # a kill mid-copy must not leave a truncated baseline behind
    return model.eval()


def check_model(spec: RunSpec, splits: Splits, *, trust_code: bool = False) -> nn.Module:
    """Build the model, load given weights, and run it on a few rows: mismatches surface before any write."""
    model = build_model(spec.model.name, spec.model.kwargs)
    if spec.model.weights:
        _load_weights(model, spec.model.weights, trust_code=trust_code)
    x, y = splits.val
    try:
        with torch.no_grad():  # a tensor, tuple, dict or ModelOutput (the task finds the logits)
            output = model.eval()(x[:2])
            found = outputs.logits(output)
    except Exception as err:
        raise AutocompError(f"model '{spec.model.name}' cannot run on {spec.data.name} inputs of shape "
                            f"{tuple(x.shape[1:])}: {err}") from err
    task = get_task(spec.task)
    why = task.check(output, y[:2])
    if task.NAME == "classification" and int(y.max()) >= found.shape[-1]:  # every row's label, not two rows'
        why = f"it gives outputs of shape {tuple(found.shape[1:])}, but the data has {int(y.max()) + 1} classes"
    if why is not None:
        raise AutocompError(f"model '{spec.model.name}' on {spec.data.name} for task {task.NAME}: {why}")
    return model


def check_optimizer_spec(spec: RunSpec) -> None:
    """The file's `optimizer:` section names known optimizers with their own settings, well typed."""
    opt, lines = spec.optimizer, spec.optimizer.lines
    if opt.name is not None and opt.name not in OPTIMIZERS:
        raise SpaceError(f"unknown optimizer; known: {', '.join(sorted(OPTIMIZERS))}", file=spec.source,
                         line=lines.get("name"), key="optimizer.name", value=opt.name)
    for name, block in opt.settings.items():
        if name not in OPTIMIZERS:
            raise SpaceError(f"unknown optimizer; known: {', '.join(sorted(OPTIMIZERS))}", file=spec.source,
                             line=lines.get(name), key=f"optimizer.{name}", value=name)
        for key, value in block.items():
            try:
                check_settings(name, {key: value})
            except AutocompError as err:
                raise SpaceError(str(err), file=spec.source, line=lines.get(f"{name}.{key}"),
                                 key=f"optimizer.{name}.{key}", value=value) from None


def front_params(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The parameters of a finished run's Pareto points, to seed another optimizer (`--seed-from`)."""
    path = Path(run_dir) / "pareto.json"
    try:
        return [t["params"] for t in json.loads(path.read_text())["trials"]]
    except FileNotFoundError:
        raise RunError(f"--seed-from: '{run_dir}' has no pareto.json (is it a finished run?)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RunError(f"--seed-from: {path} is not a pareto.json autocomp wrote ({err})") from None


def execution_spec(spec: RunSpec, overrides: dict[str, Any] | None = None) -> ExecutionSpec:
    """The file's execution block with command-line overrides; asking for workers or an address means Ray."""
    overrides = dict(overrides or {})
    if "executor" not in overrides and {"workers", "address"} & set(overrides):
        overrides["executor"] = "ray"
    execution = replace(spec.execution, **overrides)
    if execution.executor == "inprocess" and (execution.address or (execution.workers or 1) > 1):
        raise AutocompError("--workers > 1 and --address need the Ray executor (--executor ray)")
    return execution


@dataclass(frozen=True)
class CheckedSearch:
    """What a search-space file resolves to once every check a search makes before writing has passed."""

    optimizer: str
    optimizer_settings: dict[str, Any]
    execution: ExecutionSpec
    splits: Splits
    data_dir: str | None
    model: nn.Module
    params: int  # searched parameters of the bound space


def check_search(spec: RunSpec, *, optimizer: str | None = None, optimizer_settings: dict[str, Any] | None = None,
                 seed_from: str | None = None, execution: dict[str, Any] | None = None,
                 data_dir: str | None = None, seed: int = 0, trust_code: bool = False,
                 on_coverage: Callable[[list[Coverage]], None] | None = None) -> CheckedSearch:
    """Every check `search` makes before it writes anything (`autocomp check` runs exactly these).

    Optimizer name and settings, execution, data, the model on its inputs, layer selectors, and coverage:
    each selected layer and primitive is supported or refused with a reason (`on_coverage` gets the rows
    before a refusal raises its SpaceError).
    """
    check_optimizer_spec(spec)
    executing = execution_spec(spec, execution)
    optimizer = optimizer or spec.optimizer.name or "random"
    if optimizer_settings is None:
        optimizer_settings = dict(spec.optimizer.settings.get(optimizer, {}))
    if seed_from:
        if "initial" not in optimizer_class(optimizer).SETTINGS:
            seeded = sorted(n for n in OPTIMIZERS if "initial" in optimizer_class(n).SETTINGS)
            raise AutocompError(f"--seed-from: optimizer '{optimizer}' takes no initial candidates "
                                f"(those that do: {', '.join(seeded)})")
        optimizer_settings["initial"] = list(optimizer_settings.get("initial", [])) + front_params(seed_from)
    data_dir = data_dir or spec.data.dir
    splits = spec_splits(spec, data_dir)
    model = check_model(spec, splits, trust_code=trust_code)
    check_taylor(get_task(spec.task), spec.space)
    example = splits.val[0][:1]
    rows = spec.space.coverage(model, example=example)  # each primitive's checks, once
    if on_coverage is not None:
        on_coverage(rows)
    bound = spec.space.bind(model, example=example, coverage=rows)  # selector errors and refused layers too
    check_optimizer(optimizer, optimizer_settings, bound, model, splits.val[0][:1],
                    directions=[o.direction for o in spec.objectives], seed=seed)
    return CheckedSearch(optimizer=optimizer, optimizer_settings=optimizer_settings, execution=executing,
                         splits=splits, data_dir=data_dir, model=model, params=len(bound.params))


@contextmanager
def _removed_unless_started(run_dir: Path) -> Iterator[None]:
    """Make `run_dir`; if what follows fails before the run has begun (no run.json), leave nothing behind."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create run directory '{run_dir}': {err.strerror or err}") from err
    try:
        yield
    except (AutocompError, OSError):
        if created and not (run_dir / "run.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def run_spec_search(
    spec: RunSpec,
    *,
    optimizer: str | None,
    trials: int,
    seed: int,
    runs_dir: str | os.PathLike,
    name: str | None,
    data_dir: str | None,
    resume: bool = False,
    progress: bool = True,
    optimizer_settings: dict[str, Any] | None = None,
    seed_from: str | None = None,
    execution: dict[str, Any] | None = None,
    trust_code: bool = False,
    log=print,
) -> SearchResult:
    """Search as a search-space file describes; `resume` continues the run already in runs_dir/name.

    The optimizer is `optimizer`, else the file's `optimizer.name`, else random; its settings are the
    file's block of that name unless given (resume passes the run's own), plus `initial` candidates from
    `seed_from` (a finished run's Pareto front). `execution` overrides the file's execution block.
    """
    checked = check_search(spec, optimizer=optimizer, optimizer_settings=optimizer_settings, seed_from=seed_from,
                           execution=execution, data_dir=data_dir, seed=seed, trust_code=trust_code)
    optimizer, optimizer_settings, splits, data_dir = (checked.optimizer, checked.optimizer_settings,
                                                       checked.splits, checked.data_dir)
    name = name or f"{Path(spec.source or 'run').stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(runs_dir) / name
    if not resume and (run_dir / "run.json").exists():
        raise RunError(f"run directory '{run_dir}' already holds a run: `autocomp resume {run_dir}` "
                       "or choose another --name")
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise RunError(f"--runs-dir '{runs_dir}' is not a directory")
    log(f"data: {splits.description}: train {len(splits.train[1])}, val {len(splits.val[1])}, "
        f"test {len(splits.test[1])}")
    objectives, constraints = list(spec.objectives), list(spec.constraints)
    with _removed_unless_started(run_dir):
        model = prepare_baseline(spec, splits, run_dir, Path(runs_dir) / ".cache", log=log, trust_code=trust_code)
        # the test split is not looked at here: `autocomp finalize` measures it once, for chosen points
        task = get_task(spec.task)
        measured = task.evaluate(model, splits.val)
        log(f"baseline: val {task.PRIMARY} {measured[task.PRIMARY]:.4f}")
        model_ref = {"name": spec.model.name, "kwargs": dict(spec.model.kwargs)}
        run_info = {
            "origin": "cli",
            "space_file": spec.source,
            "model": asdict(spec.model),
            "model_ref": model_ref,  # what packed headers record; export must write the very same bytes
            "data": {"name": spec.data.name, "dir": str(Path(data_dir).resolve()) if data_dir else None,
                     "description": splits.description, "train": len(splits.train[1]),
                     "val": len(splits.val[1]), "test": len(splits.test[1])},
            "input_shape": list(splits.val[0].shape[1:]),
        }
        return search(
            model, splits.val, space=spec.space, calibration_data=calibration_rows(splits, run_dir),
            objectives=objectives, constraints=constraints,
            optimizer=optimizer, optimizer_settings=optimizer_settings, trials=trials, seed=seed,
            latency=spec.latency, execution=checked.execution,
            train_data=splits.train if spec.finetune.epochs > 0 else None, finetune=spec.finetune,
            runs_dir=runs_dir, name=name, resume=resume, progress=progress, entropy=spec.artifact.entropy,
            model_ref=model_ref,
            space_yaml=dump_run_spec(spec), run_info=run_info, task=spec.task, val_batches=spec.data.val_batches,
            batch_size=spec.data.batch_size,
        )


def run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's run.json; a RunError if `run_dir` is not a run directory or the file is not valid JSON."""
    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"'{run_dir}' is not a run directory (no run.json)") from None
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not valid JSON ({err})") from err


def run_spec(run_dir: str | os.PathLike) -> RunSpec:
    """The resolved space a run saved (space.yaml), for resume and export."""
    if run_info(run_dir).get("origin") != "cli":
        raise RunError(f"{run_dir}: started from Python with a user model; rebuild its models with "
                       "autocomp.compress(model, Policy.from_dict(trial['policy']))")
    path = Path(run_dir) / "space.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: missing space.yaml")
    return parse_run_spec(path.read_text(), file=str(path), models=MODELS, datasets=DATASETS)


def resume_run(run_dir: str | os.PathLike, *, trials: int | None, data_dir: str | None,
               progress: bool = True, execution: dict[str, Any] | None = None, log=print) -> SearchResult:
    """Continue a CLI run killed at any moment (or extend a finished one with more trials)."""
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    if info.get("origin") != "cli":
        raise RunError(f"{run_dir}: started from Python with a user model; resume it with "
                       "autocomp.search(..., resume=True)")
    spec = run_spec(run_dir)
    if spec.model.weights and (run_dir / BASELINE).is_file():  # the run's own copy, read as weights only
        spec = replace(spec, model=replace(spec.model, weights=str(run_dir / BASELINE)))
    settings = info["settings"]
    if trials and trials != settings["trials"]:  # remembered, so a plain resume after a kill keeps it
        settings["trials"] = trials
        write_atomic(run_dir / "run.json", json.dumps(info, indent=1) + "\n")
    return run_spec_search(
        spec, optimizer=settings["optimizer"], optimizer_settings=settings.get("optimizer_settings", {}),
        trials=trials or settings["trials"], seed=settings["seed"],
        runs_dir=run_dir.parent, name=run_dir.name, data_dir=data_dir or info["data"]["dir"], resume=True,
        progress=progress, execution=execution, log=log,
    )


def run_task(run_dir: str | os.PathLike) -> Task:
    """The task a run was scored with (run.json's; runs from before tasks: classification)."""
    return get_task(run_info(run_dir).get("task", "classification"))


def finetuned_as_evaluated(run_dir: str | os.PathLike, compressed: nn.Module, model: nn.Module) -> nn.Module:
    """A trial's compressed model fine-tuned exactly as the run's evaluator did (its task, device, precision).

    Returned on the CPU; `model` (the teacher) is left where it is. Without fine-tuning, `compressed` itself.
    """
    spec = run_spec(run_dir)
    if spec.finetune.epochs <= 0:
        return compressed
    device = resolve_device(spec.execution.device)
    teacher = on_device(model, device)
    finetune_as_evaluated(compressed.to(device), load_run_splits(run_dir).train, spec.finetune, teacher=teacher,
                          task=run_task(run_dir), device=device, precision=spec.execution.precision)
    return compressed.cpu()


def load_run_calibration(run_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibration rows (inputs, labels) the run saved, the same ones its evaluations used."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        raise RunError(f"{run_dir}: missing {CALIBRATION}")
    rows = torch.load(path, weights_only=True)
    return rows["inputs"], rows["labels"]


def spec_splits(spec: RunSpec, data_dir: str | None) -> Splits:
    """The train/val/test splits a file describes (the validation carve seeded by its train.seed)."""
    return load_dataset(spec.data.name, data_dir, val_fraction=spec.data.val_fraction, seed=spec.train.seed,
                        **spec.data.options)


def load_run_splits(run_dir: str | os.PathLike) -> Splits:
    """The very splits a CLI run used (fine-tuning, finalize and export read them again)."""
    return spec_splits(run_spec(run_dir), run_info(run_dir)["data"]["dir"])


def load_run_model(run_dir: str | os.PathLike) -> nn.Module:
    """The uncompressed baseline of a CLI run, loaded from its baseline.pt (weights only)."""
    run_dir = Path(run_dir)
    spec = run_spec(run_dir)
    model = build_model(spec.model.name, spec.model.kwargs)
    weights = run_dir / BASELINE
    if not weights.is_file() and spec.model.weights:  # a run from before baseline.pt was always written
        weights = Path(spec.model.weights)
    if not weights.is_file():
        raise RunError(f"{run_dir}: baseline weights '{weights}' are missing")
    _load_weights(model, weights)
    return model.eval()
