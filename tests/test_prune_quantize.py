import torch
from torch import nn

from autocomp.artifacts import artifact_meta, load_packed, pack_model, write_bytes
from autocomp.compress import compress
from autocomp.policy import Policy
from autocomp.primitives import Prune, Quantize
from autocomp.primitives.prune import lamp_scores
from autocomp.primitives.quantize import QuantizedInput, quantize_weight
from autocomp.testing.conformance import outputs, random_layer, snr_db
from autocomp.testing.tiny import fit, tiny_cnn, tiny_data, tiny_mlp


def zeros(m):
    return int((m.weight == 0).sum())


def test_lamp_scores_match_the_definition():
    w = torch.tensor([[3.0, -1.0], [2.0, 0.5]])
    scores = lamp_scores(w)
    squares = {3.0: 9.0, 1.0: 1.0, 2.0: 4.0, 0.5: 0.25}
    total = sum(squares.values())
    expected = {0.5: 0.25 / total, 1.0: 1 / (total - 0.25), 2.0: 4 / (9 + 4), 3.0: 1.0}
    for value, score in zip(w.abs().flatten().tolist(), scores.flatten().tolist()):
        assert abs(score - expected[value]) < 1e-12


def test_global_pruning_pools_layers_and_prunes_the_pooled_ratio():
    model = nn.Sequential(random_layer(32, 64, seed=1), random_layer(16, 32, seed=2))
    with torch.no_grad():
        w = model[1].weight
        w.copy_(torch.sign(w) * (w.abs() + 1))  # every weight of the second layer is larger
    policy = Policy.of({"0": [Prune(ratio=0.5, scope="global")], "1": [Prune(ratio=0.5, scope="global")]})
    c = compress(model, policy)
    total = model[0].weight.numel() + model[1].weight.numel()
    assert zeros(c[0]) + zeros(c[1]) == round(0.5 * total)
    assert zeros(c[1]) == 0 and zeros(c[0]) > 0.5 * model[0].weight.numel()  # magnitude takes the small layer
    # LAMP scores are scale-free per layer: rescaling one layer leaves the global choice unchanged
    lamp_policy = Policy.of({n: [Prune(ratio=0.5, scope="global", score="lamp")] for n in "01"})
    lamp = compress(model, lamp_policy)
    assert zeros(lamp[0]) + zeros(lamp[1]) == round(0.5 * total)
    scaled = compress(model, Policy.of({}))
    with torch.no_grad():
        scaled[1].weight.mul_(1000)
    lamp_scaled = compress(scaled, lamp_policy)
    assert torch.equal(lamp[0].weight == 0, lamp_scaled[0].weight == 0)
    assert torch.equal(lamp[1].weight == 0, lamp_scaled[1].weight == 0)
    assert zeros(c[1]) != zeros(compress(scaled, policy)[1]) or zeros(c[1]) == 0


def test_layer_scope_lamp_equals_magnitude():
    model = nn.Sequential(random_layer(16, 32))
    a = compress(model, Policy.of({"0": [Prune(ratio=0.6, score="lamp")]}))
    b = compress(model, Policy.of({"0": [Prune(ratio=0.6)]}))
    assert torch.equal(a[0].weight, b[0].weight)


def test_one_bit_is_sign_times_mean_magnitude_and_keeps_zeros():
    w = random_layer(8, 32).weight.detach().clone()
    w[:, :4] = 0
    codes, scale = quantize_weight(w, 1)
    assert set(codes.unique().tolist()) == {-1, 0, 1}
    assert torch.equal(codes == 0, w == 0)
    nonzero = w != 0
    expected = (w.abs() * nonzero).sum(1) / nonzero.sum(1)
    assert torch.allclose(scale, expected)


def test_two_bit_is_ternary_and_per_tensor_shares_one_scale():
    w = random_layer(8, 32).weight
    codes, _ = quantize_weight(w, 2)
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    codes, scale = quantize_weight(w, 8, per_channel=False)
    assert torch.all(scale == scale[0]) and codes.abs().max() == 127
    assert snr_db(w, codes * scale[0]) >= 30


def test_activation_quantization_is_calibrated_and_round_trips_through_the_packed_file(tmp_path):
    data = tiny_data(256)
    model = fit(tiny_cnn(), data, steps=60)
    policy = Policy.of({"0": [Quantize(bits=8, act_bits=8)], "2": [Quantize(bits=4, act_bits=4)],
                        "5": [Quantize(bits=8, act_bits=8)]})
    c = compress(model, policy, example=data[0][:1], calibration=data)
    wrapper = c.get_submodule("2")
    assert isinstance(wrapper, QuantizedInput)
    with torch.no_grad():  # layer "2" receives ReLU outputs of the 8-bit conv "0": range [0, max]
        seen = torch.relu(c.get_submodule("0").layer(data[0]))
    assert abs(float(wrapper.scale) * 15 - float(seen.max())) < 1e-4 and int(wrapper.zero_point) == 0
    x = data[0][:64]
    assert not torch.equal(outputs(c, x), outputs(compress(model, Policy.of(
        {n: [Quantize(bits=b)] for n, b in (("0", 8), ("2", 4), ("5", 8))})), x))
    # fake quantization costs little accuracy at 8 bits
    agree = (outputs(c, data[0]).argmax(1) == outputs(model, data[0]).argmax(1)).float().mean()
    assert agree > 0.9
    path = tmp_path / "m.acz"
    write_bytes(path, pack_model(c, artifact_meta(None, policy, (1, 8, 8))))
    assert torch.equal(outputs(load_packed(path, model=model), x), outputs(c, x))


