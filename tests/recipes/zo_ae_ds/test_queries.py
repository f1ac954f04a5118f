"""QueryCounter counts every image sent and, unless white-box, lets no gradient through."""

import pytest
import torch

from zeroth.recipes.zo_ae_ds import QueryCounter


def test_counts_calls_and_images_and_cuts_autograd():
    f = torch.nn.Linear(3, 2)
    counter = QueryCounter(f)
    x = torch.rand(5, 3, requires_grad=True)
    out = counter(x)
    counter(x[:2])
    assert counter.counts() == {"calls": 2, "queries": 7}
    assert not out.requires_grad


def test_white_box_passes_gradients_and_counts_travel_in_state_dict():
    counter = QueryCounter(torch.nn.Linear(3, 2), white_box=True)
    x = torch.rand(4, 3, requires_grad=True)
    counter(x).sum().backward()
    assert x.grad is not None
    other = QueryCounter(torch.nn.Linear(3, 2), white_box=True)
    other.load_state_dict(counter.state_dict())
    assert other.counts() == {"calls": 1, "queries": 4}


def test_rejects_double_wrapping_and_non_callables():
    with pytest.raises(TypeError, match="already a QueryCounter"):
        QueryCounter(QueryCounter(torch.nn.Linear(3, 2)))
    with pytest.raises(TypeError, match="classifier must be callable"):
        QueryCounter(3)
