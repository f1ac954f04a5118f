"""Estimators against autograd, the unbiasedness of RGE, and argument validation (table-driven)."""

import math

import pytest
import torch
import torch.nn.functional as F

from zeroth import CGE, RGE, SPSA, Objective, SequentialEvaluator, estimate_gradient, zo_gradient, zo_jacobian
from zeroth.estimators import ESTIMATORS
from zeroth.models import DigitsMLP

from ..conftest import cosine, flat

BAD_ARGS = [
    (CGE, dict(mu=0.0), r"Invalid mu value"),
    (CGE, dict(mu=-1e-3), r"Invalid mu value"),
    (CGE, dict(mu=float("nan")), r"Invalid mu value"),
    (CGE, dict(scheme="backward"), r"Invalid scheme value"),
    (RGE, dict(q=0), r"Invalid q value"),
    (RGE, dict(q=2.5), r"Invalid q value"),
    (RGE, dict(mu=0), r"Invalid mu value"),
    (RGE, dict(dist="cauchy"), r"Invalid dist value"),
    (SPSA, dict(mu=-2.0), r"Invalid mu value"),
]


@pytest.mark.parametrize("cls,kwargs,match", BAD_ARGS)
def test_bad_arguments_name_the_argument(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_registry_by_name():
    assert isinstance(ESTIMATORS.create("cge", "estimator"), CGE)
    assert isinstance(ESTIMATORS.create("SPSA", "estimator", mu=1e-2), SPSA)
    with pytest.raises(ValueError, match="estimator: unknown estimator 'foo'"):
        ESTIMATORS.create("foo", "estimator")


def quadratic(A, b):
    return lambda x: 0.5 * x @ A @ x - b @ x


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_cge_on_quadratic_matches_exact_gradient(scheme):
    g = torch.Generator().manual_seed(1)
    n = 12
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    A, b = M @ M.T + n * torch.eye(n, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    exact = A @ x - b
    mu = 1e-3
    f0, grad, nfev = zo_gradient(quadratic(A, b), x, CGE(mu=mu, scheme=scheme))
    assert nfev == (2 * n if scheme == "central" else n + 1)
    err = float((grad - exact).abs().max())
    if scheme == "forward":  # error = μ/2 · A_kk exactly for a quadratic
        assert err == pytest.approx(mu / 2 * float(A.diagonal().max()), rel=1e-3)
    else:  # central differences are exact on a quadratic (up to rounding)
        assert err < 1e-8


def test_central_error_is_second_order():
    f = lambda x: torch.sin(x).sum() + (x**3).sum()  # noqa: E731
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    exact = torch.cos(x) + 3 * x**2
    errs = [float((zo_gradient(f, x, CGE(mu=mu, scheme="central"))[1] - exact).abs().max()) for mu in (1e-2, 5e-3)]
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.05)  # halving μ quarters the error


def _net_and_objective(dtype=torch.float64):
    torch.manual_seed(3)
    model = DigitsMLP(hidden=8).to(dtype)
    x = torch.rand(16, 64, dtype=dtype)
    y = torch.randint(0, 10, (16,))
    return model, Objective(model, F.cross_entropy, x, y)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_cge_on_network_matches_autograd(scheme):
    model, obj = _net_and_objective()
    params = list(model.parameters())
    exact = torch.autograd.grad(obj(), params)
    loss, grads, losses = estimate_gradient(obj, params, CGE(mu=1e-6, scheme=scheme), SequentialEvaluator())
    d = sum(p.numel() for p in params)
    assert losses.count == (2 * d if scheme == "central" else d + 1)
    assert cosine(grads, exact) > 1 - 1e-9
    assert float((flat(grads) - flat(exact)).norm() / flat(exact).norm()) < 1e-4


@pytest.mark.parametrize("dist", ["gaussian", "sphere"])
@pytest.mark.parametrize("antithetic", [False, True])
def test_rge_is_unbiased_for_the_smoothed_function(dist, antithetic):
    """On a quadratic, the smoothed gradient equals the gradient (E[u uᵀ] scaled right).

    Average many independent one-direction estimates and compare with a statistical
    tolerance: 6 standard errors of the mean, estimated from the samples themselves.
    """
    n, reps = 6, 4000
    A = torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64))
    b = torch.ones(n, dtype=torch.float64)
    x = torch.linspace(-1, 1, n, dtype=torch.float64)
    f = quadratic(A, b)
    exact = A @ x - b
    gen = torch.Generator().manual_seed(7)
    est = RGE(q=1, mu=1e-4, dist=dist, antithetic=antithetic)
    samples = torch.stack([zo_gradient(f, x, est, generator=gen)[1] for _ in range(reps)])
    mean, sem = samples.mean(0), samples.std(0) / math.sqrt(reps)
    assert bool(((mean - exact).abs() <= 6 * sem + 1e-6).all()), (mean, exact, sem)
    # and a biased scaling (e.g. forgetting the factor d of sphere directions) would be caught:
    assert float((mean - exact).norm()) < 0.25 * float(exact.norm())


