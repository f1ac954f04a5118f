import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(flat(a).double(), flat(b).double(), dim=0))
