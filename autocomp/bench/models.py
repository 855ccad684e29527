"""`autocomp bench models`: every primitive and export on the architectures users bring (issue 17's coverage bench).

Models: CNNs, vision transformers, text encoders and decoders from `transformers` configs (tiny sizes, random
init, nothing downloaded; the models return their `ModelOutput`, unwrapped), the zoo's models,
`torch.nn.Transformer` / `nn.TransformerEncoder` classifiers and hand-written nets (a grouped / depthwise / SE /
concatenation CNN, a 1-D conv audio net) from `autocomp.testing.nets`.

One cell per model and primitive, over every layer of the kinds the primitive applies to (`type:` selectors):
- refused: `SearchSpace.coverage` refuses every selected layer (the reason is its most frequent one), or `bind`
  refuses the space of the layers coverage accepted; skip has no coverage hook, so its layers are found by
  compressing each Linear/Conv2d alone and a model where none can be skipped is refused with skip's reason;
- failed: an exception after binding (compress, the forward pass, the packed round trip), or a packed
  reload whose logits are not bit-exact (`torch.equal`);
- works: compressed with a moderately compressive config on the accepted layers, ran, and reloaded from
  the packed bytes (`load_packed` given the uncompressed model) bit-exactly.
Layers coverage refused inside a working cell are listed with their reasons. Exports (one cell each) run on
the prune + quantize model: ONNX (`export_onnx`, checked against PyTorch by ONNX Runtime) and int8
(`export_int8`, loaded back and run); int8 is refused where torch.fx, which PyTorch's int8 path needs, cannot
trace the model. Per model: the fraction of parameter bytes (each tensor once) in the layers each primitive
accepts, their union over prune / quantize / share (the reachable bytes), and the seconds of channel
removal's dependency analysis (`autocomp.primitives.channels.analyse`).
"""

from __future__ import annotations

import collections
import math
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import fx, nn

from autocomp.artifacts import artifact_meta, export_int8, export_onnx, load_packed, pack_model
from autocomp.bench.common import BenchResult, format_table, publish
from autocomp.compress import compress
from autocomp.config import parse_run_spec
from autocomp.errors import AutocompError
from autocomp.int8 import load_int8
from autocomp.layers import layer_kind, module_kind
from autocomp.outputs import logits
from autocomp.policy import Policy
from autocomp.primitives import CONFIGS, Prune, Quantize, Skip
from autocomp.primitives.channels import ANALYSIS_SECONDS, analyse
from autocomp.testing.nets import AudioConvNet, TokenTransformer, grouped_net
from autocomp.zoo import build_model

# moderately compressive settings per primitive (one registered later gets `generic_knobs`)
KNOBS: dict[str, dict[str, Any]] = {
    "heads": {"ratio": 0.5},  # the tiny configs have 2-4 heads: half of them
    "prune": {"ratio": 0.5},
    "quantize": {"bits": 4, "act_bits": 8},
    "share": {"bits": 4},
    "lowrank": {"rank_ratio": 0.25},
    "channels": {"ratio": 0.25},
    "skip": {"drop": 1},
}
MEASURED = ("prune", "quantize", "share", "lowrank")  # the >= 95% works target
REACH_UNION = ("prune", "quantize", "share")
EXPORTS = ("onnx", "int8")
WORKS, REFUSED, FAILED, NA = "works", "refused", "failed", "n/a"
VOCAB, TOKENS = 128, 16


@dataclass(frozen=True)
class ModelCase:
    """One architecture of the bench: how to build it (seeded) and a batch of inputs for it."""

    name: str
    family: str
    kind: str  # "cnn" or "transformer": which family target it counts towards
    build: Callable[[], nn.Module]
    example: Callable[[], torch.Tensor]
    residual: bool = False  # has residual additions (skip's cell is n/a without)
    quick: bool = False  # one of the --quick models
    note: str = ""


def _images(size: int = 32, channels: int = 3) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, TOKENS), generator=torch.Generator().manual_seed(1))


def _audio(channel_dim: bool) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        x = torch.randn(2, 1600, generator=torch.Generator().manual_seed(1))
        return x[:, None] if channel_dim else x
    return make