def test_rge_directions_are_regenerated_not_stored():
    params = [torch.zeros(3, 4), torch.zeros(5)]
    dirs = RGE(q=3, dist="sphere").directions(params, generator=torch.Generator().manual_seed(0))
    u = [[dirs.direction(i, j) for j in range(2)] for i in range(3)]
    again = [[dirs.direction(i, j) for j in range(2)] for i in range(3)]
    for i in range(3):
        assert all(torch.equal(a, b) for a, b in zip(u[i], again[i]))
        assert float(flat(u[i]).norm()) == pytest.approx(1.0, abs=1e-6)
    assert not torch.equal(u[0][0], u[1][0])
    assert not any(isinstance(v, torch.Tensor) and v.numel() > 1 for v in vars(dirs).values())


def test_spsa_uses_rademacher_pairs():
    params = [torch.zeros(100)]
    est = SPSA(mu=1e-3)
    dirs = est.directions(params, generator=torch.Generator().manual_seed(0))
    assert len(dirs) == 2 and not dirs.needs_base
    u = dirs.direction(0, 0)
    assert set(u.unique().tolist()) == {-1.0, 1.0}


def test_masked_cge_equals_dense_restricted():
    model, obj = _net_and_objective()
    params = list(model.parameters())
    masks = [torch.tensor([0, 5, 17]), torch.tensor([1]), torch.tensor([], dtype=torch.long), torch.tensor([2, 3])]
    _, dense, _ = estimate_gradient(obj, params, CGE(mu=1e-6), SequentialEvaluator())
    _, sparse, losses = estimate_gradient(obj, params, CGE(mu=1e-6), SequentialEvaluator(), masks=masks)
    assert losses.count == 6 + 1
    for g_d, g_s, m in zip(dense, sparse, masks):
        keep = torch.zeros(g_d.numel(), dtype=torch.bool)
        keep[m] = True
        assert torch.equal(g_s.reshape(-1)[~keep], torch.zeros_like(g_s.reshape(-1)[~keep]))
        torch.testing.assert_close(g_s.reshape(-1)[keep], g_d.reshape(-1)[keep], rtol=0, atol=0)


