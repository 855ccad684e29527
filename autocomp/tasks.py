"""Tasks: what a model is for. Its training loss, its distillation loss and the metrics it is scored by.

Evaluation, fine-tuning, distillation, baseline training and finalize all go through the run's task, so a
language model is scored by perplexity and a regressor by its squared error exactly where a classifier is
scored by accuracy. Built-ins:

- `classification`: logits (B, C) against int labels (B,), or per position (B, T, C) against (B, T);
  metrics `accuracy` (top-1), `top5_accuracy`, `loss` (cross-entropy).
- `language-model`: next-token logits (B, T, V) against the next tokens (B, T) (labels already shifted, as
  the `text` data source gives them; -100 is ignored); metrics `perplexity` (exp of the mean token
  cross-entropy), `token_accuracy`, `loss`.
- `regression`: outputs against float targets of the same number of elements per row; metrics `mse`,
  `mae`, `loss` (= mse).

A model may return a tensor, tuple, dict or `ModelOutput` (`autocomp.outputs.logits` finds the tensor). A
user's task is a `Task` subclass named in a run file as `task: "pkg.module:attr"` (a Task instance, or a
class or factory returning one) or passed to `autocomp.search(task=...)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from autocomp.batches import Data, batches
from autocomp.devices import autocast
from autocomp.errors import AutocompError
from autocomp.outputs import IGNORE_INDEX, logits, per_position
from autocomp.refs import import_reference, is_reference

Sums = dict[str, tuple[float, float]]  # metric -> (summed value, count) over the batches seen so far


class Task:
    """The base of every task: subclasses set NAME, METRICS and PRIMARY and define `loss` and `batch_sums`.

    `METRICS` maps each metric the task reports to the direction that is better ("maximize" or
    "minimize"); `PRIMARY` is the one a search optimizes and selects on by default. Under `precision`
    bf16/fp16 the outputs `loss` and `batch_sums` receive are half precision: compute in float
    (`.float()`) where it matters.
    """

    NAME: str = "task"
    METRICS: Mapping[str, str] = {}
    PRIMARY: str = ""

    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (fine-tuning, the baseline's training).

        Args:
            output: The model's raw output (a tensor, tuple, dict or ModelOutput; `autocomp.outputs.logits`
                finds the tensor).
            targets: The batch's targets.

        Returns:
            A differentiable scalar.
        """
        raise NotImplementedError

    def batch_sums(self, output: Any, targets: torch.Tensor) -> Sums:
        """What one batch adds to each metric, so that metrics over many batches are exact.

        Args:
            output: The model's raw output for the batch.
            targets: The batch's targets.

        Returns:
            Per metric name, (sum, count); `finish` turns the totals over all batches into the metrics.
        """
        raise NotImplementedError

    def finish(self, totals: Sums) -> dict[str, float]:
        """The metrics from the totals of every batch: each sum over its count, by default.

        Args:
            totals: Per metric, the (sum, count) summed over the batches.

        Returns:
            The metrics by name (NaN for a metric no batch counted).
        """
        return {name: total / count if count else math.nan for name, (total, count) in totals.items()}

    def distillation_loss(self, output: Any, teacher: Any, targets: torch.Tensor, *, alpha: float,
                          temperature: float) -> torch.Tensor:
        """The loss with knowledge distillation from the uncompressed model's `teacher` output.

        The default mixes the task loss with the squared distance to the teacher's outputs; tasks with
        logits use the softened KL divergence instead (Hinton et al. 2015).
        """
        hard = self.loss(output, targets)
        if alpha <= 0:
            return hard
        student = logits(output)
        soft = nn.functional.mse_loss(student, logits(teacher).reshape(student.shape))
        return (1 - alpha) * hard + alpha * soft

    def check(self, output: Any, targets: torch.Tensor) -> str | None:
        """Whether the model's output on a couple of rows can be scored against their targets.

        Args:
            output: The model's raw output for the rows.
            targets: Their targets.

        Returns:
            None when it can; else why not, in one line (the search then stops before it starts).
        """
        return None

    def evaluate(self, model: nn.Module, data: Data, *, batch_size: int = 1000, max_batches: int | None = None,
                 device: torch.device | None = None, precision: str = "fp32") -> dict[str, float]:
        """Every metric of the task for `model` on (inputs, targets), in eval mode and without gradients.

        Args:
            model: The model to score (its mode is restored afterwards), already on `device`.
            data: Inputs and targets as tensors (batched here), or a DataLoader of such batches (streamed:
                never held whole); each batch moves to `device`.
            batch_size: Rows per forward pass of tensors.
            max_batches: Score only the first this many batches (a capped, cheaper evaluation).
            device: Where the model runs (default: the CPU).
            precision: fp32, or bf16 / fp16 under autocast.

        Returns:
            The task's metrics by name.
        """
        totals: Sums = {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for inputs, targets in batches(data, batch_size, limit=max_batches):
                    if device is not None and device.type != "cpu":
                        inputs, targets = inputs.to(device), targets.to(device)
                    with autocast(device or torch.device("cpu"), precision):
                        output = model(inputs)
                    sums = self.batch_sums(output, targets)
                    for name, (total, count) in sums.items():
                        seen = totals.get(name, (0.0, 0.0))
                        totals[name] = (seen[0] + total, seen[1] + count)
        finally:
            model.train(was_training)
        return self.finish(totals)

    def __repr__(self) -> str:
        return f"<task {self.NAME}>"


class Classification(Task):
    """Single-label classification: cross-entropy loss, top-1 and top-5 accuracy."""

    NAME = "classification"
    METRICS = {"accuracy": "maximize", "top5_accuracy": "maximize", "loss": "minimize"}
    PRIMARY = "accuracy"

    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; per-position logits count every position, and labels of -100 are ignored."""
        return nn.functional.cross_entropy(*per_position(logits(output), targets), ignore_index=IGNORE_INDEX)

    def batch_sums(self, output: Any, targets: torch.Tensor) -> Sums:
        """Correct top-1 and top-5 rows and the summed cross-entropy over the labelled rows."""
        scores, labels = per_position(logits(output), targets)
        scored = labels != IGNORE_INDEX
        scores, labels = scores[scored], labels[scored]
        n = float(len(labels))
        top = scores.topk(min(5, scores.shape[-1]), dim=-1).indices
        ce = nn.functional.cross_entropy(scores.float(), labels, reduction="sum") if len(labels) else torch.zeros(())
        return {"accuracy": (float((top[:, 0] == labels).sum()), n),
                "top5_accuracy": (float((top == labels[:, None]).any(dim=1).sum()), n),
                "loss": (float(ce), n)}

    def distillation_loss(self, output: Any, teacher: Any, targets: torch.Tensor, *, alpha: float,
                          temperature: float) -> torch.Tensor:
        """(1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student) on outputs softened by T.

        Per-position logits (B, T, C) with labels (B, T) count every position (a token-level KL for language
        models); labels of -100 are left out of both terms.
        """
        student, labels = per_position(logits(output), targets)
        hard = nn.functional.cross_entropy(student, labels, ignore_index=IGNORE_INDEX)
        if alpha <= 0:
            return hard
        soft_targets = logits(teacher).reshape(student.shape)
        scored = labels != IGNORE_INDEX
        student, soft_targets = student[scored], soft_targets[scored]
        soft = nn.functional.kl_div(nn.functional.log_softmax(student / temperature, dim=-1),
                                    nn.functional.log_softmax(soft_targets / temperature, dim=-1),
                                    reduction="batchmean", log_target=True)
        return (1 - alpha) * hard + alpha * temperature**2 * soft

    def check(self, output: Any, targets: torch.Tensor) -> str | None:
        """The output must hold one score per class for every labelled row (or position)."""
        scores, labels = per_position(logits(output), targets)
        if scores.dim() != 2 or labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
            return (f"classification needs logits (B, C) and integer labels (B,) (or (B, T, C) and (B, T)); "
                    f"the model gives {tuple(logits(output).shape)} for labels {tuple(targets.shape)} "
                    f"of {targets.dtype}")
        scored = labels[labels != IGNORE_INDEX]
        if len(scored) and scores.shape[1] <= int(scored.max()):
            return f"the model gives {scores.shape[1]} scores per row, but the labels reach {int(scored.max())}"
        return None


class LanguageModel(Classification):
    """Causal language modelling: next-token cross-entropy; perplexity and token accuracy.

    The targets are the next tokens (B, T), already shifted against the inputs; -100 marks a position not
    to score (padding).
    """

    NAME = "language-model"
    METRICS = {"perplexity": "minimize", "token_accuracy": "maximize", "loss": "minimize"}
    PRIMARY = "perplexity"

    def batch_sums(self, output: Any, targets: torch.Tensor) -> Sums:
        """Summed token cross-entropy and correct next tokens over the scored positions."""
        sums = super().batch_sums(output, targets)
        return {"loss": sums["loss"], "token_accuracy": sums["accuracy"]}

    def finish(self, totals: Sums) -> dict[str, float]:
        """Mean token cross-entropy, its exponential (the perplexity) and the token accuracy."""
        out = super().finish(totals)
        out["perplexity"] = math.exp(min(out["loss"], 700.0))  # exp overflows past ~709
        return {name: out[name] for name in self.METRICS}

    def check(self, output: Any, targets: torch.Tensor) -> str | None:
        """The output must be next-token logits (B, T, V) for targets (B, T)."""
        scores = logits(output)
        if scores.dim() != 3 or targets.dim() != 2 or scores.shape[:2] != targets.shape:
            return (f"a language model must give logits (B, T, vocabulary) for targets (B, T); it gives "
                    f"{tuple(scores.shape)} for {tuple(targets.shape)}")
        return super().check(output, targets)


class Regression(Task):
    """Regression: mean squared error loss; metrics mse and mae (per element)."""

    NAME = "regression"
    METRICS = {"mse": "minimize", "mae": "minimize", "loss": "minimize"}
    PRIMARY = "mse"

    def _pair(self, output: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = logits(output)
        return prediction.reshape(len(targets), -1).float(), targets.reshape(len(targets), -1).float()

    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error over every element."""
        return nn.functional.mse_loss(*self._pair(output, targets))

    def batch_sums(self, output: Any, targets: torch.Tensor) -> Sums:
        """Summed squared and absolute errors over the batch's elements."""
        prediction, target = self._pair(output, targets)
        n = float(target.numel())
        squared = float(((prediction - target) ** 2).sum())
        return {"mse": (squared, n), "mae": (float((prediction - target).abs().sum()), n), "loss": (squared, n)}

    def check(self, output: Any, targets: torch.Tensor) -> str | None:
        """The output must have as many elements per row as the targets."""
        prediction = logits(output)
        if prediction.numel() != targets.numel() or not targets.is_floating_point():
            return (f"regression needs outputs with as many elements as the float targets; the model gives "
                    f"{tuple(prediction.shape)} for targets {tuple(targets.shape)} of {targets.dtype}")
        return None


TASKS: dict[str, Callable[[], Task]] = {cls.NAME: cls for cls in (Classification, LanguageModel, Regression)}
CLASSIFICATION = Classification()
TaskRef = str | Task


def get_task(task: TaskRef) -> Task:
    """The task a name or reference stands for.

    Args:
        task: A `Task` instance, a built-in name (`TASKS`), or "pkg.module:attr" naming a Task instance or a
            class or factory returning one (modules in the working directory import, as with `python -m`).

    Returns:
        The task.

    Raises:
        AutocompError: The name is unknown, the reference cannot be imported, or it is not a Task.
    """
    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise AutocompError(f"task must be a name or a Task, not {type(task).__name__}")
    if task in TASKS:
        return TASKS[task]()
    if not is_reference(task):
        raise AutocompError(f"unknown task '{task}'; known: {', '.join(TASKS)}, or 'pkg.module:attr'")
    target = import_reference(task, "task")
    made = target() if callable(target) and not isinstance(target, Task) else target
    if not isinstance(made, Task):
        raise AutocompError(f"task '{task}' gives a {type(made).__name__}, not an autocomp.tasks.Task")
    return made


def task_reference(task: TaskRef) -> str:
    """The name `get_task` turns back into `task`: a built-in's name, or "module:Class" of a user's Task."""
    if isinstance(task, str):
        return task
    if type(task).NAME in TASKS and type(task) is TASKS[type(task).NAME]:
        return type(task).NAME
    return f"{type(task).__module__}:{type(task).__qualname__}"


__all__ = ["CLASSIFICATION", "TASKS", "Classification", "LanguageModel", "Regression", "Task", "get_task",
           "task_reference"]
