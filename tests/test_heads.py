"""Attention head removal (`heads`): pruned models equal the original with the removed heads' outputs zeroed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import autocomp
from autocomp.artifacts import load_packed
from autocomp.errors import SpaceError
from autocomp.finetune import FineTuneSpec
from autocomp.layers import module_kind
from autocomp.policy import Policy
from autocomp.primitives.heads import Heads
from autocomp.testing.tiny import fast_latency

transformers = pytest.importorskip("transformers")

SMALL = {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 48,
         "max_position_embeddings": 32}


class Attention(nn.Module):
    """nn.MultiheadAttention over a sequence, mean-pooled, then a classifier."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.batch_first else x.transpose(0, 1)
        out = self.attn(x, x, x, need_weights=False)[0]
        return self.head(out if self.batch_first else out.transpose(0, 1))


def _tokens() -> torch.Tensor:
    return torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(1))


def _mha(batch_first):
    return Attention(batch_first), torch.randn(3, 6, 16)


def _encoder():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), torch.randn(3, 6, 16)


def _bert():
    return transformers.BertModel(transformers.BertConfig(num_attention_heads=4, **SMALL)), _tokens()


def _roberta():
    config = transformers.RobertaConfig(num_attention_heads=4, pad_token_id=1, **SMALL)
    return transformers.RobertaModel(config), _tokens()


def _vit():
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, num_attention_heads=4,
                                    hidden_size=32, num_hidden_layers=2, intermediate_size=48)
    return transformers.ViTModel(config, add_pooling_layer=False), torch.randn(2, 3, 8, 8)


def _deit():
    config = transformers.DeiTConfig(image_size=8, patch_size=4, num_channels=3, num_attention_heads=4,
                                     hidden_size=32, num_hidden_layers=2, intermediate_size=48)
    return transformers.DeiTModel(config, add_pooling_layer=False), torch.randn(2, 3, 8, 8)


def _gpt2():
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=60, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), _tokens()


def _decoder(cls_name, config_name, kv):
    def build():
        config = getattr(transformers, config_name)(num_attention_heads=8, num_key_value_heads=kv, head_dim=4,
                                                    **SMALL)
        return getattr(transformers, cls_name)(config), _tokens()
    return build


# family -> (factory, selector, head-count attributes, the output projection's tensor and its head dim)
FAMILIES = {
    "mha-batch-first": (lambda: _mha(True), "type:MultiheadAttention"),
    "mha-seq-first": (lambda: _mha(False), "type:MultiheadAttention"),
    "transformer-encoder": (_encoder, "type:MultiheadAttention"),
    "bert": (_bert, "type:BertSelfAttention"),
    "roberta": (_roberta, "type:RobertaSelfAttention"),
    "vit": (_vit, "type:ViTAttention"),
    "deit": (_deit, "type:DeiTAttention"),
    "gpt2": (_gpt2, "type:GPT2Attention"),
    "llama-gqa": (_decoder("LlamaForCausalLM", "LlamaConfig", 2), "type:LlamaAttention"),
    "llama-mha": (_decoder("LlamaForCausalLM", "LlamaConfig", 8), "type:LlamaAttention"),
    "mistral-gqa": (_decoder("MistralForCausalLM", "MistralConfig", 4), "type:MistralAttention"),
    "qwen2-gqa": (_decoder("Qwen2ForCausalLM", "Qwen2Config", 2), "type:Qwen2Attention"),
}


def _build(family):
    torch.manual_seed(0)
    model, x = FAMILIES[family][0]()
    return model.eval(), x


def _layers(family, model):
    space = autocomp.SearchSpace.from_dict([{"name": "a", "layers": [FAMILIES[family][1]],
                                             "primitives": {"heads": {"ratio": {"float": [0.0, 0.9]}}}}])
    return space.bind(model).layers


def _out(model, x):
    with torch.no_grad():
        out = model(x)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _counts(module):
    """(query heads, key/value heads) as the module's tensors hold them."""
    if isinstance(module, nn.MultiheadAttention):
        n = module.in_proj_weight.shape[0] // 3 // module.head_dim
        return n, n
    if hasattr(module, "c_attn"):
        return module.num_heads, module.num_heads
    if hasattr(module, "query"):
        return module.query.out_features // module.attention_head_size, module.key.out_features // \
            module.attention_head_size
    return module.q_proj.out_features // module.head_dim, module.k_proj.out_features // module.head_dim


