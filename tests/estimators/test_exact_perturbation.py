"""ExactRademacher's whole Directions interface follows its own perturbation (the involution):
``perturbed_stack`` holds the values ``perturb`` sets, a subset perturbs exactly as its parent,
and every evaluator computes the losses the sequential loop computes."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import Objective
from zeroth.distributed import split
from zeroth.engine import AutoEvaluator, BatchedEvaluator, SequentialEvaluator
from zeroth.estimators.exact_perturbation import ExactRademacher


def make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # values of both signs, near zero (below 2a: not all perturbed) and large (ulp > a in bf16)
    a = torch.randn(5, 7, generator=g, dtype=torch.float64)
    b = torch.cat(
        [
            torch.randn(9, generator=g, dtype=torch.float64) * 1e-3,
            torch.tensor([0.0, -0.0, 300.0, 1.0, -1.0], dtype=torch.float64),
        ]
    )
    return [a.to(dtype), b.to(dtype)]


CASES = [
    (dtype, antithetic, masked)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    for antithetic in (True, False)
    for masked in (False, True)
]


def make_dirs(params, antithetic, masked, q=4, mu=1e-3):
    masks = [torch.tensor([0, 3, 8, 34]), None] if masked else None
    return ExactRademacher(params, seed=1234, q=q, mus=[mu, 2 * mu], antithetic=antithetic, masks=masks)


def perturbed_by_perturb(dirs, params, e):
    work = [p.clone() for p in params]
    with torch.no_grad():
        token = dirs.perturb(work, e)
        got = [w.clone() for w in work]
        dirs.restore(work, e, token)
    assert all(torch.equal(w.view(torch.uint8), p.view(torch.uint8)) for w, p in zip(work, params))
    return got


@pytest.mark.parametrize("dtype,antithetic,masked", CASES)
def test_perturbed_stack_holds_the_values_perturb_sets(dtype, antithetic, masked):
    params = make_params(dtype)
    dirs = make_dirs(params, antithetic, masked)
    n = len(dirs)
    for lo, hi in [(0, n), (1, n - 1)]:
        stacks = dirs.perturbed_stack(params, lo, hi)
        for e in range(lo, hi):
            want = perturbed_by_perturb(dirs, params, e)
            for st, w in zip(stacks, want):
                assert torch.equal(st[e - lo].view(torch.uint8), w.view(torch.uint8)), (e, st[e - lo], w)
    # the stacks moved what the involution moves, not θ + μ·direction
    moved = perturbed_by_perturb(dirs, params, 0)
    assert not torch.equal(moved[1], params[1])


@pytest.mark.parametrize("dtype,antithetic,masked", CASES)
def test_a_subset_perturbs_exactly_as_its_parent(dtype, antithetic, masked):
    params = make_params(dtype)
    dirs = make_dirs(params, antithetic, masked, q=5)
    ids = torch.tensor([1, 3, 4])
    for sub in (
        dirs.subset(ids),
        dirs.subset(ids).to_devices([p.device for p in params]),
        pickle.loads(pickle.dumps(dirs.subset(ids))).to_devices([p.device for p in params]),
        dirs.subset(ids).subset(torch.tensor([0, 2])),
        dirs.to_devices([p.device for p in params]),
    ):
        picked = ids if sub.num_directions == 3 else (ids[[0, 2]] if sub.num_directions == 2 else torch.arange(5))
        m = sub.num_directions
        assert len(sub) == m * dirs.num_signs
        for k, i in enumerate(picked.tolist()):
            for s in range(dirs.num_signs):
                got = perturbed_by_perturb(sub, params, s * m + k)
                want = perturbed_by_perturb(dirs, params, s * dirs.num_directions + i)
                assert all(torch.equal(u.view(torch.uint8), v.view(torch.uint8)) for u, v in zip(got, want))
            stacks = sub.perturbed_stack(params, k, k + 1)
            want = perturbed_by_perturb(dirs, params, i)
            assert all(torch.equal(st[0].view(torch.uint8), w.view(torch.uint8)) for st, w in zip(stacks, want))


def test_a_subsets_directions_and_gradient_are_the_parents():
    params = make_params(torch.bfloat16)
    dirs = make_dirs(params, True, False, q=5)
    ids = torch.tensor([0, 2, 3])
    sub = dirs.subset(ids)
    for k, i in enumerate(ids.tolist()):
        for j in range(len(params)):
            assert torch.equal(sub.direction(k, j), dirs.direction(i, j))
    coeffs = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    full = torch.zeros(5, dtype=torch.float64)
    full[ids] = coeffs
    g_sub, g_all = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    sub.accumulate(coeffs, g_sub)
    dirs.accumulate(full, g_all)
    assert all(torch.equal(a, b) for a, b in zip(g_sub, g_all))


def test_add_to_adds_the_applied_direction():
    params = make_params(torch.float16)
    dirs = make_dirs(params, True, True)
    ts = [torch.zeros_like(p) for p in params]
    dirs.add_to(ts, 2, [0.5, -2.0])
    assert torch.equal(ts[0], 0.5 * dirs.direction(2, 0))
    assert torch.equal(ts[1], -2.0 * dirs.direction(2, 1))


def small_problem(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    x, y = torch.randn(8, 6, dtype=dtype), torch.randint(0, 3, (8,))
    return model, Objective(model, F.cross_entropy, x, y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("antithetic", [True, False])
def test_batched_and_sequential_agree_on_exact_rademacher(dtype, antithetic):
    model, obj = small_problem(dtype)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    dirs = ExactRademacher(params, seed=7, q=6, mus=[1e-3] * len(params), antithetic=antithetic)
    assert BatchedEvaluator().supports(obj, dirs, params)
    seq = SequentialEvaluator().evaluate(obj, params, dirs)
    bat = BatchedEvaluator(chunk_size=4).evaluate(obj, params, dirs)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(bat.perturbed, seq.perturbed, rtol=tol, atol=tol)
    assert (seq.base is None) == (bat.base is None) == antithetic
    auto = AutoEvaluator().evaluate(obj, params, dirs)
    torch.testing.assert_close(auto.perturbed, seq.perturbed, rtol=tol, atol=tol)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    # the losses are those of the involution's points (differences of ±a with a = 2⁻¹⁰ on every moved entry)
    assert dirs.mus == [2.0**-10] * len(params)


def test_pieces_of_an_exact_rademacher_set_evaluated_apart_give_the_whole():
    model, obj = small_problem(torch.float32)
    params = list(model.parameters())
    dirs = ExactRademacher(params, seed=3, q=7, mus=[1e-3] * len(params), antithetic=True)
    whole = SequentialEvaluator().evaluate(obj, params, dirs)
    out = torch.full((len(dirs),), float("nan"), dtype=torch.float64)
    for piece in split.assign(split.blocks(dirs.num_directions, 4), [1.0, 2.0]):
        ids = split.members(piece)
        sub = pickle.loads(pickle.dumps(split.subset(dirs, ids)))  # as it travels to a worker
        part = SequentialEvaluator().evaluate(obj, params, split.to_device(sub, [p.device for p in params]))
        split.scatter(dirs, ids, part.perturbed, out)
    assert torch.equal(out, whole.perturbed)