def _hf(config_name: str, model_name: str, **config: Any) -> Callable[[], nn.Module]:
    """A `transformers` model of a tiny config, random init (seed 0), in eval mode."""
    def build() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        return getattr(transformers, model_name)(getattr(transformers, config_name)(**config)).eval()
    return build


def _zoo(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return build_model(name, kwargs).eval()
    return build


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return factory().eval()
    return build


TEXT = {"vocab_size": VOCAB, "num_labels": 4}
LM = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "use_cache": False}
ENCODER = {**TEXT, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
           "max_position_embeddings": 64}

CASES: tuple[ModelCase, ...] = (
    # CNNs
    ModelCase("resnet-basic", "resnet", "cnn", _hf(
        "ResNetConfig", "ResNetForImageClassification", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
        layer_type="basic", num_labels=10), _images(), residual=True),
    ModelCase("resnet-bottleneck", "resnet", "cnn", _hf(
        "ResNetConfig", "ResNetForImageClassification", embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
        layer_type="bottleneck", num_labels=10), _images(), residual=True),
    ModelCase("zoo-resnet20", "resnet", "cnn", _zoo("resnet20", width=0.5), _images(), residual=True, quick=True),
    ModelCase("mobilenet-v1", "mobilenet", "cnn", _hf(
        "MobileNetV1Config", "MobileNetV1ForImageClassification", image_size=32, depth_multiplier=0.25,
        num_labels=10), _images()),
    ModelCase("mobilenet-v2", "mobilenet", "cnn", _hf(
        "MobileNetV2Config", "MobileNetV2ForImageClassification", image_size=32, depth_multiplier=0.35,
        num_labels=10), _images(), residual=True),
    ModelCase("zoo-mobilenet-v1", "mobilenet", "cnn", _zoo("mobilenet_v1", width=0.25), _images(),
              note="transformers 5 has no MobileNetV3: MobileNet V1/V2 and EfficientNet (V3's SE MBConv) instead"),
    ModelCase("efficientnet", "efficientnet", "cnn", _hf(
        "EfficientNetConfig", "EfficientNetForImageClassification", image_size=32, width_coefficient=0.25,
        depth_coefficient=0.25, hidden_dim=320, num_labels=10), _images(), residual=True),
    ModelCase("regnet", "regnet", "cnn", _hf(
        "RegNetConfig", "RegNetForImageClassification", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
        groups_width=8, num_labels=10), _images(), residual=True),
    ModelCase("convnext", "convnext", "cnn", _hf(
        "ConvNextConfig", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
        num_labels=10),
        _images(), residual=True),
    ModelCase("convnext-v2", "convnext", "cnn", _hf(
        "ConvNextV2Config", "ConvNextV2ForImageClassification", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
        num_labels=10), _images(), residual=True),
    ModelCase("zoo-densenet", "densenet", "cnn", _zoo("densenet"), _images()),
    ModelCase("zoo-shufflenet", "shufflenet", "cnn", _zoo("shufflenet_v1", groups=8, width=0.5), _images(),
              residual=True),
    ModelCase("zoo-squeezenet", "squeezenet", "cnn", _zoo("squeezenet", width=0.5), _images()),
    ModelCase("zoo-lenet5", "lenet", "cnn", _zoo("lenet5"), _images(28, 1)),
    ModelCase("zoo-lenet300", "lenet", "cnn", _zoo("lenet300"), _images(28, 1)),
    ModelCase("grouped-se-concat", "grouped-se-concat", "cnn", lambda: grouped_net(0), _images(16), quick=True),
    ModelCase("audio-conv1d", "audio-conv1d", "cnn", _seeded(AudioConvNet), _audio(True), residual=True,
              quick=True),
    # vision transformers
    ModelCase("vit", "vit", "transformer", _hf(
        "ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=10), _images(),
        residual=True, quick=True),
    ModelCase("deit", "deit", "transformer", _hf(
        "DeiTConfig", "DeiTForImageClassification", image_size=32, patch_size=8, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=10), _images(),
        residual=True),
    ModelCase("swin", "swin", "transformer", _hf(
        "SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
        num_heads=[2, 2], window_size=4, num_labels=10), _images(), residual=True),
    ModelCase("mobilevit", "mobilevit", "transformer", _hf(
        "MobileViTConfig", "MobileViTForImageClassification", image_size=32, patch_size=2,
        hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2,
        num_labels=10), _images(), residual=True),
    ModelCase("levit", "levit", "transformer", _hf(
        "LevitConfig", "LevitForImageClassification", image_size=64, hidden_sizes=[32, 48, 64],
        num_attention_heads=[2, 3, 4], key_dim=[8, 8, 8], depths=[1, 1, 1], attention_ratio=[2, 2, 2],
        mlp_ratio=[2, 2, 2], num_labels=10), _images(64), residual=True),
    # encoders
    ModelCase("bert", "bert", "transformer", _hf("BertConfig", "BertForSequenceClassification", **ENCODER),
              _tokens, residual=True, quick=True),
    ModelCase("roberta", "roberta", "transformer", _hf(
        "RobertaConfig", "RobertaForSequenceClassification", **{**ENCODER, "max_position_embeddings": 66}),
        _tokens, residual=True),
    ModelCase("distilbert", "distilbert", "transformer", _hf(
        "DistilBertConfig", "DistilBertForSequenceClassification", vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2,
        hidden_dim=64, max_position_embeddings=64, num_labels=4), _tokens, residual=True),
    ModelCase("albert", "albert", "transformer", _hf(
        "AlbertConfig", "AlbertForSequenceClassification", **ENCODER, embedding_size=16), _tokens,
        residual=True),
    # decoders
    ModelCase("gpt2", "gpt2", "transformer", _hf(
        "GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0, use_cache=False), _tokens, residual=True, quick=True),
    ModelCase("llama", "llama", "transformer", _hf("LlamaConfig", "LlamaForCausalLM", **LM), _tokens,
              residual=True, quick=True),
    ModelCase("mistral", "mistral", "transformer", _hf("MistralConfig", "MistralForCausalLM", **LM), _tokens,
              residual=True),
    ModelCase("qwen2", "qwen2", "transformer", _hf("Qwen2Config", "Qwen2ForCausalLM", **LM), _tokens,
              residual=True),
    # torch's own transformers
    ModelCase("torch-transformer", "torch-transformer", "transformer", _seeded(TokenTransformer), _tokens,
              residual=True),
    ModelCase("torch-transformer-encoder", "torch-transformer", "transformer",
              _seeded(lambda: TokenTransformer(encoder_only=True)), _tokens, residual=True, quick=True),
    # audio
    ModelCase("wav2vec2", "wav2vec2", "transformer", _hf(
        "Wav2Vec2Config", "Wav2Vec2ForSequenceClassification", hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2),
        conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_labels=4,
        classifier_proj_size=16), _audio(False), residual=True),
)


def primitives_measured() -> list[str]:
    """The primitive columns: the six built-ins, and `heads` where a primitive of that name is registered."""
    names = ["prune", "quantize", "share", "lowrank", "channels"]
    return names + (["heads"] if "heads" in CONFIGS else []) + ["skip"]


def generic_knobs(primitive: str) -> dict[str, Any]:
    """Moderate settings of a primitive the bench has no entry for: a quarter of the way along each compressing knob."""
    out: dict[str, Any] = {}
    for knob, allowed in CONFIGS[primitive].KNOBS.items():
        if allowed.compresses == 0 or allowed.kind is str:
            continue
        span = allowed.high - allowed.low
        value = allowed.low + span * (0.25 if allowed.compresses > 0 else 0.5)
        if allowed.kind is int:
            value = max(int(allowed.low) + (1 if allowed.low_open else 0), math.ceil(value))
        out[knob] = value
    return out


def knobs_of(primitive: str) -> dict[str, Any]:
    """The settings a primitive's cell compresses with."""
    return dict(KNOBS[primitive]) if primitive in KNOBS else generic_knobs(primitive)


def _line(err: BaseException, stage: str = "") -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    return (f"{stage}: " if stage else "") + text[:240]


def _unique_params(modules: Iterable[nn.Module]) -> dict[int, int]:
    """Bytes of each parameter (by id) the modules hold themselves (a tied tensor counted once)."""
    out: dict[int, int] = {}
    for module in modules:  # a parametrized weight (weight norm) is held by its parametrizations
        parametrized = module.parametrizations.parameters() if hasattr(module, "parametrizations") else ()
        for p in (*module.parameters(recurse=False), *parametrized):
            out[id(p)] = p.numel() * p.element_size()
    return out


def _total_bytes(model: nn.Module) -> int:
    return sum(_unique_params(model.modules()).values())


def _fresh(case: ModelCase) -> tuple[nn.Module, torch.Tensor]:
    model = case.build().eval()
    return model, case.example()


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logits(model(x)).detach()


def _space(groups: list[dict[str, Any]]) -> Any:
    """The SearchSpace of `groups`, read as a run file's `groups:` (bench reaches the space through config)."""
    doc = {"version": 1, "model": {"name": "user"}, "data": {"name": "none"}, "groups": groups}
    return parse_run_spec(yaml.safe_dump(doc, sort_keys=False), file="<bench models>").space


def _kinds(model: nn.Module, applies: Iterable[str]) -> list[str]:
    present = {module_kind(m) for m in model.modules()}  # weight-bearing kinds, and attention modules
    return [k for k in applies if k in present]


def coverage(model: nn.Module, x: torch.Tensor, primitive: str) -> tuple[list[str], dict[str, str]]:
    """Layers `primitive` accepts and those it refuses (with reasons), over `type:` selectors of its kinds."""
    kinds = _kinds(model, CONFIGS[primitive].APPLIES_TO)
    if not kinds:
        return [], {}
    knob = next(iter(CONFIGS[primitive].KNOBS))
    value = getattr(CONFIGS[primitive](), knob)
    space = _space([{"name": primitive, "layers": [f"type:{k}" for k in kinds],
                     "primitives": {primitive: {knob: value}}}])
    rows = space.coverage(model, example=x)
    ok = [r.layer for r in rows if r.reason is None]
    return ok, {r.layer: r.reason for r in rows if r.reason is not None}


def _policy(model: nn.Module, x: torch.Tensor, primitive: str, layers: list[str]) -> Policy:
    """The cell's policy, through the real path: a space over `layers` bound to the model (refusals raise)."""
    modules = dict(model.named_modules())
    knobs = knobs_of(primitive)
    limits = CONFIGS[primitive].KIND_LIMITS
    groups: dict[tuple[str, ...], list[str]] = {}
    for layer in layers:  # knobs a layer kind takes at their default only are left out for it
        module = modules[layer]
        held = tuple(k for k in knobs if (limits.get(k, {}).get(type(module).__name__)
                                          or limits.get(k, {}).get(layer_kind(module) or "")))
        groups.setdefault(held, []).append(layer)
    spec = [{"name": f"g{i}", "layers": names,
             "primitives": {primitive: {k: v for k, v in knobs.items() if k not in held}}}
            for i, (held, names) in enumerate(groups.items())]
    bound = _space(spec).bind(model, example=x)
    return Policy.from_params(bound, bound.sample(np.random.default_rng(0)))


def skippable(model: nn.Module, x: torch.Tensor) -> tuple[list[str], collections.Counter]:
    """The Linear/Conv2d layers skip removes a residual branch at (each tried alone), and why the others are not."""
    layers = [n for n, m in model.named_modules() if layer_kind(m) in CONFIGS["skip"].APPLIES_TO]
    ok, why = [], collections.Counter()
    for layer in layers:
        try:
            compress(model, Policy.of({layer: [Skip(drop=1)]}), example=x)
            ok.append(layer)
        except AutocompError as err:
            reason = _line(err)
            if "torch.fx can trace" in reason:  # the same for every layer
                why[reason] += len(layers) - layers.index(layer)
                break
            why[reason.replace(f"'{layer}'", "'<layer>'")] += 1
        except Exception as err:  # skip crashed instead of refusing: a failure, reported as such
            why[f"FAILED {_line(err)}"] += 1
    return ok, why


def round_trip(model: nn.Module, compressed: nn.Module, policy: Policy, x: torch.Tensor,
               out: torch.Tensor, folder: Path) -> tuple[int, bool, float]:
    """Pack, reload (given the uncompressed model) and compare: (packed bytes, bit-exact, max difference)."""
    data = pack_model(compressed, artifact_meta(None, policy, list(x.shape[1:]), x.dtype))
    path = folder / "cell.acz"
    path.write_bytes(data)
    again = _logits(load_packed(path, model=model), x)
    exact = again.shape == out.shape and torch.equal(again, out)
    diff = float((again - out).abs().max()) if again.shape == out.shape else math.inf
    return len(data), exact, diff


def run_cell(model: nn.Module, x: torch.Tensor, primitive: str, layers: list[str], refused: dict[str, str],
             base_bytes: int, folder: Path) -> dict[str, Any]:
    """One model x primitive cell (see the module docstring)."""
    cell: dict[str, Any] = {"layers_ok": len(layers), "layers_refused": len(refused)}
    if refused:
        cell["refusals"] = dict(collections.Counter(refused.values()))
    if not layers:
        reason = collections.Counter(refused.values()).most_common(1)[0][0] if refused else (
            f"no {'/'.join(CONFIGS[primitive].APPLIES_TO)} layer")
        return {**cell, "status": REFUSED, "reason": reason}
    try:
        policy = _policy(model, x, primitive, layers)
    except AutocompError as err:
        return {**cell, "status": REFUSED, "reason": _line(err, "bind")}
    stage = "compress"
    try:
        start = time.perf_counter()
        compressed = compress(model, policy, example=x, calibration=(x, torch.zeros(len(x), dtype=torch.long)))
        stage = "forward"
        out = _logits(compressed, x)
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(_logits(model, x)).all()):
            raise AutocompError("the compressed model's logits are not finite (NaN or inf)")
        stage = "packed round trip"
        size, exact, diff = round_trip(model, compressed, policy, x, out, folder)
    except Exception as err:
        return {**cell, "status": FAILED, "reason": _line(err, stage), "trace": traceback.format_exc()[-1500:]}
    params = sum(_unique_params(compressed.modules()).values())
    cell.update(packed_ratio=size / base_bytes, param_bytes_ratio=params / _total_bytes(model), exact=exact,
                seconds=time.perf_counter() - start)
    if not exact:
        return {**cell, "status": FAILED, "reason": f"packed reload not bit-exact (max difference {diff:.3g})"}
    return {**cell, "status": WORKS}


def export_cells(model: nn.Module, x: torch.Tensor, layers: list[str], folder: Path) -> dict[str, dict[str, Any]]:
    """ONNX and int8 export cells of the prune + quantize model (prune 0.5, 4-bit weights, 8-bit inputs)."""
    modules = dict(model.named_modules())
    limited = Quantize.KIND_LIMITS["act_bits"]
    policy = Policy.of({n: [Prune(ratio=0.5), Quantize(
        bits=4, act_bits=32 if (type(modules[n]).__name__ in limited or layer_kind(modules[n]) in limited) else 8)]
        for n in layers})
    try:
        compressed = compress(model, policy, example=x, calibration=(x, torch.zeros(len(x), dtype=torch.long)))
    except Exception as err:
        return {e: {"status": FAILED, "reason": _line(err, "prune+quantize compress")} for e in EXPORTS}
    cells: dict[str, dict[str, Any]] = {}
    try:
        size = export_onnx(folder / "m.onnx", compressed, x)
        cells["onnx"] = {"status": WORKS, "bytes": size}
    except Exception as err:
        cells["onnx"] = {"status": FAILED, "reason": _line(err)}
    try:
        fx.symbolic_trace(compressed)
    except Exception as err:
        cells["int8"] = {"status": REFUSED, "reason": _line(err, "torch.fx (PyTorch's int8 path) cannot trace it")}
        return cells
    try:
        size, engine = export_int8(folder / "m.int8.pt", compressed, x)
        out = load_int8(str(folder / "m.int8.pt")).module(x)
        if logits(out).shape != _logits(compressed, x).shape:
            raise AutocompError(f"the int8 model's logits have shape {list(logits(out).shape)}")
        cells["int8"] = {"status": WORKS, "bytes": size, "engine": engine}
    except Exception as err:
        cells["int8"] = {"status": FAILED, "reason": _line(err)}
    return cells


def measure(case: ModelCase, columns: list[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every cell, the reach fractions and the analysis time of one model: its results row."""
    start = time.perf_counter()
    model, x = _fresh(case)
    ref = _logits(model, x)
    total = _total_bytes(model)
    base_bytes = len(pack_model(model, artifact_meta(None, Policy.of({}), list(x.shape[1:]), x.dtype)))
    analysis = analyse(model, x)  # cached: coverage below reuses it
    row: dict[str, Any] = {"model": case.name, "family": case.family, "kind": case.kind,
                           "params": sum(p.numel() for p in model.parameters()), "param_bytes": total,
                           "output_shape": list(ref.shape), "analysis_s": analysis.seconds,
                           "analysis_error": analysis.error, "cells": {}, "reach": {}}
    if case.note:
        row["note"] = case.note
    owned = {name: _unique_params([m]) for name, m in model.named_modules()}
    reached: dict[str, set[int]] = {}
    with tempfile.TemporaryDirectory(prefix="autocomp-bench-models-") as tmp:
        folder = Path(tmp)
        for primitive in columns:
            if primitive == "skip":
                layers, why = skippable(model, x)
                refused = {} if layers else {f"#{i}": r for i, r in enumerate(why.elements())}
                if not layers and not case.residual:
                    row["cells"]["skip"] = {"status": NA, "reason": "no residual branch",
                                            "refusals": dict(why)}
                    continue
                cell = run_cell(model, x, "skip", layers, refused, base_bytes, folder)
                if layers:
                    cell["not_skippable"] = dict(why)
                    cell["reach_bytes"] = 1 - cell.get("param_bytes_ratio", 1.0)
            else:
                layers, refused = coverage(model, x, primitive)
                reached[primitive] = {i for n in layers for i in owned[n]}
                row["reach"][primitive] = sum(owned_bytes(owned, layers).values()) / total
                cell = run_cell(model, x, primitive, layers, refused, base_bytes, folder)
            row["cells"][primitive] = cell
            log(f"  {case.name} {primitive}: {cell['status']}" + (f" ({cell['reason']})" if "reason" in cell else ""))
        union = set().union(*(reached.get(p, set()) for p in REACH_UNION))
        sizes = {i: b for d in owned.values() for i, b in d.items()}
        row["reach"]["union"] = sum(sizes[i] for i in union) / total
        both = [n for n in coverage(model, x, "prune")[0] if n in set(coverage(model, x, "quantize")[0])]
        row["cells"].update(export_cells(model, x, both, folder))
    for name in (*columns, *EXPORTS):
        row[name] = cell_text(row["cells"][name])
    row["reachable"] = row["reach"]["union"]
    row["seconds"] = time.perf_counter() - start
    return row


def owned_bytes(owned: dict[str, dict[int, int]], layers: list[str]) -> dict[int, int]:
    """The parameters (id -> bytes, each once) the named layers hold themselves."""
    out: dict[int, int] = {}
    for layer in layers:
        out.update(owned[layer])
    return out


def cell_text(cell: dict[str, Any]) -> str:
    """A cell in the table: its status, with the accepted / selected layer count where some were refused."""
    text = cell["status"]
    if cell["status"] == WORKS and cell.get("layers_refused"):
        text += f" {cell['layers_ok']}/{cell['layers_ok'] + cell['layers_refused']}"
    if no_effect(cell):
        text += " (no effect)"
    return text


def no_effect(cell: dict[str, Any]) -> bool:
    """A working cell that left the packed file and the parameters as large as they were."""
    return cell["status"] == WORKS and cell.get("packed_ratio", 0.0) >= 1.0 and cell.get("param_bytes_ratio",
                                                                                           0.0) >= 1.0


def _channels_works(row: dict[str, Any], name: str) -> bool:
    """Works and removed parameters (channel removal that only met no-op layers did nothing)."""
    cell = row["cells"].get(name)
    return bool(cell) and cell["status"] == WORKS and cell.get("param_bytes_ratio", 1.0) < 1.0


def summarise(rows: list[dict[str, Any]], columns: list[str]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Per column: cells that work / are refused / failed / n/a; and each refusal reason with its cells."""
    table, reasons = [], collections.defaultdict(list)
    for name in (*columns, *EXPORTS):
        counts = collections.Counter(r["cells"][name]["status"] for r in rows)
        judged = counts[WORKS] + counts[REFUSED] + counts[FAILED]
        table.append({"column": name, WORKS: counts[WORKS], REFUSED: counts[REFUSED], FAILED: counts[FAILED],
                      NA: counts[NA], "works_share": counts[WORKS] / judged if judged else None,
                      "no_effect": sum(no_effect(r["cells"][name]) for r in rows)})
        for r in rows:
            cell = r["cells"][name]
            if cell["status"] in (REFUSED, FAILED):
                reasons[f"{name} {cell['status']}: {cell['reason']}"].append(r["model"])
            for why in cell.get("refusals", {}) if cell["status"] == WORKS else ():
                reasons[f"{name} layers refused: {why}"].append(r["model"])
    return table, dict(reasons)


def add_targets(result: BenchResult, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """The issue's targets, as they fall."""
    table, _ = summarise(rows, columns)
    by = {t["column"]: t for t in table}
    result.target("failed_cells", sum(t[FAILED] for t in table), "==", 0)
    for name in MEASURED:
        result.target(f"works_share_{name}", by[name]["works_share"] or 0.0, ">=", 0.95)
    for kind, label, names in (("cnn", "channels_cnn_families", ["channels"]),
                               ("transformer", "heads_or_channels_transformer_families",
                                ["heads", "channels"] if "heads" in columns else ["channels"])):
        families: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in rows:
            if r["kind"] == kind:
                families[r["family"]].append(r)
        works = [f for f, rs in families.items() if all(any(_channels_works(r, n) for n in names) for r in rs)]
        result.target(label, len(works), "==", len(families))
        result.targets[label].update(families=sorted(families), working=sorted(works))
    inexact = [f"{r['model']}/{p}" for r in rows for p, c in r["cells"].items() if c.get("exact") is False]
    result.target("packed_not_bit_exact", len(inexact), "==", 0)
    result.targets["packed_not_bit_exact"]["cells"] = inexact
    worst = min(rows, key=lambda r: r["reachable"])
    result.target("min_reachable_bytes", worst["reachable"], ">=", 0.99)
    result.targets["min_reachable_bytes"]["model"] = worst["model"]
    slowest = max(rows, key=lambda r: r["analysis_s"])
    result.target("slowest_analysis_s", slowest["analysis_s"], "<", ANALYSIS_SECONDS)
    result.targets["slowest_analysis_s"]["model"] = slowest["model"]


def run_models(cases: Iterable[ModelCase], runs_dir: str = "runs", *, quick: bool = False,
               log: Callable[[str], None] = print) -> BenchResult:
    """Measure `cases` and publish the table, the per-column summary, the refusals and the targets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # light on shared cores; every number here is a count, not a timing
    start = time.perf_counter()
    columns = primitives_measured()
    rows = []
    try:
        for case in cases:
            log(f"{case.name}:")
            rows.append(measure(case, columns, log))
    finally:
        torch.set_num_threads(threads)
    table, reasons = summarise(rows, columns)
    result = BenchResult("models", {
        "quick": quick, "models": len(rows), "primitives": columns, "exports": list(EXPORTS),
        "knobs": {p: knobs_of(p) for p in columns}, "threads": 1, "summary": table, "refusals": reasons,
        "wall_seconds": time.perf_counter() - start,
        "notes": ["transformers has no MobileNetV3 here: MobileNet V1/V2 (HF and zoo) and EfficientNet stand in",
                  "reach: parameter bytes in the layers a primitive accepts (each tensor once) / all parameter "
                  "bytes; skip's is the bytes its branch removal takes out",
                  "norms, position embeddings, cls tokens and layer scales are reached as Params layers (one "
                  "tensor each is coded: a norm's bias stays fp32, as a Linear's does)",
                  "channels counts for a family where it works on each of its models and removes parameters"]})
    result.rows = rows
    add_targets(result, rows, columns)
    print(format_table(table, ["column", WORKS, REFUSED, FAILED, NA, "works_share", "no_effect"]))
    print("refusals and failures (cells):")
    for why, models in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(models):3d}  {why}  [{', '.join(models[:6])}{' ...' if len(models) > 6 else ''}]")
    print(f"wall time {result.settings['wall_seconds']:.0f} s")
    return publish(result, ["model", "family", "params", *columns, *EXPORTS, "reachable", "analysis_s", "seconds"],
                   runs_dir)


def main(quick: bool = False, data_dir: str | None = None, runs_dir: str = "runs") -> BenchResult:
    """Run the bench (`quick`: one model per family group); `data_dir` is unused (no data is read)."""
    del data_dir
    return run_models([c for c in CASES if c.quick or not quick], runs_dir, quick=quick)


__all__ = ["CASES", "ModelCase", "coverage", "main", "measure", "primitives_measured", "run_models"]
