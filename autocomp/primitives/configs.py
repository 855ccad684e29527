"""Frozen configs of the compression primitives, and the range each knob allows.

Pure Python (no torch): the space loader validates against `KNOBS`, and policies hold these objects.
`STAGES` is the fixed order in which `compress` applies primitives to a layer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

# the primitives that act on weights element by element take every kind (autocomp.layers.KINDS); the
# attention kind is MultiheadAttention's packed in_proj_weight
ELEMENTWISE_KINDS = ("Linear", "Conv2d", "Conv1d", "ConvTranspose2d", "Conv1D", "Embedding", "MultiheadAttention",
                     "Params")


@dataclass(frozen=True, kw_only=True)
class KnobRange:
    """What values a primitive accepts for one knob (a search range must stay inside it)."""

    kind: type  # int, float, or str (categorical: the allowed names are `extra`)
    low: float = 0.0
    high: float = 0.0
    low_open: bool = False
    high_open: bool = False
    extra: tuple[Any, ...] = ()  # allowed values outside [low, high], e.g. 32 bits = "keep fp32"
    # +1: a larger value compresses more (a pruning ratio); -1: a smaller one does (bits, rank); 0: neither
    compresses: int = 0

    def allows(self, value: Any) -> bool:
        """Whether `value` is of this knob's kind and inside its range (or one of `extra`)."""
        if self.kind is str:
            return isinstance(value, str) and value in self.extra
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if value in self.extra:
            return True
        if self.kind is int and int(value) != value:
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        """The allowed values in words, e.g. "float in [0, 1)", for error messages."""
        if self.kind is str:
            return f"one of {list(self.extra)}"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        text = f"{self.kind.__name__} in {lo}{self.low:g}, {self.high:g}{hi}"
        return text + (f" or one of {list(self.extra)}" if self.extra else "")


