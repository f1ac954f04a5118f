"""Direction sets: chunked regeneration of random directions, coordinate scatter, strided parameters."""

import pytest
import torch

from zeroth.estimators import directions as D
from zeroth.estimators.directions import Coordinates, RandomDirections


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 entries, so parameters of a few dozen entries span several chunks."""
    monkeypatch.setattr(D, "CHUNK", 7)


def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("dist", ["gaussian", "sphere", "rademacher"])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_directions_add_up_to_the_materialised_ones(small_chunks, dist, masked):
    params = _params()
    masks = [torch.tensor([0, 3, 4, 9, 11, 12, 17, 20, 28, 29]), None] if masked else None
    dirs = RandomDirections(params, seed=5, q=3, mus=[1e-2, 2e-2], dist=dist, masks=masks)
    full = [[dirs.direction(i, j) for j in range(2)] for i in range(3)]
    if masked:  # zero outside the mask
        outside = torch.ones(30, dtype=torch.bool)
        outside[masks[0]] = False
        assert all(float(full[i][0].view(-1)[outside].abs().max()) == 0 for i in range(3))
    if dist == "sphere":
        for i in range(3):
            assert sum(float(full[i][j].pow(2).sum()) for j in range(2)) == pytest.approx(1.0, rel=1e-12)
    # chunks are independent draws: the direction is not one generator's stream cut into pieces
    assert not torch.equal(full[0][0].view(-1)[:7], full[0][0].view(-1)[7:14])
    coeffs = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    grads = [torch.zeros_like(p) for p in params]
    dirs.accumulate(coeffs, grads, scales=[1.0, -3.0])
    for j, g in enumerate(grads):
        ref = sum(c * full[i][j] for i, c in enumerate(coeffs.tolist())) / dirs.mus[j] * [1.0, -3.0][j]
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-14)
    before = [p.clone() for p in params]
    token = dirs.perturb(params, 1, exact=False)  # direction 1 (one-sided: sign +)
    for j, p in enumerate(params):
        torch.testing.assert_close(p, before[j] + dirs.mus[j] * full[1][j], rtol=1e-12, atol=1e-14)
    dirs.restore(params, 1, token)
    for p, b in zip(params, before):
        torch.testing.assert_close(p, b, rtol=0, atol=1e-15)


def test_a_small_parameter_keeps_its_directions_when_chunking_starts():
    """Chunk 0 is seeded as the unchunked draw was: directions of parameters ≤ CHUNK do not change."""
    dirs = RandomDirections(_params(), seed=11, q=2, mus=[1e-3, 1e-3])
    g = torch.Generator().manual_seed(D._mix_seed(11, 1, 0))
    assert torch.equal(dirs.direction(1, 0).view(-1), torch.randn(30, generator=g, dtype=torch.float64))


def test_add_to_never_draws_more_than_a_chunk(small_chunks, monkeypatch):
    dirs = RandomDirections(_params(), seed=1, q=1, mus=[1.0, 1.0])
    sizes = []
    raw = RandomDirections._raw

    def spy(self, i, j, chunk=0):
        out = raw(self, i, j, chunk)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(RandomDirections, "_raw", spy)
    dirs.add_to(_params(), 0, [1.0, 1.0])
    assert max(sizes) == 7 and sum(sizes) == 33


def test_non_contiguous_parameters_use_row_major_flat_indices():
    base = torch.arange(12.0).view(3, 4)
    p = base.t()  # (4, 3), not contiguous
    assert not p.is_contiguous()
    dirs = Coordinates([torch.tensor([1, 5])], mus=[0.5], params=[p])
    token = dirs.perturb([p], 1)
    assert float(p.reshape(-1)[5]) == float(p.contiguous().view(-1)[5]) == 9.0 + 0.5  # p[1, 2] = base[2, 1] = 9
    dirs.restore([p], 1, token)
    assert torch.equal(p, base.t())
    g = torch.zeros(3, 4).t()
    dirs.accumulate(torch.tensor([1.0, 2.0]), [g])
    expected = torch.zeros(12)
    expected[1], expected[5] = 2.0, 4.0
    assert torch.equal(g.reshape(-1), expected)
    r = RandomDirections([p], seed=0, q=1, mus=[1.0])
    before = p.clone()
    r.add_to([p], 0, [1.0])
    torch.testing.assert_close(p, before + r.direction(0, 0))
