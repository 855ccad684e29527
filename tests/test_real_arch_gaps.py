"""Issue 17's remaining gaps: N:M pruning, the Params kind, skip on projection shortcuts, Conv1d channels,
diverging dependency analyses, decoder ONNX export and int8 nn.TransformerEncoder."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from autocomp.artifacts import artifact_meta, export_int8, export_onnx, load_packed, pack_model
from autocomp.compress import compress
from autocomp.config import parse_run_spec
from autocomp.errors import AutocompError
from autocomp.int8 import load_int8
from autocomp.layers import PARAMS, layer_kind, weight_name, weight_of
from autocomp.policy import Policy
from autocomp.primitives import Channels, Prune, Quantize, Share, Skip
from autocomp.primitives.channels import analyse
from autocomp.primitives.prune import n_m_mask
from autocomp.testing.nets import AudioConvNet, TokenTransformer
from autocomp.zoo import build_model


def _packed(model: nn.Module, compressed: nn.Module, policy: Policy, x: torch.Tensor,
            tmp_path) -> tuple[int, nn.Module]:
    data = pack_model(compressed, artifact_meta(None, policy, list(x.shape[1:]), x.dtype))
    path = tmp_path / "m.acz"
    path.write_bytes(data)
    return len(data), load_packed(path, model=model)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 24), nn.LayerNorm(24), nn.ReLU(), nn.Linear(24, 6)).eval()


@pytest.mark.parametrize("pattern", ["1:2", "2:4", "1:4", "4:8", "2:8"])
def test_n_m_keeps_exactly_the_n_largest_of_every_m_along_the_input(pattern):
    n, m = map(int, pattern.split(":"))
    model = _mlp()
    policy = Policy.of({"0": [Prune(pattern=pattern)], "3": [Prune(pattern=pattern)]})
    out = compress(model, policy)
    for name in ("0", "3"):
        before, after = weight_of(model.get_submodule(name)), weight_of(out.get_submodule(name))
        cols = before.shape[1]
        for start in range(0, cols, m):
            run_b, run_a = before[:, start:start + m], after[:, start:start + m]
            keep = min(n, run_b.shape[1])
            assert int((run_a != 0).sum(1).max()) <= keep
            # the kept ones are the largest |w| of the run, untouched; the rest are +0.0
            top = run_b.abs().topk(keep, dim=1).values
            kept_sorted = run_a.abs().sort(dim=1, descending=True).values[:, :keep]
            assert torch.equal(top, kept_sorted)
        assert torch.equal(after[after != 0], before[after != 0])


def test_n_m_mask_runs_along_the_given_dim_and_the_short_last_run():
    w = torch.tensor([[5.0, -1.0, 3.0, 2.0, 9.0, -8.0]])  # runs of 4: [5, -1, 3, 2] and the short [9, -8]
    assert n_m_mask(w, 2, 4, 1).tolist() == [[True, False, True, False, True, True]]
    assert n_m_mask(w.t(), 2, 4, 0).t().tolist() == [[True, False, True, False, True, True]]
    ties = torch.ones(1, 4)  # equal scores: the first ones stay
    assert n_m_mask(ties, 2, 4, 1).tolist() == [[True, True, False, False]]


def test_n_m_follows_conv_input_channels_and_conv1d_transposed_storage():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(8, 4, 3)).eval()
    out = compress(conv, Policy.of({"0": [Prune(pattern="2:4")]}))
    w = weight_of(out.get_submodule("0"))  # (out, in, kh, kw): runs of 4 input channels per (out, kh, kw)
    assert int((w.reshape(4, 2, 4, 3, 3) != 0).sum(2).max()) == 2
    gpt = nn.Sequential(transformers.pytorch_utils.Conv1D(6, 8)).eval()  # weight (in=8, out=6)
    out = compress(gpt, Policy.of({"0": [Prune(pattern="2:4")]}))
    w = weight_of(out.get_submodule("0"))
    assert int((w.reshape(2, 4, 6) != 0).sum(1).max()) == 2


def test_n_m_none_is_the_identity_and_pattern_overrides_ratio():
    assert Prune(pattern="none").is_identity() and not Prune(pattern="2:4").is_identity()
    model = _mlp()
    same = compress(model, Policy.of({"0": [Prune(pattern="none")]}))
    assert torch.equal(weight_of(same.get_submodule("0")), weight_of(model.get_submodule("0")))
    a = compress(model, Policy.of({"0": [Prune(pattern="2:4", ratio=0.9)]}))
    b = compress(model, Policy.of({"0": [Prune(pattern="2:4")]}))
    assert torch.equal(weight_of(a.get_submodule("0")), weight_of(b.get_submodule("0")))
    assert float((weight_of(b.get_submodule("0")) == 0).float().mean()) == 0.5


def test_n_m_packed_round_trip_is_exact_and_never_larger(tmp_path):
    model = _mlp()
    x = torch.randn(5, 20)
    base, _ = _packed(model, model, Policy.of({}), x, tmp_path)
    sizes = []
    for pattern in ("4:8", "2:4", "1:4", "1:8"):
        policy = Policy.of({"0": [Prune(pattern=pattern), Quantize(bits=8)], "3": [Prune(pattern=pattern)]})
        out = compress(model, policy)
        size, again = _packed(model, out, policy, x, tmp_path)
        assert torch.equal(again(x), out(x))
        sizes.append(size)
    assert all(s <= base for s in sizes)
    assert sizes[1] <= sizes[0] and sizes[3] <= sizes[2] <= sizes[1]  # sparser patterns: never larger


def test_the_run_file_takes_a_pattern_choice_and_refuses_an_unknown_one():
    doc = """
