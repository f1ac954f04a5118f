"""Cutting direction sets into interleaved, speed-weighted pieces and putting the losses back (no Ray needed)."""

import pytest
import torch

from zeroth import CGE, RGE, SPSA
from zeroth.distributed import split
from zeroth.engine import SequentialEvaluator
from zeroth.models import DigitsMLP


def test_blocks_cover_the_range_in_near_equal_parts():
    assert split.blocks(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert split.blocks(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert split.blocks(0, 8) == [(0, 0)]


def test_assign_interleaves_and_follows_the_weights():
    even = split.assign(split.blocks(8, 8), [1.0, 1.0])
    assert even == [[(0, 1), (2, 3), (4, 5), (6, 7)], [(1, 2), (3, 4), (5, 6), (7, 8)]]
    pieces = split.assign(split.blocks(3000, 64), [1.0, 2.0, 3.0])
    sizes = [split.piece_size(p) for p in pieces]
    assert sum(sizes) == 3000
    assert sizes == pytest.approx([500, 1000, 1500], abs=3000 / 64)
    assert split.assign(split.blocks(1, 4), [1.0, 1.0]) == [[(0, 1)], []]


@pytest.mark.parametrize("estimator", [CGE(), CGE(scheme="central"), RGE(q=7, dist="sphere"), SPSA(q=5)], ids=repr)
def test_pieces_evaluated_apart_give_the_whole(estimator):
    torch.manual_seed(0)
    model = DigitsMLP(hidden=4)
    params = list(model.parameters())
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))

    def objective():
        return torch.nn.functional.cross_entropy(model(x), y)

    dirs = estimator.directions(params, generator=torch.Generator().manual_seed(1))
    whole = SequentialEvaluator().evaluate(objective, params, dirs)
    out = torch.full((len(dirs),), float("nan"), dtype=torch.float64)
    for piece in split.assign(split.blocks(dirs.num_directions, 6), [1.0, 2.0]):
        ids = split.members(piece)
        part = SequentialEvaluator().evaluate(
            objective, params, split.to_device(split.subset(dirs, ids), [p.device for p in params])
        )
        split.scatter(dirs, ids, part.perturbed, out)
    assert torch.equal(out, whole.perturbed)


def test_shares_follow_measured_speeds_only_when_a_step_was_out_of_balance():
    from zeroth.distributed.pool import WorkerPool, _Slot

    pool = WorkerPool(object, (), num_workers=2, resources_per_worker=None, address=None, max_failures=0)
    slots = [_Slot(0, None, None), _Slot(1, None, None)]
    for s in slots:
        s.started = True
    pool.slots = slots
    pool._reweigh(slots)
    assert pool._weights == {0: 1.0, 1: 1.0}  # nothing measured yet: equal shares
    pool._measure({0: slots[0], 1: slots[1]}, [100, 100], [{"seconds": 1.0}, {"seconds": 1.05}])
    assert pool._weights == {0: 1.0, 1: 1.0}  # within 10 %: the pieces stay as they are
    pool._measure({0: slots[0], 1: slots[1]}, [100, 100], [{"seconds": 1.0}, {"seconds": 3.0}])
    w = pool._weights
    assert w[0] / w[1] == pytest.approx((100 + 100) / 2 / ((100 / 1.05 + 100 / 3) / 2))  # EMA of units/s
    sizes = [split.piece_size(p) for p in split.assign(split.blocks(1000, 64), [w[0], w[1]])]
    assert sizes[0] > 1.5 * sizes[1]
