"""Layer kinds beyond Linear/Conv2d for prune / quantize / share, and model outputs beyond a logits tensor."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import transformers
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.pytorch_utils import Conv1D

import autocomp
from autocomp.artifacts import artifact_meta, load_packed, pack_model
from autocomp.errors import AutocompError, SpaceError
from autocomp.finetune import FineTuneSpec, finetune
from autocomp.layers import layer_kind, weight_of
from autocomp.metrics import accuracy
from autocomp.outputs import logits
from autocomp.packed import load_into, pack
from autocomp.testing.tiny import fast_latency


class Attention(nn.Module):
    """Self-attention over a sequence, mean-pooled, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


def _conv1d():
    return nn.Sequential(nn.Conv1d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 10, 4)), torch.randn(8, 3, 12)


def _convt():
    return nn.Sequential(nn.ConvTranspose2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 4)), torch.randn(8, 3, 4, 4)


def _embedding():
    return nn.Sequential(nn.Embedding(40, 16), nn.Flatten(), nn.Linear(16 * 6, 4)), torch.randint(0, 40, (8, 6))


def _conv1d_gpt2():
    return nn.Sequential(Conv1D(32, 16), nn.ReLU(), nn.Linear(32, 4)), torch.randn(8, 5, 16)


def _attention():
    return Attention(), torch.randn(8, 6, 16)


KINDS = {"Conv1d": (_conv1d, "0"), "ConvTranspose2d": (_convt, "0"), "Embedding": (_embedding, "0"),
         "Conv1D": (_conv1d_gpt2, "0"), "MultiheadAttention": (_attention, "attn")}


def _build(kind):
    torch.manual_seed(0)
    factory, layer = KINDS[kind]
    model, x = factory()
    return model.eval(), x, layer


def _packed_size(model, policy):
    return len(pack(autocomp.compress(model, policy)))


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_is_selected_by_type(kind):
    model, _, layer = _build(kind)
    assert layer_kind(model.get_submodule(layer)) == kind
    space = autocomp.SearchSpace.from_yaml(f"""
- name: g
  layers: ["type:{kind}"]
  primitives: {{prune: {{ratio: {{float: [0.0, 0.9]}}}}, quantize: {{bits: {{choice: [4, 8]}}}},
               share: {{bits: {{choice: [3, 32]}}}}}}
""")
    assert space.bind(model).layers == (layer,)


@pytest.mark.parametrize("kind", list(KINDS))
def test_identity_config_is_exact(kind):
    model, x, layer = _build(kind)
    policy = {layer: {"prune": {"ratio": 0.0}, "share": {"bits": 32}, "quantize": {"bits": 32}}}
    assert torch.equal(autocomp.compress(model, policy)(x), model(x))


