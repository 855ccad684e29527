"""Fine-tuning keeps what the artifact stores (zeros, codes, codebook assignment) and recovers accuracy."""

import pytest
import torch
from torch import nn

from autocomp.artifacts import artifact_meta, pack_model
from autocomp.compress import compress
from autocomp.finetune import FineTuneSpec, finetune
from autocomp.metrics import accuracy
from autocomp.policy import Policy
from autocomp.primitives import LowRank, Prune, Quantize
from autocomp.primitives.configs import Share
from autocomp.tasks import Classification
from autocomp.testing.tiny import fit, tiny_data, tiny_mlp

distillation_loss = Classification().distillation_loss
LAYERS = ("1", "3", "5")
SPEC = FineTuneSpec(epochs=4, batch_size=32, lr=3e-3)


@pytest.fixture(scope="module")
def setup():
    train, val = tiny_data(512, seed=1), tiny_data(256, seed=2)
    return fit(tiny_mlp(), train), train, val


def packed_size(model, policy):
    return len(pack_model(model, artifact_meta(None, policy, (1, 8, 8))))


def val_loss(model, data):
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(data[0]), data[1]))


def weights(model):
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Linear)]


LOW_RANK = (LowRank(rank_ratio=0.25), Prune(ratio=0.6), Quantize(bits=3))


@pytest.mark.parametrize("layers", [
    {name: (Prune(ratio=0.85), Quantize(bits=2)) for name in LAYERS},
    {name: (Prune(ratio=0.85), Share(bits=2)) for name in LAYERS},
    {"1": LOW_RANK, "3": LOW_RANK, "5": (Quantize(bits=3),)},  # rank 1 of the 4-class head could not learn
], ids=["prune+quantize", "prune+share", "lowrank+prune+quantize"])
def test_finetuning_recovers_accuracy_and_keeps_the_artifact_size(setup, layers):
    model, train, val = setup
    policy = Policy.of(layers)
    compressed = compress(model, policy)
    loss, size, before = val_loss(compressed, val), packed_size(compressed, policy), weights(compressed)
    finetune(compressed, train, SPEC)
    assert val_loss(compressed, val) < 0.7 * loss  # the damage is (mostly) trained away
    assert accuracy(compressed, val) >= accuracy(model, val) - 0.02
    # it still packs (codes valid, the same layout); a quantized code may have become 0 or left 0
    assert abs(packed_size(compressed, policy) - size) <= 0.05 * size
    after = weights(compressed)
    assert [w.shape for w in after] == [w.shape for w in before] and not all(map(torch.equal, before, after))
    for layer in (m for m in compressed.modules() if isinstance(m, nn.Linear)):
        kept = getattr(layer, "keep_mask", None)
        if kept is not None:  # a pruned weight never comes back
            assert not layer.weight[~kept].any()


def test_shared_weights_train_their_codebook_with_the_assignment_fixed(setup):
    model, train, _ = setup
    policy = Policy.of({name: (Share(bits=2),) for name in LAYERS})
    compressed = compress(model, policy)
    layer = compressed.get_submodule("3")
    old_book, old = layer.weight_coding.codebook.clone(), layer.weight.detach().clone()
    finetune(compressed, train, SPEC)
    new_book, new = layer.weight_coding.codebook, layer.weight.detach()
    assert not torch.equal(old_book, new_book)
    assert set(new[new != 0].unique().tolist()) <= set(new_book.tolist())
    for i, centroid in enumerate(old_book.tolist()):  # a weight stays with its centroid
        assert torch.all(new[old == centroid] == new_book[i])


def test_distillation_loss_is_cross_entropy_plus_the_softened_kl():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 4, (8,))
    ce = nn.functional.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha=0.0, temperature=4.0), ce)
    same = distillation_loss(student, student, labels, alpha=0.5, temperature=4.0)
    assert torch.allclose(same, 0.5 * ce, atol=1e-6)  # no disagreement with the teacher: only the hard term
    assert distillation_loss(student, teacher, labels, alpha=0.5, temperature=4.0) > same


def test_distillation_pulls_the_student_towards_the_teacher(setup):
    model, train, val = setup
    policy = Policy.of({name: (Prune(ratio=0.9), Quantize(bits=2)) for name in LAYERS})
    spec = FineTuneSpec(epochs=3, batch_size=32, lr=3e-3, kd_alpha=0.9, temperature=2.0)
    student = compress(model, policy)
    gap_before = (student(val[0]) - model(val[0])).abs().mean()
    finetune(student, train, spec, teacher=model)
    assert (student(val[0]) - model(val[0])).abs().mean() < gap_before


def test_after_epoch_can_stop_early_and_runs_are_deterministic(setup):
    model, train, _ = setup
    policy = Policy.of({name: (Prune(ratio=0.7), Quantize(bits=3)) for name in LAYERS})
    seen = []
    a, b = compress(model, policy), compress(model, policy)
    assert finetune(a, train, SPEC, after_epoch=lambda epoch, m: seen.append(epoch) or epoch < 2) == 2
    assert seen == [1, 2]
    finetune(b, train, FineTuneSpec(**{**vars(SPEC), "epochs": 2}))
    assert all(torch.equal(x, y) for x, y in zip(weights(a), weights(b)))
    assert finetune(compress(model, policy), train, FineTuneSpec()) == 0  # 0 epochs: nothing happens


def test_l1_and_group_lasso_penalties_drive_weights_and_channels_towards_zero(setup):
    model, train, _ = setup
    policy = Policy.of({name: (Prune(ratio=0.3),) for name in LAYERS})
    plain, l1, lasso = (compress(model, policy) for _ in range(3))
    finetune(plain, train, SPEC)
    finetune(l1, train, FineTuneSpec(**{**vars(SPEC), "l1": 5.0}))
    finetune(lasso, train, FineTuneSpec(**{**vars(SPEC), "group_lasso": 5.0}))
    first = [m.get_submodule("1").weight.detach() for m in (plain, l1, lasso)]
    assert first[1].abs().mean() < 0.8 * first[0].abs().mean()
    rows = [w.norm(dim=1).sort().values for w in first]
    assert rows[2][:8].mean() < 0.5 * rows[0][:8].mean()  # the weakest output channels are pushed to zero
    assert not first[1][~model_keep(l1)].any()  # the penalty never revives a pruned weight


def model_keep(model):
    return model.get_submodule("1").keep_mask


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule(monkeypatch, schedule):
    """cosine: the lr starts at spec.lr and falls monotonically to ~0 by the last planned step."""
    seen = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    data = tiny_data(256)
    finetune(tiny_mlp(), data, FineTuneSpec(epochs=3, batch_size=32, lr=1e-2, schedule=schedule))
    assert len(seen) == 3 * 8 and seen[0] == pytest.approx(1e-2)
    if schedule == "constant":
        assert set(seen) == {1e-2}
    else:
        assert all(a >= b for a, b in zip(seen, seen[1:])) and seen[-1] < 1e-2 * 0.01