def _zero_heads(model, name, removed):
    """Zero the removed query heads' inputs to the output projection (their contribution) of module `name`."""
    module = model.get_submodule(name)
    if isinstance(module, nn.MultiheadAttention):
        weight, dim, d = module.out_proj.weight, 1, module.head_dim
    elif hasattr(module, "c_proj"):
        weight, dim, d = module.c_proj.weight, 0, module.head_dim
    elif hasattr(module, "query"):
        weight, dim, d = model.get_submodule(name.rpartition(".")[0]).output.dense.weight, 1, \
            module.attention_head_size
    else:
        weight, dim, d = module.o_proj.weight, 1, module.head_dim
    index = torch.tensor([h * d + i for h in removed for i in range(d)], dtype=torch.long)
    with torch.no_grad():
        weight.index_fill_(dim, index, 0.0)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_pruned_model_equals_the_original_with_those_heads_zeroed(family, criterion):
    model, x = _build(family)
    layers = _layers(family, model)
    assert len(layers) == 2 if family not in ("mha-batch-first", "mha-seq-first") else len(layers) == 1
    policy = {name: {"heads": {"ratio": 0.5, "criterion": criterion}} for name in layers}
    pruned = autocomp.compress(model, policy)
    reference = copy.deepcopy(model)
    for name in layers:
        before, after = _counts(model.get_submodule(name)), _counts(pruned.get_submodule(name))
        assert after == (before[0] // 2, before[1] // 2), (before, after)
        kept = pruned.get_submodule(name).kept_heads
        assert len(kept) == after[0]
        _zero_heads(reference, name, sorted(set(range(before[0])) - set(kept)))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(_out(pruned, x), _out(reference, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_multihead_attention_takes_masks_weights_and_unbatched_inputs(batch_first):
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    pruned = autocomp.compress(nn.Sequential(attn), Policy.of({"0": [Heads(ratio=0.5)]}))[0]
    reference = copy.deepcopy(nn.Sequential(attn))
    _zero_heads(reference, "0", sorted({0, 1, 2, 3} - set(pruned.kept_heads)))
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal, "is_causal": True},
                   {"attn_mask": causal.isinf(), "need_weights": False}):
        got, want = pruned(x, x, x, **kwargs), reference[0](x, x, x, **kwargs)
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        assert (got[1] is None) == (want[1] is None)
    one = x[:, 0]  # an unbatched (length, embed) input
    torch.testing.assert_close(pruned(one, one, one)[0], reference[0](one, one, one)[0], atol=1e-5, rtol=1e-5)


def test_head_count_attributes_follow():
    model, _ = _build("bert")
    name = "encoder.layer.0.attention.self"
    sa = autocomp.compress(model, Policy.of({name: [Heads(ratio=0.75)]})).get_submodule(name)
    assert (sa.num_attention_heads, sa.all_head_size, sa.attention_head_size) == (1, 8, 8)
    model, _ = _build("gpt2")
    attn = autocomp.compress(model, Policy.of({"transformer.h.1.attn": [Heads(ratio=0.5)]})).transformer.h[1].attn
    assert (attn.num_heads, attn.split_size, attn.embed_dim, attn.head_dim) == (2, 16, 32, 8)
    assert (attn.c_attn.nf, attn.c_proj.nx) == (48, 16)
    model, _ = _build("vit")
    attn = autocomp.compress(model, Policy.of({"layers.0.attention": [Heads(ratio=0.5)]})).layers[0].attention
    assert attn.num_attention_heads == 2 and attn.o_proj.in_features == 16
    model, _ = _build("mha-seq-first")
    attn = autocomp.compress(model, Policy.of({"attn": [Heads(ratio=0.5)]})).attn
    assert (attn.num_heads, attn.head_dim, attn.embed_dim, attn.out_proj.in_features) == (2, 4, 16, 8)


def test_gqa_removes_whole_key_value_groups():
    model, x = _build("llama-gqa")  # 8 query heads in 2 groups of 4
    name = "model.layers.0.self_attn"
    for ratio, groups in [(0.3, 2), (0.5, 1), (0.9, 1)]:
        attn = autocomp.compress(model, Policy.of({name: [Heads(ratio=ratio)]})).get_submodule(name)
        assert _counts(attn) == (4 * groups, groups)
        assert attn.num_key_value_groups == 4
        kept = getattr(attn, "kept_heads", tuple(range(8)))  # only a module that lost heads records them
        assert all(kept[i:i + 4] == tuple(range(kept[i], kept[i] + 4)) and kept[i] % 4 == 0
                   for i in range(0, len(kept), 4))
    model, _ = _build("mistral-gqa")  # 8 query heads in 4 groups of 2: a quarter is one group
    attn = autocomp.compress(model, Policy.of({name: [Heads(ratio=0.25)]})).get_submodule(name)
    assert _counts(attn) == (6, 3)


def test_ratio_zero_is_the_identity_exactly():
    for family in ("mha-seq-first", "bert", "gpt2", "llama-gqa"):
        model, x = _build(family)
        identity = Policy.of({name: [Heads(ratio=0.0)] for name in _layers(family, model)})
        same = autocomp.compress(model, identity)
        assert torch.equal(_out(same, x), _out(model, x))
        assert [p.shape for p in same.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("family", ["transformer-encoder", "bert", "vit", "gpt2", "llama-gqa", "qwen2-gqa"])
def test_a_ratio_sweep_keeps_a_runnable_model(family):
    model, x = _build(family)
    layers = _layers(family, model)
    shape = _out(model, x).shape
    sizes = []
    for ratio in [i / 10 for i in range(10)]:
        policy = Policy.of({name: [Heads(ratio=ratio, criterion="l2")] for name in layers})
        pruned = autocomp.compress(model, policy)
        assert _out(pruned, x).shape == shape, ratio
        assert all(_counts(pruned.get_submodule(n))[0] >= 1 for n in layers)
        sizes.append(sum(p.numel() for p in pruned.parameters()))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]


@pytest.mark.parametrize("family", ["mha-batch-first", "transformer-encoder", "bert", "vit", "gpt2", "llama-gqa"])
def test_packed_round_trip_is_exact(family, tmp_path):
    model, x = _build(family)
    layers = _layers(family, model)
    policy = {name: {"heads": {"ratio": 0.5}, "quantize": {"bits": 32}} for name in layers}
    if family == "bert":  # heads beside quantization of the projections inside the attention module
        policy["encoder.layer.0.attention.self.query"] = {"quantize": {"bits": 4}}
    compressed = autocomp.compress(model, policy)
    path = tmp_path / "m.acz"
    autocomp.export(policy, model=model, path=path, example=x[:1])
    reloaded = load_packed(path, model=model)
    assert torch.equal(_out(reloaded, x), _out(compressed, x))
    for name in layers:
        got, want = reloaded.get_submodule(name), compressed.get_submodule(name)
        assert _counts(got) == _counts(want)
        for attr in ("num_heads", "num_attention_heads", "all_head_size", "split_size", "num_key_value_groups"):
            assert getattr(got, attr, None) == getattr(want, attr, None), attr


class WindowAttention(nn.Module):
    """An attention module of a layout head removal does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(torch.softmax(q @ k.transpose(-2, -1), -1) @ v)


def test_an_unknown_attention_class_is_refused_with_its_reason():
    model = nn.Sequential(WindowAttention(), nn.Linear(16, 3))
    space = autocomp.SearchSpace.from_dict([{"name": "a", "layers": ["type:Attention"],
                                             "primitives": {"heads": {"ratio": {"float": [0.0, 0.5]}}}}])
    rows = space.coverage(model)
    assert [(r.layer, r.reason) for r in rows] == [("0", "attention class WindowAttention: head layout unknown")]
    with pytest.raises(SpaceError, match="head layout unknown"):
        space.bind(model)
    cross = nn.MultiheadAttention(16, 4, kdim=8, vdim=8)
    assert "kdim/vdim" in space.coverage(nn.Sequential(cross))[0].reason


def test_attention_modules_are_selected_only_for_primitives_that_take_them():
    model, _ = _build("bert")
    kinds = {n: module_kind(m) for n, m in model.named_modules() if module_kind(m) == "Attention"}
    assert list(kinds) == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]  # not BertAttention
    heads = autocomp.SearchSpace.from_dict([{"name": "a", "layers": ["type:Attention"],
                                             "primitives": {"heads": {"ratio": 0.5}}}])
    assert heads.bind(model).layers == tuple(kinds)
    prune = autocomp.SearchSpace.from_dict([{"name": "a", "layers": ["re:.*attention.*"],
                                             "primitives": {"prune": {"ratio": 0.5}}}])
    assert all(module_kind(model.get_submodule(n)) == "Linear" for n in prune.bind(model).layers)


def test_tiny_search_over_a_bert_classifier_with_heads_and_quantize(tmp_path):
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        num_attention_heads=4, num_labels=3, **SMALL)).eval()
    tokens = torch.randint(0, 60, (24, 10))
    labels = tokens[:, 0] % 3
    space = autocomp.SearchSpace.from_yaml("""
- name: attention
  layers: ["type:BertSelfAttention"]
  primitives: {heads: {ratio: {float: [0.0, 0.9]}, criterion: {choice: [l1, l2]}}}
- name: dense
  layers: ["type:Linear"]
  shared: true
  primitives: {quantize: {bits: {choice: [4, 8]}}}
""")
    result = autocomp.search(bert, (tokens, labels), space=space, trials=5, seed=0, train_data=(tokens, labels),
                             finetune=FineTuneSpec(epochs=1, steps=2, batch_size=8),
                             latency=fast_latency(), runs_dir=tmp_path, name="bert", progress=False)
    assert len(result.trials) >= 5
    assert any(c.get("heads", {}).get("ratio", 0) >= 0.25 for t in result.trials for c in t.policy.values())
    assert [t for t in result.trials if t.status == "failed"] == [], [t.error for t in result.trials]