@pytest.mark.parametrize("kind", list(KINDS))
def test_size_never_grows_as_compression_grows(kind):
    model, _, layer = _build(kind)
    sizes = [_packed_size(model, {layer: {"prune": {"ratio": r}}}) for r in (0.0, 0.3, 0.6, 0.9)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    sizes = [_packed_size(model, {layer: {"quantize": {"bits": b}}}) for b in (32, 8, 6, 4, 2)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    sizes = [_packed_size(model, {layer: {"share": {"bits": b}}}) for b in (32, 6, 3, 1)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


@pytest.mark.parametrize("kind", list(KINDS))
def test_packed_round_trip_is_exact(kind, tmp_path):
    model, x, layer = _build(kind)
    for configs in ({"prune": {"ratio": 0.5}}, {"quantize": {"bits": 4}}, {"share": {"bits": 3}},
                    {"prune": {"ratio": 0.7}, "quantize": {"bits": 3, "per_channel": 0}}):
        policy = autocomp.Policy.from_dict({layer: configs})
        compressed = autocomp.compress(model, policy)
        reloaded = load_into(autocomp.compress(model, policy, skeleton=True), pack(compressed))
        assert torch.equal(reloaded(x), compressed(x)), configs
        path = tmp_path / "m.acz"
        path.write_bytes(pack_model(compressed, artifact_meta(None, policy, [])))
        assert torch.equal(load_packed(path, model=model)(x), compressed(x)), configs
        assert path.stat().st_size == len(pack_model(compressed, artifact_meta(None, policy, [])))


@pytest.mark.parametrize("kind", list(KINDS))
def test_eight_bit_weights_keep_30_db(kind):
    model, _, layer = _build(kind)
    weight = weight_of(model.get_submodule(layer)).detach()
    quantized = weight_of(autocomp.compress(model, {layer: {"quantize": {"bits": 8}}}).get_submodule(layer))
    snr = 10 * math.log10(float(weight.pow(2).sum() / (weight - quantized.detach()).pow(2).sum()))
    assert snr >= 30, snr


@pytest.mark.parametrize("kind", ["Conv1d", "Conv1D", "ConvTranspose2d"])
def test_activation_bits_on_float_inputs(kind):
    model, x, layer = _build(kind)
    compressed = autocomp.compress(model, {layer: {"quantize": {"bits": 8, "act_bits": 8}}}, calibration=(x, None))
    assert torch.allclose(compressed(x), model(x), atol=0.05)


@pytest.mark.parametrize("kind", ["Embedding", "MultiheadAttention"])
def test_activation_bits_refused_where_inputs_are_not_one_float_tensor(kind):
    model, x, layer = _build(kind)
    space = autocomp.SearchSpace.from_yaml(f"""
- name: g
  layers: ["type:{kind}"]
  primitives: {{quantize: {{bits: {{choice: [4, 8]}}, act_bits: {{choice: [8, 32]}}}}}}
""")
    with pytest.raises(SpaceError, match="act_bits"):
        space.bind(model)
    with pytest.raises(AutocompError, match="act_bits"):
        autocomp.compress(model, {layer: {"quantize": {"act_bits": 8}}}, calibration=(x, None))
    fixed = autocomp.SearchSpace.from_yaml(f"""
- name: g
  layers: ["type:{kind}"]
  primitives: {{quantize: {{bits: {{choice: [4, 8]}}, act_bits: 32}}}}
""")
    assert fixed.bind(model).layers == (layer,)


@pytest.mark.parametrize("primitive", ["lowrank: {rank_ratio: 0.5}", "channels: {ratio: 0.5}"])
def test_structural_primitives_refuse_new_kinds_at_bind(primitive):
    model, _, _ = _build("Embedding")
    space = autocomp.SearchSpace.from_yaml(f"""
- name: g
  layers: ["type:Embedding"]
  primitives: {{{primitive}}}
""")
    with pytest.raises(SpaceError, match="Embedding"):
        space.bind(model)


def test_attention_out_proj_is_a_linear_and_compresses_beside_in_proj():
    model, x, _ = _build("MultiheadAttention")
    linear = autocomp.SearchSpace.from_yaml("""
- name: g
  layers: ["type:Linear"]
  primitives: {quantize: {bits: {choice: [4]}}}
""").bind(model)
    assert linear.layers == ("attn.out_proj", "head")
    exact = autocomp.SearchSpace.from_yaml("""
- name: g
  layers: ["type:NonDynamicallyQuantizableLinear"]
  primitives: {prune: {ratio: {float: [0.0, 0.5]}}}
""").bind(model)
    assert exact.layers == ("attn.out_proj",)
    policy = {"attn": {"quantize": {"bits": 4}}, "attn.out_proj": {"quantize": {"bits": 4}}}
    compressed = autocomp.compress(model, policy)
    assert compressed.attn.weight_coding.bits == 4 and compressed.attn.out_proj.weight_coding.bits == 4
    reloaded = load_into(autocomp.compress(model, policy, skeleton=True), pack(compressed))
    assert torch.equal(reloaded(x), compressed(x))
    with pytest.raises(SpaceError, match="out_proj"):
        autocomp.SearchSpace.from_yaml("""
- name: g
  layers: ["type:Linear"]
  primitives: {quantize: {act_bits: {choice: [8, 32]}}}
""").bind(model)


def test_logits_of_every_output_form():
    t = torch.randn(2, 3)
    assert logits(t) is t
    assert logits((t, torch.zeros(1))) is t
    assert logits([(t,), "x"]) is t
    assert logits({"hidden": torch.zeros(1), "logits": t}) is t
    assert logits(OrderedDict(scores=t)) is t
    assert logits(SequenceClassifierOutput(loss=None, logits=t)) is t
    with pytest.raises(TypeError, match="str"):
        logits("nothing")
    with pytest.raises(TypeError, match="tuple"):
        logits((None, 1))


def _gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def _lm_data(n=32, length=12):
    x = torch.randint(0, 100, (n, length))
    return x, (x + 1) % 100  # token-level labels: learnable (the next id), aligned with the logits


def test_gpt2_four_bits_everywhere_is_under_a_fifth_of_fp32():
    model = _gpt2()
    space = autocomp.SearchSpace.from_yaml("""
- name: all
  layers: ["type:Linear", "type:Conv1D", "type:Embedding"]
  shared: true
  primitives: {quantize: {bits: 4}}
""")
    bound = space.bind(model)
    policy = {layer: {"quantize": {"bits": 4}} for layer in bound.layers}
    compressed = autocomp.compress(model, policy)
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    assert len(pack(compressed)) <= 0.20 * fp32
    x, _ = _lm_data(4)
    reloaded = load_into(autocomp.compress(model, policy, skeleton=True), pack(compressed))
    assert torch.equal(reloaded(x).logits, compressed(x).logits)


def test_gpt2_token_accuracy_and_a_finetuning_step():
    model = _gpt2()
    x, y = _lm_data()
    before = accuracy(model, (x, y))
    assert 0.0 <= before <= 1.0
    y_masked = y.clone()
    y_masked[:, :6] = -100  # ignored positions do not count
    compressed = autocomp.compress(model, {"transformer.h.0.attn.c_attn": {"prune": {"ratio": 0.5}},
                                           "transformer.wte": {"quantize": {"bits": 6}}})
    spec = FineTuneSpec(epochs=1, steps=3, batch_size=8, lr=1e-3, kd_alpha=0.5)
    assert finetune(compressed, (x, y_masked), spec, teacher=model) == 1
    c_attn = compressed.transformer.h[0].attn.c_attn
    assert int((c_attn.weight == 0).sum()) >= c_attn.weight.numel() // 2  # the mask held
    assert 0.0 <= accuracy(compressed, (x, y_masked)) <= 1.0


def test_search_on_gpt2_and_a_bert_classifier(tmp_path):
    gpt2 = _gpt2()
    space = autocomp.SearchSpace.from_yaml("""
- name: blocks
  layers: ["type:Conv1D"]
  shared: true
  primitives: {prune: {ratio: {float: [0.0, 0.8]}}, quantize: {bits: {choice: [4, 8]}}}
- name: embeddings
  layers: ["type:Embedding"]
  shared: true
  primitives: {quantize: {bits: {choice: [4, 8]}}}
""")
    x, y = _lm_data()
    result = autocomp.search(gpt2, (x, y), space=space, trials=4, train_data=(x, y),
                             finetune=FineTuneSpec(epochs=1, steps=2, batch_size=16),
                             latency=fast_latency(), runs_dir=tmp_path, name="gpt2", progress=False)
    assert all(t.status == "complete" for t in result.trials), [t.error for t in result.trials]

    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=32, num_labels=3)).eval()
    tokens = torch.randint(0, 60, (24, 10))
    labels = tokens[:, 0] % 3
    space = autocomp.SearchSpace.from_yaml("""
- name: dense
  layers: ["type:Linear"]
  primitives: {share: {bits: {choice: [3, 32]}}, quantize: {bits: {choice: [4, 8]}, act_bits: {choice: [8, 32]}}}
- name: embeddings
  layers: ["type:Embedding"]
  shared: true
  primitives: {prune: {ratio: {float: [0.0, 0.5]}}, quantize: {bits: {choice: [4, 8]}}}
""")
    result = autocomp.search(bert, (tokens, labels), space=space, trials=5, train_data=(tokens, labels),
                             finetune=FineTuneSpec(epochs=1, steps=2, batch_size=8, kd_alpha=0.5),
                             latency=fast_latency(), runs_dir=tmp_path, name="bert", progress=False)
    assert all(t.status == "complete" for t in result.trials), [t.error for t in result.trials]
    assert min(t.metrics["size_bytes"] for t in result.trials) < 0.5 * 4 * sum(p.numel() for p in bert.parameters())


def test_transformer_encoder_in_proj_is_compressed():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).eval()
    x = torch.randn(2, 5, 16)
    bound = autocomp.SearchSpace.from_yaml("""
- name: all
  layers: ["type:Linear", "type:MultiheadAttention"]
  shared: true
  primitives: {quantize: {bits: 4}}
""").bind(model)
    policy = {layer: {"quantize": {"bits": 4}} for layer in bound.layers}
    compressed = autocomp.compress(model, policy)
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    without_in_proj = {k: v for k, v in policy.items() if not k.endswith("self_attn")}
    # biases and LayerNorms (fp32) are a quarter of this tiny model; the in-projections were another quarter
    assert len(pack(compressed)) <= 0.30 * fp32 < 0.6 * len(pack(autocomp.compress(model, without_in_proj)))
    reloaded = load_into(autocomp.compress(model, policy, skeleton=True), pack(compressed))
    assert torch.equal(reloaded(x), compressed(x))


