import torch
from torch import nn

from autocomp.compress import compress
from autocomp.metrics import count_flops, count_params
from autocomp.policy import Policy
from autocomp.primitives import LowRank, Prune
from autocomp.zoo import LeNet5, LeNet300


def test_flops_of_lenet300_dense_factorised_and_sparse():
    model = LeNet300()
    x = torch.zeros(1, 1, 28, 28)
    assert count_flops(model, x) == (2 * (784 * 300 + 300 * 100 + 100 * 10),) * 2
    policy = Policy.of({"fc1": [LowRank(rank_ratio=0.25), Prune(ratio=0.5)]})
    flops, sparse = count_flops(compress(model, policy), x)
    rank = 75
    assert flops == 2 * (784 * rank + rank * 300 + 300 * 100 + 100 * 10)
    assert sparse == 2 * ((784 * rank + rank * 300) // 2 + 300 * 100 + 100 * 10)


def test_flops_of_lenet5_and_a_sequential_root():
    x = torch.zeros(1, 1, 28, 28)
    expected = 2 * (20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10)
    assert count_flops(LeNet5(), x)[0] == expected
    seq = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(784, 10)))
    with torch.no_grad():
        seq[1][0].weight[:5] = 0
    assert count_flops(seq, x) == (2 * 7840, 2 * 7840 // 2)


def test_params_count_nonzero():
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight[0] = 0
    assert count_params(model) == (15, 11)
