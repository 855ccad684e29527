"""Fine-tune a compressed model without undoing its compression, optionally distilling from the original.

Each compressible layer trains through a parametrization that keeps what the artifact stores:
- pruned weights (the prune primitive's `keep_mask`, and every zero of a shared weight) stay zero;
- quantized weights train as latent fp32 weights whose forward pass is their code times the layer's fixed
  scale, with a straight-through gradient (quantization-aware training);
- shared weights train their codebook: each centroid moves by the summed gradient of the weights that use it
  (Deep Compression's trained quantization), the assignment fixed;
- low-rank factors and physically slimmer layers are ordinary (smaller) layers and train as such.
So the artifact keeps its layout (bit widths, scales, codebook sizes, pruned positions); its size may move
by a few bytes where a quantized code becomes 0 or stops being 0, and is measured after fine-tuning.
Activations quantized by `act_bits` pass gradients straight through in training mode. Optional L1 and
group-lasso penalties push weights (or whole output channels) towards zero for a later pruning step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocomp.batches import Data, Pair, batches, is_pair
from autocomp.devices import autocast
from autocomp.early_stop import RULES as EARLY_STOP_RULES
from autocomp.errors import AutocompError
from autocomp.layers import layer_kind, weight_name, weight_of
from autocomp.metrics import torch_threads
from autocomp.packed import CodebookCoding, WeightCoding
from autocomp.schema import integer, non_negative, one_of, optional, positive, setting, unit
from autocomp.schema.rules import MAX_SEED
from autocomp.tasks import CLASSIFICATION, Task

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True, kw_only=True)
class FineTuneSpec:
    """Fine-tuning of each candidate after compression (0 epochs: none), on the training split: `finetune:`.

    An epoch is one pass over the training data, or `steps` batches of it when set (short epochs for the
    search; `autocomp finalize` retrains longer). `schedule: cosine` decays the lr to 0 over all
    planned steps (for longer retraining). `kd_alpha` > 0 distils from the uncompressed model
    at `temperature`. `l1` / `group_lasso` add penalties that push weights (or whole output channels) to zero,
    so the next pruning step (finalize's iterations) removes what they made small. `early_stop` stops weak
    candidates after an epoch (multi-fidelity; trials `pruned`; see autocomp.early_stop).
    """

    epochs: int = setting(0, integer(0, 10_000))
    steps: int | None = setting(None, optional(integer(1)))
    batch_size: int = setting(128, integer(1, 65_536))
    lr: float = setting(1e-4, positive)
    optimizer: str = setting("adam", one_of(OPTIMIZERS, "optimizer"))
    schedule: str = setting("constant", one_of(SCHEDULES, "schedule"))
    kd_alpha: float = setting(0.0, unit)
    temperature: float = setting(4.0, positive)
    seed: int = setting(0, integer(0, MAX_SEED))
    l1: float = setting(0.0, non_negative)  # penalty weights on the compressible layers' weights
    group_lasso: float = setting(0.0, non_negative)
    early_stop: str = setting("none", one_of(EARLY_STOP_RULES, "rule"))
    min_epochs: int = setting(1, integer(1, 10_000))
    eta: int = setting(3, integer(2, 100))
    startup: int = setting(5, integer(1))


DEFAULT_FINETUNE = FineTuneSpec()


class _Masked(nn.Module):
    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("keep", keep)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, w, 0.0)

    def exact(self, w: torch.Tensor) -> torch.Tensor:
        return self.forward(w)


class _FakeQuantized(nn.Module):
    """Forward: the weight's `bits`-bit code times its fixed channel or group scale; backward: identity."""

    def __init__(self, keep: torch.Tensor, coding: WeightCoding) -> None:
        super().__init__()
        self.bits = coding.bits
        self.register_buffer("keep", keep)
        # each weight's scale (per channel: broadcast over a row; group-wise: the weight's own shape), so the
        # trained codes stay on the grid the packed file stores
        self.register_buffer("scale", coding.scales(keep.shape).clone())

    def exact(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits == 1:  # sign codes: zeros only where pruned
            q = torch.where(w >= 0, 1.0, -1.0)
        else:
            qmax = 2 ** (self.bits - 1) - 1
            q = torch.clamp(torch.round(w / self.scale), -qmax, qmax)
        return torch.where(self.keep, q * self.scale, 0.0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        latent = torch.where(self.keep, w, 0.0)
        return latent + (self.exact(w) - latent).detach()


class _Codebook(nn.Module):
    """The weight is codebook[index] where kept, 0 elsewhere; what trains is the codebook."""

    def __init__(self, weight: torch.Tensor, coding: CodebookCoding) -> None:
        super().__init__()
        keep = weight != 0
        index = (weight.detach().reshape(-1, 1) - coding.codebook.reshape(1, -1)).abs().argmin(dim=1)
        self.register_buffer("keep", keep)
        self.register_buffer("index", index.reshape(weight.shape))
        self.initial = coding.codebook.clone()

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return self.initial.clone().to(w.device)  # the stored tensor is the codebook, not the weight

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, codebook[self.index], 0.0)

    def exact(self, codebook: torch.Tensor) -> torch.Tensor:
        return self.forward(codebook)


def _keep_mask(layer: nn.Module) -> torch.Tensor:
    keep = getattr(layer, "keep_mask", None)
    return keep.clone() if keep is not None else torch.ones_like(weight_of(layer), dtype=torch.bool)


def _constrain(model: nn.Module) -> list[nn.Module]:
    """Parametrize every compressible layer's weight; a weight tied across layers stays frozen."""
    layers = [m for m in model.modules() if layer_kind(m) is not None]
    holders: dict[int, int] = {}
    for layer in layers:
        holders[id(weight_of(layer))] = holders.get(id(weight_of(layer)), 0) + 1
    constrained = []
    for layer in layers:
        if holders[id(weight_of(layer))] > 1:  # one Parameter in several layers: keep it exactly as is
            weight_of(layer).requires_grad_(False)
            continue
        coding = getattr(layer, "weight_coding", None)
        if isinstance(coding, CodebookCoding):
            rule: nn.Module = _Codebook(weight_of(layer), coding)
        elif isinstance(coding, WeightCoding):
            rule = _FakeQuantized(_keep_mask(layer), coding)
        else:
            rule = _Masked(_keep_mask(layer))
        # the rule's buffers where the weight is (a model fine-tuned on a GPU)
        parametrize.register_parametrization(layer, weight_name(layer), rule.to(weight_of(layer).device),
                                             unsafe=True)
        constrained.append(layer)
    return constrained


def _release(layers: list[nn.Module]) -> None:
    """Back to plain weights holding exactly the coded values (and the trained codebooks)."""
    for layer in layers:
        name = weight_name(layer)
        rule = getattr(layer.parametrizations, name)[0]
        original = getattr(layer.parametrizations, name).original.detach()
        exact = rule.exact(original)
        parametrize.remove_parametrizations(layer, name, leave_parametrized=True)
        with torch.no_grad():
            weight_of(layer).copy_(exact)
        if isinstance(rule, _Codebook):
            layer.weight_coding = replace(layer.weight_coding, codebook=original.cpu().clone())  # packed on the CPU


def penalty(layers: list[nn.Module], l1: float, group_lasso: float) -> torch.Tensor:
    """The sparsity regulariser: an l1 and a group-lasso term per layer, summed over `layers`.

    Per layer: l1 x mean |w| + group_lasso x (sum over output channels of ||w_channel||_2) / sqrt(numel)
    (group lasso as in Wen et al. 2016), normalised so that one setting suits layers of any size.
    """
    total = torch.zeros((), device=weight_of(layers[0]).device if layers else None)
    for layer in layers:
        w = weight_of(layer)
        if l1:
            total = total + l1 * w.abs().mean()
        if group_lasso:
            total = total + group_lasso * w.reshape(w.shape[0], -1).norm(dim=1).sum() / w.numel() ** 0.5
    return total


def finetune(
    model: nn.Module,
    data: Data,
    spec: FineTuneSpec,
    *,
    teacher: nn.Module | None = None,
    after_epoch: Callable[[int, nn.Module], bool] | None = None,
    task: Task = CLASSIFICATION,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> int:
    """Fine-tune `model` in place for `spec.epochs` epochs (each at most `spec.steps` batches).

    The loss is `task`'s (its distillation loss when spec.kd_alpha > 0, with `teacher`'s outputs as the
    soft targets). `model` (and `teacher`) are already on `device`; each batch is moved there, and the forward
    passes run under autocast at `precision` (fp16 with a gradient scaler, on CUDA). `after_epoch(epoch,
    model)` is called with the model in eval mode after each epoch; returning False stops early.
    Returns the number of epochs run. Seeded by spec.seed: the same call gives the same weights.
    """
    if spec.epochs <= 0:
        return 0
    generator = torch.Generator().manual_seed(spec.seed)
    layers = _constrain(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(trainable, lr=spec.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(trainable, lr=spec.lr)
    use_teacher = teacher is not None and spec.kd_alpha > 0
    where = device or torch.device("cpu")
    # fp16 gradients underflow without loss scaling; the scaler is a no-op when disabled
    scaler = torch.amp.GradScaler(where.type, enabled=precision == "fp16" and where.type == "cuda")
    per_epoch = _batches_per_epoch(data, spec)
    planned = spec.epochs * (min(per_epoch, spec.steps) if spec.steps is not None else per_epoch)
    # cosine: the lr falls to 0 over every planned step (an early stop just ends the curve sooner)
    schedule = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / planned)))
                if spec.schedule == "cosine" else None)
    epochs_run = 0
    try:
        for epoch in range(spec.epochs):
            model.train()
            for batch_inputs, batch_targets in _epoch(data, spec, generator, epoch):
                inputs, targets = batch_inputs.to(where), batch_targets.to(where)
                with autocast(where, precision):
                    out = model(inputs)
                    if use_teacher:
                        with torch.no_grad():
                            soft = teacher(inputs)
                        loss = task.distillation_loss(out, soft, targets, alpha=spec.kd_alpha,
                                                      temperature=spec.temperature)
                    else:
                        loss = task.loss(out, targets)
                if spec.l1 or spec.group_lasso:
                    loss = loss + penalty(layers, spec.l1, spec.group_lasso)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if schedule is not None:
                    schedule.step()
            epochs_run = epoch + 1
            model.eval()
            if after_epoch is not None and epoch + 1 < spec.epochs:
                with torch.no_grad():  # the straight-through weights equal the coded ones up to rounding
                    if not after_epoch(epoch + 1, model):
                        break
    finally:
        _release(layers)
        model.eval()
    return epochs_run


def _batches_per_epoch(data: Data, spec: FineTuneSpec) -> int:
    if is_pair(data):
        return math.ceil(len(data[1]) / spec.batch_size)  # type: ignore[index]
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:  # an iterable dataset's loader: its length is unknown until read
        if spec.steps is None:
            raise AutocompError("fine-tuning on a data source without a length needs finetune.steps "
                                "(batches per epoch)") from None
        return spec.steps


def _epoch(data: Data, spec: FineTuneSpec, generator: torch.Generator, epoch: int) -> Iterator[Pair]:
    """One epoch's training batches, at most `spec.steps`.

    Tensors: a seeded shuffle. A loader: its own batches, the global generator seeded for it (so its shuffle
    repeats) and restored afterwards.
    """
    if is_pair(data):
        x, y = data  # type: ignore[misc]
        order = torch.randperm(len(y), generator=generator)
        for k, start in enumerate(range(0, len(y), spec.batch_size)):
            if spec.steps is not None and k >= spec.steps:
                return
            index = order[start : start + spec.batch_size]
            yield x[index], y[index]
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed * 1_000_003 + epoch)
        yield from batches(data, spec.batch_size, limit=spec.steps)


def finetune_as_evaluated(model: nn.Module, data: Data, spec: FineTuneSpec, *,
                          teacher: nn.Module,
                          after_epoch: Callable[[int, nn.Module], bool] | None = None,
                          task: Task = CLASSIFICATION, device: torch.device | None = None,
                          precision: str = "fp32") -> nn.Module:
    """Fine-tune a candidate exactly as the evaluator does, on one thread.

    One thread, so that any machine (a Ray worker, the export command) computes the very same weights;
    `teacher` is used only when spec.kd_alpha > 0. `after_epoch` only looks (the weights do not depend on
    it), unless it stops the run.
    """
    with torch_threads(1):
        finetune(model, data, spec, teacher=teacher if spec.kd_alpha > 0 else None, after_epoch=after_epoch,
                 task=task, device=device, precision=precision)
    return model


__all__ = ["finetune", "finetune_as_evaluated", "penalty"]