def test_a_parametrized_weight_is_refused_by_quantize_and_share_with_the_reason():
    """Weight norm stores g and v, not the weight: codes or a codebook could not be reloaded, so refuse."""
    conv = torch.nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3))
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * 6, 2))
    for primitive in ("quantize: {bits: 4}", "share: {bits: 4}"):
        space = autocomp.SearchSpace.from_yaml(
            f'- name: g\n  layers: ["type:Conv1d", "type:Linear"]\n  primitives: {{{primitive}}}')
        reasons = {r.layer: r.reason for r in space.coverage(model)}
        assert reasons["2"] is None and "parametrized" in reasons["0"]
        with pytest.raises(SpaceError, match="cannot compress layer '0'.*parametrized"):
            space.bind(model)


def test_input_quantization_inside_a_transformer_encoder_is_not_bypassed_by_the_fused_fast_path():
    """PyTorch's fused encoder path reads linear1.weight and never calls the layer: it must not be taken."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(4, 5, 16)
    policy = {f"layers.{i}.{name}": {"quantize": {"act_bits": 2}} for i in range(2) for name in ("linear1", "linear2")}
    compressed = autocomp.compress(model, policy, calibration=(x, torch.zeros(4, dtype=torch.long)))
    with torch.no_grad():
        default = compressed(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            ordinary = compressed(x)  # the module path: every QuantizedInput called
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
        assert torch.allclose(default, ordinary, atol=1e-5)
        assert (default - model(x)).abs().max() > 0.05  # 2-bit inputs change the outputs: they were quantized