version: 1
model: {name: user}
data: {name: none}
groups:
  - name: all
    layers: ["type:Linear"]
    primitives:
      prune: {pattern: {choice: ["none", "2:4"]}}
"""
    space = parse_run_spec(doc, file="run.yaml").space
    bound = space.bind(_mlp())
    seen = set()
    import numpy as np
    for seed in range(12):
        policy = Policy.from_params(bound, bound.sample(np.random.default_rng(seed)))
        seen |= {c.pattern for _, cs in policy.layers for c in cs if isinstance(c, Prune)}
    assert seen == {"none", "2:4"}
    with pytest.raises(Exception, match="3:4"):
        parse_run_spec(doc.replace('"2:4"', '"3:4"'), file="run.yaml")


def test_params_kind_reaches_norms_and_embedding_blocks_and_reloads_exactly(tmp_path):
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3)).eval()
    assert layer_kind(vit.vit.embeddings) == PARAMS and weight_name(vit.vit.embeddings) == "position_embeddings"
    assert layer_kind(vit.vit.layernorm) == PARAMS and weight_name(vit.vit.layernorm) == "weight"
    assert layer_kind(vit.vit.layers[0].attention) is None  # attention: heads', not Params
    x = torch.randn(2, 3, 16, 16)
    names = ["vit.embeddings", "vit.layernorm", "vit.layers.0.layernorm_before"]
    for configs in ([Quantize(bits=4)], [Share(bits=3)], [Prune(ratio=0.5)]):
        policy = Policy.of(dict.fromkeys(names, configs))
        out = compress(vit, policy, example=x)
        # the nested patch convolution is not touched by naming its embeddings block
        assert torch.equal(out.vit.embeddings.patch_embeddings.projection.weight,
                           vit.vit.embeddings.patch_embeddings.projection.weight)
        pos = out.vit.embeddings.position_embeddings
        if isinstance(configs[0], Quantize):  # per tensor: one scale, 4-bit codes
            scale = out.vit.embeddings.weight_coding.scale
            assert torch.unique(scale).numel() == 1 and (pos / scale[0]).round().abs().max() <= 7
        if isinstance(configs[0], Share):
            assert torch.unique(pos).numel() <= 8
        size, again = _packed(vit, out, policy, x, tmp_path)
        base, _ = _packed(vit, vit, Policy.of({}), x, tmp_path)
        assert torch.equal(again(x).logits, out(x).logits)
        if not isinstance(configs[0], Prune):
            assert size < base


def test_params_refuses_the_model_itself_and_activation_bits():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * self.gain

    doc = """
version: 1
model: {name: user}
data: {name: none}
groups:
  - name: p
    layers: ["type:Params"]
    primitives:
      quantize: {bits: 4}
"""
    rows = parse_run_spec(doc, file="r.yaml").space.coverage(Scaled())
    assert [r.reason for r in rows if r.layer == ""] == [
        "the model itself holds these parameters; compress names layers inside it"]
    with pytest.raises(AutocompError, match="Params"):
        compress(_mlp(), Policy.of({"1": [Quantize(act_bits=8)]}), calibration=(torch.randn(4, 20), None))


def test_skip_refuses_a_projection_shortcut_by_name_before_compressing():
    torch.manual_seed(0)
    model = build_model("resnet20", {"width": 0.5}).eval()
    from autocomp.primitives.skip import skip_supports

    why = skip_supports(model.get_submodule("layer2.0.shortcut.0"), "layer2.0.shortcut.0", model)
    assert why is not None and "shortcut" in why and "layer2.0.shortcut.0" in why
    assert skip_supports(model.get_submodule("layer2.0.conv2"), "layer2.0.conv2", model) is None
    x = torch.randn(2, 3, 32, 32)
    out = compress(model, Policy.of({"layer2.0.conv2": [Skip(drop=1)], "layer2.1.conv2": [Skip(drop=1)]}), example=x)
    assert out(x).shape == (2, 10)


def test_channels_remove_conv1d_channels_and_keep_a_runnable_model():
    torch.manual_seed(0)
    model = AudioConvNet().eval()
    x = torch.randn(2, 1, 1600)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d)]
    assert analyse(model, x).refused == {}
    for ratio in (0.25, 0.5, 0.75):
        out = compress(model, Policy.of({n: [Channels(ratio=ratio)] for n in convs}), example=x)
        assert out(x).shape == model(x).shape
        assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in model.parameters())


def test_a_diverging_dependency_analysis_is_refused_quickly():
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, use_cache=False)).eval()
    result = analyse(llama, torch.randint(0, 64, (2, 8)))
    assert result.error is not None and "does not converge" in result.error


def test_decoders_export_to_onnx_and_match_onnx_runtime(tmp_path):
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, use_cache=False)).eval()
    x = torch.randint(0, 64, (2, 8))
    assert export_onnx(tmp_path / "llama.onnx", llama, x) > 0  # raises when ONNX Runtime disagrees


def test_transformer_encoder_int8_and_onnx_with_quantized_activations(tmp_path):
    torch.manual_seed(0)
    model = TokenTransformer(encoder_only=True).eval()
    x = torch.randint(0, 128, (4, 16))
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    limited = {"NonDynamicallyQuantizableLinear"}
    policy = Policy.of({n: [Quantize(bits=4, act_bits=32 if type(model.get_submodule(n)).__name__ in limited else 8)]
                        for n in layers})
    out = compress(model, policy, calibration=(x, torch.zeros(4, dtype=torch.long)))
    export_onnx(tmp_path / "m.onnx", out, x)
    export_int8(tmp_path / "m.int8.pt", out, x)
    again = load_int8(str(tmp_path / "m.int8.pt")).module(x)
    assert again.shape == out(x).shape and bool(torch.isfinite(again).all())
