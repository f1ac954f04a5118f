"""zeroth.data.batches: arguments are checked when it is called, not at the first next()."""

import pytest
import torch

from zeroth.data import batches


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True, "4", None])
def test_a_bad_batch_size_is_refused_at_the_call(batch_size):
    x, y = torch.zeros(10, 3), torch.zeros(10)
    with pytest.raises((ValueError, TypeError), match="batch_size"):
        batches(x, y, batch_size)  # no next(): the check is eager


def test_rows_of_x_and_y_must_agree():
    with pytest.raises(ValueError, match=r"x and y .* 10 .* 9"):
        batches(torch.zeros(10, 3), torch.zeros(9), 4)


def test_the_permutation_is_drawn_at_the_first_next_as_before():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    g = torch.Generator().manual_seed(0)
    it = batches(x, y, 4, g)
    state = g.get_state()
    assert torch.equal(g.get_state(), state)  # nothing drawn yet
    got = list(it)
    assert [len(b) for b, _ in got] == [4, 4]
    want = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([b for _, b in got]), want[:8])
    assert [len(b) for b, _ in batches(x, y, 4, drop_last=False)] == [4, 4, 2]
    assert [len(b) for b, _ in batches(x, y, 16)] == [10]  # fewer rows than a batch: one smaller batch