@dataclass(frozen=True, kw_only=True)
class PrimitiveConfig:
    """Base of every primitive config. Subclasses set NAME and KNOBS."""

    NAME: ClassVar[str] = ""
    KNOBS: ClassVar[dict[str, KnobRange]] = {}
    APPLIES_TO: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d")  # layer kinds (autocomp.layers.KINDS)
    # knob -> {layer kind or class name: why}: on those layers the knob must keep its default (no effect)
    KIND_LIMITS: ClassVar[dict[str, dict[str, str]]] = {}

    def is_identity(self) -> bool:
        """Whether applying this config leaves the layer as it is (compress then skips it)."""
        raise NotImplementedError

    def knobs(self) -> dict[str, Any]:
        """The config's knob values by name (what a policy's dict form holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class Channels(PrimitiveConfig):
    """Structured pruning: remove the `ratio` fraction of a layer's output channels (filters), physically.

    Dependent layers (the next layer's inputs, BatchNorm, residual additions, concatenations) shrink with
    it. `criterion` ranks channels: l1 / l2 weight norm, bn_scale (network slimming: |gamma| of the
    following BatchNorm) or taylor (first-order |w * dL/dw|, needs calibration data). The kept count is
    rounded to a multiple of `round_to`. Applied to the whole model at once (a dependency graph), first.
    Takes Conv1d layers (1-D audio nets) as it takes Conv2d ones.
    """

    NAME: ClassVar[str] = "channels"
    APPLIES_TO: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d", "Conv1d")
    KNOBS: ClassVar[dict[str, KnobRange]] = {
        "ratio": KnobRange(kind=float, low=0.0, high=1.0, high_open=True, compresses=1),
        "criterion": KnobRange(kind=str, extra=("l1", "l2", "bn_scale", "taylor")),
        "round_to": KnobRange(kind=int, low=1, high=256),
    }
    ratio: float = 0.0
    criterion: str = "l1"
    round_to: int = 1

    def is_identity(self) -> bool:
        """Identity at ratio 0: no channel is removed."""
        return self.ratio <= 0.0


@dataclass(frozen=True, kw_only=True)
class LowRank(PrimitiveConfig):
    """Low-rank factorisation of a Linear or Conv2d layer into two or three smaller ones.

    Truncated SVD of a Linear (or 1x1 conv) layer; for a kxk Conv2d, Tucker-2 (1x1 -> kxk core -> 1x1) or
    spatial SVD (kx1 then 1xk).

    Rank = the smaller of ceil(rank_ratio * full rank) and the rank keeping `energy` of the sum of squared
    singular values. `method` auto picks SVD for Linear/1x1 and Tucker-2 for kxk. Skipped (the layer is
    left whole) where the factors would not hold fewer weights.
    """

    NAME: ClassVar[str] = "lowrank"
    KNOBS: ClassVar[dict[str, KnobRange]] = {
        "rank_ratio": KnobRange(kind=float, low=0.0, high=1.0, low_open=True, compresses=-1),
        "energy": KnobRange(kind=float, low=0.0, high=1.0, low_open=True, compresses=-1),
        "method": KnobRange(kind=str, extra=("auto", "svd", "tucker2", "spatial")),
    }
    rank_ratio: float = 1.0
    energy: float = 1.0
    method: str = "auto"

    def is_identity(self) -> bool:
        """Identity when neither rank_ratio nor energy truncates (both 1)."""
        return self.rank_ratio >= 1.0 and self.energy >= 1.0


@dataclass(frozen=True, kw_only=True)
class Skip(PrimitiveConfig):
    """Residual-branch removal: a ResNet block becomes its shortcut.

    With `drop` = 1, the branch this layer ends (its output, through single-use ops such as its BatchNorm,
    reaches an addition with a shortcut) is removed from the network, and the addition gives the shortcut
    alone. Applied to the whole model at once (its torch.fx graph), right after channel removal; later
    primitives skip the removed layers.
    """

    NAME: ClassVar[str] = "skip"
    KNOBS: ClassVar[dict[str, KnobRange]] = {"drop": KnobRange(kind=int, low=0, high=1, compresses=1)}
    drop: int = 0

    def is_identity(self) -> bool:
        """Identity unless `drop` is set."""
        return not self.drop


@dataclass(frozen=True, kw_only=True)
class Substitute(PrimitiveConfig):
    """An efficient block in place of one Conv2d.

    `dwsep` (MobileNet: depthwise kxk with `multiplier` filters per input channel, then 1x1), `fire`
    (SqueezeNet: 1x1 squeeze to ceil(squeeze * in) channels, then 1x1 and kxk expands, `expand3` of the
    outputs on the kxk one), `shuffle` (ShuffleNet: a 1x1 conv as a grouped 1x1 conv of `groups` groups and
    a channel shuffle). "none" keeps the layer.
    """

    NAME: ClassVar[str] = "substitute"
    APPLIES_TO: ClassVar[tuple[str, ...]] = ("Conv2d",)
    KNOBS: ClassVar[dict[str, KnobRange]] = {
        "block": KnobRange(kind=str, extra=("none", "dwsep", "fire", "shuffle")),
        "multiplier": KnobRange(kind=int, low=1, high=64, compresses=-1),
        "squeeze": KnobRange(kind=float, low=0.0, high=1.0, low_open=True, compresses=-1),
        "expand3": KnobRange(kind=float, low=0.0, high=1.0, compresses=-1),
        "groups": KnobRange(kind=int, low=1, high=64, compresses=1),
    }
    block: str = "none"
    multiplier: int = 1
    squeeze: float = 0.25
    expand3: float = 0.5
    groups: int = 2

    def is_identity(self) -> bool:
        """Identity when `block` is "none"."""
        return self.block == "none"


@dataclass(frozen=True, kw_only=True)
class Prune(PrimitiveConfig):
    """Unstructured pruning: zero the `ratio` fraction of a layer's weights with the lowest scores.

    score magnitude = |w|; lamp = LAMP (Lee et al. 2021), |w|^2 over the sum of the squares of all weights
    at least as large, which makes scores comparable across layers. scope layer prunes each layer to its
    own ratio; global pools every layer whose policy says global and prunes `ratio` of the pool by one
    threshold (with lamp, the per-layer amounts then follow from the scores).

    pattern "N:M" (semi-structured sparsity, e.g. 2:4 as sparse tensor cores run it): in every run of M
    consecutive weights along the layer's input dimension the N largest |w| are kept and the rest zeroed
    (ties: the first); a last, shorter run of r weights keeps min(N, r). The pattern fixes the amount
    (1 - N/M), so `ratio`, `score` and `scope` are ignored while it is set; "none" prunes by `ratio`.
    """

    NAME: ClassVar[str] = "prune"
    APPLIES_TO: ClassVar[tuple[str, ...]] = ELEMENTWISE_KINDS
    KNOBS: ClassVar[dict[str, KnobRange]] = {
        "ratio": KnobRange(kind=float, low=0.0, high=1.0, high_open=True, compresses=1),
        "score": KnobRange(kind=str, extra=("magnitude", "lamp")),
        "scope": KnobRange(kind=str, extra=("layer", "global")),
        "pattern": KnobRange(kind=str, extra=("none", "1:2", "2:4", "1:4", "4:8", "2:8", "1:8")),
    }
    ratio: float = 0.0
    score: str = "magnitude"
    scope: str = "layer"
    pattern: str = "none"

    def is_identity(self) -> bool:
        """Identity at ratio 0 without a pattern: no weight is zeroed."""
        return self.ratio <= 0.0 and self.pattern == "none"

    def n_m(self) -> tuple[int, int] | None:
        """(N, M) of the pattern, or None for "none"."""
        if self.pattern == "none":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


@dataclass(frozen=True, kw_only=True)
class Share(PrimitiveConfig):
    """Weight sharing (Deep Compression): weights become indices into a codebook of 2^bits centroids.

    K-means of a layer's nonzero weights into 2^bits centroids, linearly initialised. 32 = off. With
    `tie` = 1, layers whose weights have the same shape and that also say tie = 1 share one weight tensor
    (cross-layer tying: the mean of their weights, stored once in the packed file); a fine-tune then trains
    it as one.
    """

    NAME: ClassVar[str] = "share"
    APPLIES_TO: ClassVar[tuple[str, ...]] = ELEMENTWISE_KINDS
    KNOBS: ClassVar[dict[str, KnobRange]] = {
        "bits": KnobRange(kind=int, low=1, high=8, extra=(32,), compresses=-1),
        "tie": KnobRange(kind=int, low=0, high=1, compresses=1),
    }
    bits: int = 32
    tie: int = 0

    def is_identity(self) -> bool:
        """Identity at 32 bits without tying."""
        return self.bits >= 32 and not self.tie


@dataclass(frozen=True, kw_only=True)
class Quantize(PrimitiveConfig):
    """Symmetric weight quantization to `bits`, with optional fake-quantized activations.

    Bits: 1 = sign x scale; 2 = ternary {-s, 0, s}; 32 keeps fp32. Per output channel or per tensor;
    `act_bits` < 32 fake-quantizes the layer's input with a range calibrated on sample data. On a layer
    whose weights are shared (a k-means codebook) the codebook indices already are the weight code: `bits`
    is then ignored and `act_bits` still applies. A Params tensor (a norm's gain, position embeddings) is
    always quantized per tensor: per-channel scales would cost as much as its values.

    `group_size` > 0 (e.g. 32, 64, 128; 0 = off) gives group-wise scales, as GPTQ / AWQ / NNCF group
    quantization does: each output channel's weights along its input dimension (a convolution's in x kh x
    kw fan-in in memory order; an Embedding row's embedding dim; the columns of `transformers`' Conv1D,
    stored (in, out)) are cut into runs of `group_size` consecutive weights, the last possibly shorter, and
    each run has its own fp32 scale (stored in the packed file, so counted in the size). It overrides
    `per_channel`; a group as long as the input dimension or longer is per-channel quantization (for Conv1D:
    one scale per output column). 1 and 2 bits scale per group as they do per channel; pruned zeros stay
    zero; a shared layer and a Params tensor ignore it.
    """

    NAME: ClassVar[str] = "quantize"
    APPLIES_TO: ClassVar[tuple[str, ...]] = ELEMENTWISE_KINDS
    KIND_LIMITS: ClassVar[dict[str, dict[str, str]]] = {"act_bits": {
        "Embedding": "an Embedding's input is token indices, not a float tensor",
        "MultiheadAttention": "attention takes three inputs (query, key, value); quantize its in-projection's "
                              "weights with bits",
        "NonDynamicallyQuantizableLinear": "MultiheadAttention reads its out_proj's weight and never calls it",
        "Params": "a Params module (a norm, an embeddings block) is quantized in its own tensor, not its input",
    }}
    KNOBS: ClassVar[dict[str, KnobRange]] = {
        "bits": KnobRange(kind=int, low=1, high=8, extra=(32,), compresses=-1),
        "per_channel": KnobRange(kind=int, low=0, high=1),
        # 0 (off) is not the end of a monotone scale: neither direction is "more compressive"
        "group_size": KnobRange(kind=int, low=0, high=65_536),
        "act_bits": KnobRange(kind=int, low=2, high=8, extra=(32,), compresses=-1),
    }
    bits: int = 32
    per_channel: int = 1
    group_size: int = 0
    act_bits: int = 32

    def is_identity(self) -> bool:
        """Identity when both weights and activations stay at 32 bits."""
        return self.bits >= 32 and self.act_bits >= 32


# the order compress() applies them in: remove channels across the model first (shapes change everywhere;
# the dependency graph needs every block, removed ones included, to couple residual widths), then whole
# branches, then swap in efficient blocks and factorise (shapes change within a layer), zero, cluster, and
# finally round
# (a list: autocomp.primitives.register_primitive inserts new primitives)
STAGES: list[type[PrimitiveConfig]] = [Channels, Skip, Substitute, LowRank, Prune, Share, Quantize]
CONFIGS: dict[str, type[PrimitiveConfig]] = {cls.NAME: cls for cls in STAGES}
