import os

import pytest
import torch

# tests are small; one thread keeps them fast and deterministic on a 2-core machine
torch.set_num_threads(1)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def tiny():
    from autocomp.testing.tiny import fit, tiny_data, tiny_mlp

    data = tiny_data(256)
    return fit(tiny_mlp(), data), data
