"""The sequential evaluator: bitwise restoration, failures, common random numbers, buffers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import CGE, RGE, SPSA, Objective, SequentialEvaluator, estimate_gradient
from zeroth.engine import AutoEvaluator

from ..conftest import cosine


def _model(dtype=torch.float32, bn=False, dropout=False):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 5)]
    if bn:
        layers.append(nn.BatchNorm1d(5))
    layers.append(nn.Tanh())
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(5, 3))
    return nn.Sequential(*layers).to(dtype)


def _objective(model, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (10,), generator=g)
    return Objective(model, F.cross_entropy, x, y)


@pytest.mark.parametrize(
    "estimator", [CGE(), CGE(scheme="central"), RGE(q=4), RGE(q=3, dist="sphere", antithetic=True), SPSA()]
)
def test_parameters_are_restored_bitwise(estimator):
    model = _model()
    params = list(model.parameters())
    before = [p.clone() for p in params]
    estimate_gradient(
        _objective(model), params, estimator, SequentialEvaluator(), generator=torch.Generator().manual_seed(0)
    )
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_losses_equal_a_hand_written_loop():
    """The obvious reference: perturb one coordinate with +μ, evaluate, put the value back."""
    model = _model(torch.float64)
    obj = _objective(model, torch.float64)
    params = list(model.parameters())
    est = CGE(mu=1e-3, scheme="central")
    dirs = est.directions(params)
    losses = SequentialEvaluator().evaluate(obj, params, dirs)
    expected = []
    for sign in (1.0, -1.0):
        for p in params:
            for k in range(p.numel()):
                with torch.no_grad():
                    old = p.view(-1)[k].item()
                    p.view(-1)[k] = old + sign * 1e-3
                    expected.append(obj().item())
                    p.view(-1)[k] = old
    assert losses.base is None
    assert losses.perturbed.tolist() == expected


def test_inverse_restore_is_close_but_copy_free():
    model = _model()
    params = list(model.parameters())
    before = [p.clone() for p in params]
    estimate_gradient(_objective(model), params, SPSA(mu=1e-2), SequentialEvaluator(restore="inverse"))
    for a, b in zip(before, params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fail_at", [0, 7])
def test_raising_objective_restores_params_and_names_the_evaluation(fail_at):
    model = _model()
    params = list(model.parameters())
    before = [p.clone() for p in params]
    obj = _objective(model)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] == fail_at + 2:  # +1 for the base evaluation
            raise RuntimeError("simulator crashed")
        return obj()

    with pytest.raises(RuntimeError, match="simulator crashed") as info:
        estimate_gradient(closure, params, CGE(), SequentialEvaluator())
    assert any(f"raised at perturbed point {fail_at + 1} of" in n for n in getattr(info.value, "__notes__", []))
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_non_scalar_objective_is_rejected_clearly():
    model = _model()
    obj = _objective(model)
    with pytest.raises(ValueError, match="objective must return a scalar loss"):
        estimate_gradient(lambda: model(obj.inputs), list(model.parameters()), CGE(), SequentialEvaluator())


def test_batchnorm_running_stats_change_once_per_step():
    model = _model(bn=True)
    obj = _objective(model)
    reference = _model(bn=True)
    with torch.no_grad():
        reference(obj.inputs)  # one forward at θ: what a first-order step does to the buffers
    estimate_gradient(obj, list(model.parameters()), CGE(), SequentialEvaluator())
    bn, ref = model[1], reference[1]
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1


def test_dropout_uses_common_random_numbers():
    """Every evaluation of a step sees the same dropout mask, so CGE matches autograd for that mask."""
    model = _model(torch.float64, dropout=True)
    obj = _objective(model, torch.float64)
    params = list(model.parameters())
    torch.manual_seed(123)
    exact = torch.autograd.grad(obj(), params)
    after_one_forward = torch.get_rng_state()
    torch.manual_seed(123)
    _, grads, _ = estimate_gradient(obj, params, CGE(mu=1e-7), SequentialEvaluator())
    assert cosine(grads, exact) > 1 - 1e-9
    assert torch.equal(torch.get_rng_state(), after_one_forward)  # RNG advanced as by one evaluation


def test_auto_falls_back_to_sequential_for_closures():
    model = _model()
    obj = _objective(model)
    auto = AutoEvaluator()
    estimate_gradient(lambda: obj(), list(model.parameters()), CGE(), auto)
    assert isinstance(auto.last, SequentialEvaluator)


def test_at_most_one_parameter_copy_is_alive_during_a_step():
    """An exact restore keeps one copy of the parameters per evaluation; the previous evaluation's
    copy is gone before the next one is made (else a step holds two copies: 4x inference, not 3x,
    in bench.memory's steady state)."""
    import gc
    import weakref

    from zeroth.estimators.directions import RandomDirections

    alive_at_perturb = []
    copies = []

    class Watched(RandomDirections):
        def perturb(self, params, e, exact=True):
            gc.collect()
            alive_at_perturb.append(sum(ref() is not None for ref in copies))
            token = super().perturb(params, e, exact=exact)
            copies.extend(weakref.ref(t) for t in token)
            return token

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    params = list(model.parameters())
    obj = Objective(model, F.cross_entropy, torch.randn(5, 4), torch.randint(0, 3, (5,)))
    dirs = Watched(params, seed=0, q=3, mus=[1e-3] * len(params), dist="rademacher", antithetic=True)
    SequentialEvaluator().evaluate(obj, params, dirs)
    assert len(alive_at_perturb) == 6 and alive_at_perturb == [0] * 6