def test_zo_jacobian_matches_autograd():
    W = torch.randn(3, 5, dtype=torch.float64)
    f = lambda x: torch.tanh(W @ x)  # noqa: E731
    x = torch.randn(5, dtype=torch.float64)
    y0, J, nfev = zo_jacobian(f, x, CGE(mu=1e-5, scheme="central"))
    exact = torch.autograd.functional.jacobian(f, x)
    assert nfev == 10
    torch.testing.assert_close(y0, f(x), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(J, exact, rtol=1e-7, atol=1e-8)


def changing_outputs(m_at_x, m_elsewhere, x0):
    """A function with ``m_at_x`` outputs at ``x0`` and ``m_elsewhere`` at every other point."""

    def f(x):
        m = m_at_x if torch.equal(x, x0) else m_elsewhere
        return x.sum() * torch.ones(m, dtype=x.dtype)

    return f


@pytest.mark.parametrize("m_at_x,m_elsewhere", [(1, 3), (3, 1), (2, 3)])
@pytest.mark.parametrize("estimator", [CGE(mu=1e-3), RGE(q=3, mu=1e-3)], ids=repr)
def test_zo_jacobian_refuses_a_changing_number_of_outputs(m_at_x, m_elsewhere, estimator):
    x = torch.randn(4, dtype=torch.float64)
    before = x.clone()
    with pytest.raises(
        ValueError,
        match=rf"fun returned {m_elsewhere} output\(s\) at evaluation point 0 .*"
        rf"{m_at_x} at x",
    ) as info:
        zo_jacobian(changing_outputs(m_at_x, m_elsewhere, x), x, estimator, generator=torch.Generator().manual_seed(0))
    assert f"({m_at_x},)" in str(info.value) and f"({m_elsewhere},)" in str(info.value)
    assert torch.equal(x, before)


def test_zo_jacobian_refuses_outputs_that_change_between_perturbed_points():
    calls = []

    def f(x):
        calls.append(1)
        return torch.ones(2 if len(calls) < 3 else 5, dtype=x.dtype)

    expected = r"fun returned 5 output\(s\) at evaluation point 2 .* 2 at evaluation point 0"
    with pytest.raises(ValueError, match=expected):
        zo_jacobian(f, torch.zeros(3, dtype=torch.float64), CGE(scheme="central"))


_sin_sum = lambda v: torch.sin(v).sum()  # noqa: E731


@pytest.mark.parametrize("zo", [zo_gradient, zo_jacobian])
@pytest.mark.parametrize(
    "x,estimator,generator,error,match",
    [
        (torch.ones(0), CGE(), None, ValueError, r"^x: empty tensor \(shape \(0,\)\)"),
        (torch.ones(2, 0), CGE(), None, ValueError, r"^x: empty tensor \(shape \(2, 0\)\)"),
        (torch.arange(3), CGE(), None, TypeError, r"^x must be a floating-point torch.Tensor, got dtype torch.int64"),
        ([1.0, 2.0], CGE(), None, TypeError, r"^x must be a floating-point torch.Tensor, got list"),
        (torch.ones(3), None, None, TypeError, r"^estimator must be an estimator name \(cge, rge, spsa\).*NoneType"),
        (
            torch.ones(3),
            CGE,
            None,
            TypeError,
            r"^estimator must be .*got the class CGE; pass an instance, CGE\(\.\.\.\)",
        ),
        (torch.ones(3), "bfgs", None, ValueError, r"^estimator: unknown estimator 'bfgs'; known: cge, rge, spsa"),
        (torch.ones(3), RGE(q=2), 0, TypeError, r"^generator must be a torch.Generator or None, got int"),
    ],
    ids=["empty", "empty-2d", "int", "list", "estimator-None", "estimator-class", "estimator-unknown", "generator-int"],
)
def test_functional_bad_arguments_name_the_argument(zo, x, estimator, generator, error, match):
    calls = []

    def fun(v):
        calls.append(1)
        return torch.sin(v).sum()

    with pytest.raises(error, match=match):
        zo(fun, x, estimator, generator=generator)
    assert calls == []  # refused before fun is called


@pytest.mark.parametrize("name,instance", [("cge", CGE()), ("CGE", CGE()), ("rge", RGE()), ("spsa", SPSA())])
def test_functional_takes_a_registry_name_like_zo_optimizer(name, instance):
    x = torch.linspace(-1, 1, 4, dtype=torch.float64)
    by_name = zo_gradient(_sin_sum, x, name, generator=torch.Generator().manual_seed(3))
    by_instance = zo_gradient(_sin_sum, x, instance, generator=torch.Generator().manual_seed(3))
    assert by_name[2] == by_instance[2]
    torch.testing.assert_close(by_name[1], by_instance[1], rtol=0, atol=0)
    jac_by_name = zo_jacobian(torch.sin, x, name, generator=torch.Generator().manual_seed(3))
    jac_by_instance = zo_jacobian(torch.sin, x, instance, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(jac_by_name[1], jac_by_instance[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "value,error,match",
    [
        (torch.ones(3), ValueError, r"^fun must return a scalar, got a tensor of shape \(3,\)"),
        ("a", TypeError, r"^fun must return a scalar \(tensor or float\), got str"),
        (torch.tensor(1 + 1j), TypeError, r"^fun must return a real number, got dtype torch.complex64"),
    ],
)
def test_zo_gradient_bad_value_of_fun_names_fun(value, error, match):
    with pytest.raises(error, match=match):
        zo_gradient(lambda v: value, torch.ones(3), CGE())


def test_zo_gradient_non_finite_value_gives_non_finite_entries_as_scipy():
    """A NaN value of fun is not refused (unlike ZOOptimizer): the entries it enters are NaN."""
    import scipy.optimize as scipy_optimize

    x = torch.tensor([0.5, 1.5], dtype=torch.float64)
    f = lambda v: float("nan") if float(v[1]) != 1.5 else float(torch.sin(v).sum())  # noqa: E731
    _, grad, _ = zo_gradient(f, x, CGE(mu=1e-6))
    expected = scipy_optimize.approx_fprime(x.numpy(), lambda a: f(torch.from_numpy(a)), 1e-6)
    assert bool(torch.isnan(grad[1])) and bool(torch.isnan(torch.tensor(expected[1])))
    assert torch.isfinite(grad[0]) and abs(float(grad[0]) - expected[0]) < 1e-7