def test_quantize_applies_to_every_factor_and_conv():
    model = tiny_cnn()
    c = compress(model, Policy.of({"0": [Quantize(bits=3)], "2": [Quantize(bits=1)]}))
    assert c[0].weight_coding.bits == 3 and c[2].weight_coding.bits == 1
    assert len(c[2].weight[0].unique()) <= 3  # -s, 0, +s per channel
    mlp = tiny_mlp()
    assert compress(mlp, Policy.of({"1": [Quantize(bits=32, act_bits=32)]}))[1].weight.equal(mlp[1].weight)


def test_per_tensor_scale_is_stored_once_and_round_trips(tmp_path):
    model = nn.Sequential(random_layer(64, 128))
    per_channel = Policy.of({"0": [Quantize(bits=4)]})
    per_tensor = Policy.of({"0": [Quantize(bits=4, per_channel=0)]})
    sizes = {}
    for label, policy in (("channel", per_channel), ("tensor", per_tensor)):
        c = compress(model, policy)
        data = pack_model(c, artifact_meta(None, policy, (128,)))
        sizes[label] = len(data)
        path = tmp_path / f"{label}.acz"
        write_bytes(path, data)
        x = torch.randn(4, 128)
        assert torch.equal(outputs(load_packed(path, model=model), x), outputs(c, x))
    assert sizes["channel"] - sizes["tensor"] >= 63 * 4 - 16  # 63 scales saved, a few header bytes spent


def test_weight_dependent_shapes_reload_into_a_skeleton_built_from_other_weights(tmp_path):
    """Energy ranks and Taylor channels depend on the weights; load_packed must follow the file's shapes."""
    from autocomp.primitives import Channels, LowRank
    from autocomp.zoo import ResNet20

    torch.manual_seed(0)
    model = ResNet20(width=0.5).eval()
    x = torch.randn(32, 3, 32, 32)
    y = torch.randint(0, 10, (32,))
    policy = Policy.of({"layer1.0.conv1": [Channels(ratio=0.4, criterion="taylor")],
                        "layer2.0.conv2": [LowRank(energy=0.7)], "layer3.1.conv1": [LowRank(energy=0.8)],
                        "layer2.1.conv1": [Quantize(bits=6, act_bits=8)]})
    c = compress(model, policy, example=x[:1], calibration=(x, y))
    path = tmp_path / "m.acz"
    write_bytes(path, pack_model(c, artifact_meta({"name": "resnet20", "kwargs": {"width": 0.5}}, policy,
                                                  (3, 32, 32))))
    reloaded = load_packed(path)  # a fresh ResNet20(width=0.5): other weights, other energy ranks
    assert torch.equal(outputs(reloaded, x[:8]), outputs(c, x[:8]))


def test_activation_bits_without_calibration_is_an_error():
    import pytest

    from autocomp.errors import AutocompError

    with pytest.raises(AutocompError, match="needs calibration data"):
        compress(tiny_mlp(), Policy.of({"1": [Quantize(act_bits=8)]}))


def test_fake_quantized_models_export_to_torch_export_and_onnx(tmp_path):
    import numpy as np
    import onnxruntime

    from autocomp.artifacts import export_onnx, export_program

    data = tiny_data(64)
    model = fit(tiny_cnn(), data, steps=30)
    policy = Policy.of({"2": [Quantize(bits=4, act_bits=4)], "5": [Quantize(bits=8, act_bits=8)]})
    c = compress(model, policy, calibration=data)
    x = data[0][:16]
    export_program(tmp_path / "m.pt2", c, x[:1])
    assert torch.allclose(torch.export.load(tmp_path / "m.pt2").module()(x), outputs(c, x), atol=1e-6)
    export_onnx(tmp_path / "m.onnx", c, x)
    got = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - outputs(c, x).numpy()).max() <= 1e-4


def test_calibration_keeps_batchnorm_statistics_and_the_input_model_untouched():
    from autocomp.zoo import ResNet20

    model = ResNet20(width=0.5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 3, 32, 32)
    c = compress(model, Policy.of({"layer1.0.conv1": [Quantize(act_bits=8)]}), calibration=(x, None))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(c.get_submodule("layer1.0.bn1").running_mean, before["layer1.0.bn1.running_mean"])
