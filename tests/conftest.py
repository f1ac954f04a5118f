import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed every test; one intra-op thread (tiny models: extra threads only oversubscribe 2 cores)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(flat(a).double(), flat(b).double(), dim=0))
