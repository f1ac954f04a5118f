"""ZOOptimizer: the torch.optim contract, checkpoints, failures, argument validation, training."""

import contextlib
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import CGE, RGE, SPSA, EvaluationError, NonFiniteLossWarning, Objective, ZOOptimizer
from zeroth.data import accuracy, batches, load_digits
from zeroth.models import DigitsMLP


def _setup(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(32, 4, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (32,), generator=g)
    return model, x, y


def _run(model, opt, x, y, steps, start=0):
    losses = []
    for t in range(start, start + steps):
        xb, yb = x[(t * 8) % 32 : (t * 8) % 32 + 8], y[(t * 8) % 32 : (t * 8) % 32 + 8]
        losses.append(float(opt.step(Objective(model, F.cross_entropy, xb, yb))))
    return losses


def test_is_a_torch_optimizer_and_updates_params():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    before = [p.clone() for p in model.parameters()]
    loss = opt.step(Objective(model, F.cross_entropy, x, y))
    assert loss.dim() == 0
    assert all(p.grad is not None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_sgd_step_is_minus_lr_times_the_estimate():
    model, x, y = _setup(dtype=torch.float64)
    obj = Objective(model, F.cross_entropy, x, y)
    before = [p.clone() for p in model.parameters()]
    opt = ZOOptimizer(model.parameters(), lr=0.5, estimator=CGE(mu=1e-6))
    opt.step(obj)
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p, b - 0.5 * p.grad, rtol=0, atol=1e-15)


def test_plain_closure_works():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.1, estimator="spsa", seed=1)
    loss = opt.step(lambda: F.cross_entropy(model(x), y))
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "scheduler",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0 / (t + 1)),
    ],
)
def test_lr_schedulers_drive_the_base_rule(scheduler):
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.1, base="sgd", momentum=0.9)
    sched = scheduler(opt)
    seen = []
    for _ in range(3):
        opt.step(Objective(model, F.cross_entropy, x, y))
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
        assert opt.base.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert len(set(seen)) > 1


def test_scheduler_lr_is_what_the_step_uses():
    model, x, y = _setup(dtype=torch.float64)
    opt = ZOOptimizer(model.parameters(), lr=1.0, estimator=CGE(mu=1e-6))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.25)
    opt.step(Objective(model, F.cross_entropy, x, y))
    sched.step()
    before = [p.clone() for p in model.parameters()]
    opt.step(Objective(model, F.cross_entropy, x, y))
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p, b - 0.25 * p.grad, rtol=0, atol=1e-15)


def test_param_groups_with_per_group_options():
    model, x, y = _setup(dtype=torch.float64)
    first, second = model[0], model[2]
    opt = ZOOptimizer(
        [{"params": first.parameters(), "lr": 0.0}, {"params": second.parameters(), "mu": 1e-6, "momentum": 0.5}],
        lr=0.1,
        estimator=CGE(mu=1e-4),
    )
    frozen = [p.clone() for p in first.parameters()]
    moved = [p.clone() for p in second.parameters()]
    opt.step(Objective(model, F.cross_entropy, x, y))
    assert all(torch.equal(a, b) for a, b in zip(frozen, first.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(moved, second.parameters()))
    assert opt.base.param_groups[1]["momentum"] == 0.5
    _, mus, _ = opt.trainable()
    assert mus == [1e-4, 1e-4, 1e-6, 1e-6]  # group 0 falls back to the estimator's mu


def test_per_group_mu_gives_the_right_gradient():
    """A group with its own μ is estimated with it (checked against autograd in float64)."""
    model, x, y = _setup(dtype=torch.float64)
    obj = Objective(model, F.cross_entropy, x, y)
    exact = torch.autograd.grad(obj(), list(model.parameters()))
    opt = ZOOptimizer(
        [{"params": model[0].parameters(), "mu": 1e-6}, {"params": model[2].parameters(), "mu": 2e-6}],
        lr=0.0,
        estimator=RGE(q=400, mu=1.0, dist="gaussian"),  # a μ of 1.0 would ruin it if it were used
        seed=0,
    )
    opt.step(obj)
    cos = torch.nn.functional.cosine_similarity(
        torch.cat([p.grad.reshape(-1) for p in model.parameters()]), torch.cat([g.reshape(-1) for g in exact]), dim=0
    )
    assert float(cos) > 0.75  # RGE with q=400 over 44 coordinates: cos ≈ sqrt(q/(q+d)) ≈ 0.95


def test_frozen_parameters_are_left_alone():
    model, x, y = _setup()
    model[0].weight.requires_grad_(False)
    w = model[0].weight.clone()
    opt = ZOOptimizer(model.parameters(), lr=0.1, seed=0)
    opt.step(Objective(model, F.cross_entropy, x, y))
    assert torch.equal(model[0].weight, w) and model[0].weight.grad is None
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert opt.num_evaluations == d + 1


@pytest.mark.parametrize("estimator", [CGE(), RGE(q=3, dist="sphere"), SPSA()])
@pytest.mark.parametrize("base,kwargs", [("sgd", dict(momentum=0.9, weight_decay=1e-3)), ("adam", {})])
def test_checkpoint_resume_is_bit_identical(estimator, base, kwargs):
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.05, estimator=estimator, base=base, seed=3, **kwargs)
    _run(model, opt, x, y, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    straight = _run(model, opt, x, y, 4, start=3)
    final = [p.clone() for p in model.parameters()]

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model2, _, _ = _setup(seed=99)  # different init, overwritten by the checkpoint
    model2.load_state_dict(ckpt["model"])
    opt2 = ZOOptimizer(model2.parameters(), lr=0.05, estimator=estimator, base=base, seed=12345, **kwargs)
    opt2.load_state_dict(ckpt["opt"])
    resumed = _run(model2, opt2, x, y, 4, start=3)
    assert resumed == straight
    assert all(torch.equal(a, b) for a, b in zip(final, model2.parameters()))


def test_same_seed_same_run_different_seed_different_run():
    runs = []
    for seed in (5, 5, 6):
        model, x, y = _setup()
        opt = ZOOptimizer(model.parameters(), lr=0.05, estimator=RGE(q=2), seed=seed)
        runs.append(_run(model, opt, x, y, 3))
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_scheduler_state_survives_resume():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    _run(model, opt, x, y, 2)
    sched.step()
    sd = opt.state_dict()
    opt2 = ZOOptimizer(model.parameters(), lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.base.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize("bad_at", ["base", "perturbed"])
def test_nan_loss_leaves_params_and_state_untouched(bad_at):
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.05, base="adam", estimator=RGE(q=2), seed=0)
    _run(model, opt, x, y, 2)
    params = [p.clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        loss = F.cross_entropy(model(x), y)
        return loss * float("nan") if (bad_at == "base") == (calls["n"] == 1) else loss

    with pytest.raises(EvaluationError, match="non-finite"):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    after = opt.state_dict()
    assert torch.equal(after["zeroth"]["generator"], state["zeroth"]["generator"])
    for k, v in state["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(after["state"][k][name]), torch.as_tensor(t))


def test_on_failure_omit_warns_and_leaves_the_step_out():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.05, on_failure="omit")
    params = [p.clone() for p in model.parameters()]
    with pytest.warns(NonFiniteLossWarning):
        assert opt.step(lambda: torch.tensor(float("inf"))) is None
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert opt.zo_steps == 0


def test_crashing_closure_leaves_optimizer_untouched():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.05, base="adam", estimator=SPSA(), seed=0)
    _run(model, opt, x, y, 1)
    gen = opt.generator.get_state()
    params = [p.clone() for p in model.parameters()]
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("solver died")
        return F.cross_entropy(model(x), y)

    with pytest.raises(OSError, match="solver died"):
        opt.step(closure)
    assert torch.equal(opt.generator.get_state(), gen)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert opt.zo_steps == 1


BAD_CONSTRUCTION = [
    (dict(lr=-0.1), ValueError, r"Invalid learning rate"),
    (dict(lr=float("nan")), ValueError, r"Invalid learning rate"),
    (dict(estimator="newton"), ValueError, r"estimator: unknown estimator 'newton'"),
    (dict(estimator=3), TypeError, r"estimator must be"),
    (dict(evaluator="gpu-magic"), ValueError, r"evaluator: unknown evaluator"),
    (dict(base="lbfgs2"), ValueError, r"base: unknown optimizer"),
    (dict(base=int), TypeError, r"base must be"),
    (dict(momentum=-0.5), ValueError, r"Invalid momentum value"),
    (dict(betas_typo=1), TypeError, r"base optimizer SGD rejected its options \['betas_typo'\]"),
    (dict(nan_policy="ignore"), ValueError, r"Invalid nan_policy value"),
    (dict(on_failure="skip"), ValueError, r"Invalid on_failure value"),
    (dict(on_failure="propagate"), ValueError, r"Invalid on_failure value"),
    (dict(on_failure="omit", nan_policy="skip"), ValueError, r"either on_failure or nan_policy"),
    (dict(seed=1, generator=torch.Generator()), ValueError, r"either seed or generator"),
    (dict(generator=1), TypeError, r"generator must be a torch.Generator"),
    (dict(seed="abc"), TypeError, r"seed must be an int"),
    (dict(mu=0.0), ValueError, r"Invalid mu value"),
    (dict(sparsity=object()), TypeError, r"sparsity must provide select"),
    (dict(inplace=1), TypeError, r"inplace must be a bool"),
    (dict(inplace=True, base="adam"), ValueError, r"base: inplace=True applies SGD itself"),
    (dict(inplace=True, momentum=0.9), ValueError, r"momentum: inplace=True has no momentum buffer"),
    (
        dict(inplace=True, evaluator="batched"),
        ValueError,
        r"evaluator: inplace=True evaluates with SequentialEvaluator",
    ),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD_CONSTRUCTION)
def test_bad_construction_names_the_argument(kwargs, exc, match):
    model, _, _ = _setup()
    with pytest.raises(exc, match=match):
        ZOOptimizer(model.parameters(), **{"lr": 0.1, **kwargs})


def test_params_are_validated():
    with pytest.raises(ValueError, match="empty parameter list"):
        ZOOptimizer([], lr=0.1)
    with pytest.raises(TypeError):
        ZOOptimizer(torch.zeros(3, requires_grad=True), lr=0.1)
    with pytest.raises(TypeError, match="floating-point parameters.*int64"):
        ZOOptimizer([torch.zeros(3, dtype=torch.long)], lr=0.1)
    with pytest.raises(ValueError, match="Invalid mu value"):
        ZOOptimizer([{"params": [torch.zeros(3, requires_grad=True)], "mu": -1}], lr=0.1)


def test_step_needs_an_objective_and_a_scalar():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="scalar loss"):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("estimator,sparse", [(CGE(mu=1e-4), False), (CGE(mu=1e-4), True)], ids=["cge", "cge-masked"])
def test_inplace_step_equals_the_stored_gradient_step(estimator, sparse):
    from zeroth import DynamicMask

    runs = []
    for inplace in (False, True):
        model, x, y = _setup(dtype=torch.float64)
        groups = [
            {"params": model[0].parameters(), "lr": 0.2, "weight_decay": 0.01},
            {"params": model[2].parameters(), "maximize": False},
        ]
        opt = ZOOptimizer(
            groups,
            lr=0.05,
            estimator=estimator,
            seed=3,
            inplace=inplace,
            sparsity=DynamicMask(0.5, resample_every=1) if sparse else None,
        )
        losses = _run(model, opt, x, y, 3)
        runs.append((losses, [p.detach().clone() for p in model.parameters()], [p.grad for p in model.parameters()]))
    (loss_a, params_a, grads_a), (loss_b, params_b, grads_b) = runs
    assert loss_b == pytest.approx(loss_a, rel=1e-9)
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)  # rounding, amplified by 1/mu
    assert all(g is not None for g in grads_a) and all(g is None for g in grads_b)  # no gradient stored


@pytest.mark.parametrize(
    "make",
    [lambda: SPSA(dist="gaussian"), lambda: RGE(q=3, dist="sphere"), lambda: RGE(q=2)],
    ids=["spsa-gaussian", "rge-sphere", "rge-default-gaussian"],
)
def test_inplace_refuses_gaussian_and_sphere_directions(make):
    """They could only be undone by subtraction (drift): refused, naming dist and the exact alternatives,
    at construction and (if the estimator is swapped later) at the step, with nothing changed."""
    model, x, y = _setup()
    with pytest.raises(
        ValueError,
        match=r"dist: inplace=True .* exactly only along Rademacher.*dist='rademacher'.*"
        r"inplace=False",
    ):
        ZOOptimizer(model.parameters(), lr=0.1, estimator=make(), inplace=True)
    ZOOptimizer(model.parameters(), lr=0.1, estimator=make(), inplace=False)  # fine: restored from a copy
    opt = ZOOptimizer(model.parameters(), lr=0.1, inplace=True, seed=0)
    opt.estimator = make()
    before = [p.detach().clone() for p in model.parameters()]
    gen = opt.generator.get_state()
    with pytest.raises(ValueError, match="dist='rademacher'"):
        opt.step(lambda: F.cross_entropy(model(x), y))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(opt.generator.get_state(), gen) and opt.zo_steps == 0


def _largest_new_storage(step, params):
    """Bytes of the largest tensor storage an op created during ``step()`` (views of ``params`` excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    own = {p.untyped_storage().data_ptr() for p in params}
    seen = [0]

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in own:
                    seen[0] = max(seen[0], t.untyped_storage().nbytes())
            return out

    with Spy():
        step()
    return seen[0]


@pytest.mark.parametrize("estimator", ["spsa", RGE(q=2, dist="rademacher")], ids=["spsa", "rge"])
def test_inplace_step_allocates_nothing_of_parameter_size(monkeypatch, estimator):
    """(CGE keeps one float64 loss and one int64 index per coordinate whatever the step does.)"""
    from zeroth.estimators import directions

    monkeypatch.setattr(directions, "CHUNK", 1000)
    torch.manual_seed(0)
    model = nn.Linear(300, 40)  # weight: 12,000 entries, 48 kB
    x, y = torch.randn(4, 300), torch.randint(0, 40, (4,))
    obj = Objective(model, F.cross_entropy, x, y)
    params = list(model.parameters())
    stored = ZOOptimizer(params, lr=0.1, estimator=estimator, seed=0, evaluator="sequential")
    lean = ZOOptimizer(params, lr=0.1, estimator=estimator, seed=0, inplace=True)
    assert _largest_new_storage(lambda: stored.step(obj), params) >= 48_000  # the gradient (and the copy)
    # a chunk's random bits (the kernels) or its signs unpacked to int64 (the references), or the input
    assert _largest_new_storage(lambda: lean.step(obj), params) <= 8 * 1000 + 4 * 300 * 4


def test_inplace_step_with_a_failed_evaluation_applies_nothing():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.05, estimator=SPSA(), seed=0, inplace=True)
    _run(model, opt, x, y, 1)
    gen, params = opt.generator.get_state(), [p.clone() for p in model.parameters()]
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        loss = F.cross_entropy(model(x), y)
        return loss * float("nan") if calls["n"] == 2 else loss

    with pytest.raises(EvaluationError, match="non-finite"):
        opt.step(closure)
    assert torch.equal(opt.generator.get_state(), gen) and opt.zo_steps == 1
    for a, b in zip(params, model.parameters()):  # restored by subtraction: equal up to rounding
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_zo_training_of_the_digits_mlp_reaches_85_percent():
    torch.manual_seed(0)
    data = load_digits()
    model = DigitsMLP(hidden=16)
    opt = ZOOptimizer(model.parameters(), lr=2e-2, base="adam", estimator=CGE(mu=1e-3), seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for xb, yb in batches(data.x_train, data.y_train, 64, g):
            opt.step(Objective(model, F.cross_entropy, xb, yb))
    assert accuracy(model, data.x_test, data.y_test) >= 0.85


# -- the torch.optim contract, checked with torch's own optimizer test inputs ---------------------
from torch.testing._internal import common_optimizers as torch_optims  # noqa: E402

_BASES = {
    "sgd": torch_optims.optim_inputs_func_sgd,
    "adam": torch_optims.optim_inputs_func_adam,
    "adamw": torch_optims.optim_inputs_func_adamw,
    "rmsprop": torch_optims.optim_inputs_func_rmsprop,
    "adagrad": torch_optims.optim_inputs_func_adagrad,
}
_TORCH_INPUTS = [
    (name, inp)
    for name, fn in _BASES.items()
    for inp in fn("cpu")
    if not {"capturable", "fused", "foreach", "differentiable", "decoupled_weight_decay"} & set(inp.kwargs)
    and not isinstance(inp.kwargs.get("lr"), torch.Tensor)
]


@pytest.mark.parametrize("base,inp", _TORCH_INPUTS, ids=[f"{b}-{i.desc}" for b, i in _TORCH_INPUTS])
def test_torch_optimizer_inputs_run_and_resume(base, inp):
    """Every configuration torch tests its own optimizers with: keyword/positional closure, shared
    param_groups/state, state_dict round trip (bit-identical continuation)."""
    model, x, y = _setup(dtype=torch.float64)
    obj = Objective(model, F.cross_entropy, x, y)
    kwargs = dict(inp.kwargs)
    opt = ZOOptimizer(model.parameters(), estimator=SPSA(mu=1e-4), base=base, seed=0, **kwargs)
    assert opt.param_groups is opt.base.param_groups and opt.state is opt.base.state
    opt.step(closure=obj)
    opt.step(obj)
    assert len(opt.state) > 0 or base == "sgd"  # Adam's moments are visible in optimizer.state
    sd = copy.deepcopy(opt.state_dict())
    snapshot = [p.detach().clone() for p in model.parameters()]
    ref = [float(opt.step(closure=obj)) for _ in range(2)]
    with torch.no_grad():
        for p, s in zip(model.parameters(), snapshot):
            p.copy_(s)
    opt2 = ZOOptimizer(model.parameters(), estimator=SPSA(mu=1e-4), base=base, seed=7, **kwargs)
    opt2.load_state_dict(sd)
    assert [float(opt2.step(closure=obj)) for _ in range(2)] == ref


def test_torch_error_inputs_raise_the_same_errors():
    for err in torch_optims.get_error_inputs_for_all_optims("cpu", torch.float32):
        inp = err.optimizer_error_input
        params = inp.params if inp.params is not None else [nn.Parameter(torch.randn(2))]
        if err.error_type is UserWarning:
            with pytest.warns(UserWarning, match=err.error_regex):
                ZOOptimizer(params, **inp.kwargs)
        else:
            with pytest.raises(err.error_type, match=err.error_regex):
                ZOOptimizer(params, **inp.kwargs)


def test_add_param_group_moves_the_new_group_before_and_after_load_state_dict():
    model, x, y = _setup()
    obj = Objective(model, F.cross_entropy, x, y)
    opt = ZOOptimizer(model[0].parameters(), lr=0.1, base="adam", estimator=SPSA(), seed=0)
    opt.step(obj)
    opt.add_param_group({"params": model[2].parameters(), "lr": 0.05})  # progressive unfreezing
    assert len(opt.base.param_groups) == 2 and opt.param_groups[1]["mu"] is None
    head = [p.detach().clone() for p in model[2].parameters()]
    opt.step(obj)
    assert all(not torch.equal(a, b) for a, b in zip(head, model[2].parameters()))
    assert all(p in opt.state for p in model[2].parameters())  # the base rule's state, seen by tools
    opt.load_state_dict(opt.state_dict())
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})
    assert len(opt.param_groups) == 3 and opt.param_groups is opt.base.param_groups


def test_step_hooks_zero_grad_and_keyword_closure():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.1, estimator="spsa", seed=0)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", sorted(kwargs))))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", sorted(kwargs))))
    global_calls = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda o, a, k: global_calls.append(o))
    try:
        opt.step(closure=lambda: F.cross_entropy(model(x), y))
    finally:
        handle.remove()
    assert calls == [("pre", ["closure"]), ("post", ["closure"])]
    assert global_calls == [opt]  # once: the base rule's own step does not fire hooks again
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_estimate_then_step_equals_one_step():
    runs = []
    for split in (False, True):
        for inplace in (False, True):
            model, x, y = _setup(dtype=torch.float64)
            opt = ZOOptimizer(model.parameters(), lr=0.1, estimator=SPSA(mu=1e-4), seed=0, inplace=inplace)
            obj = Objective(model, F.cross_entropy, x, y)
            if split:
                loss = opt.estimate(obj)
                assert opt.step() is None
            else:
                loss = opt.step(obj)
            runs.append((float(loss), [p.detach().clone() for p in model.parameters()]))
    for (la, pa), (lb, pb) in ((runs[0], runs[2]), (runs[1], runs[3])):
        assert la == lb and all(torch.equal(a, b) for a, b in zip(pa, pb))
    with pytest.raises(TypeError, match="needs a closure"):
        ZOOptimizer(_setup()[0].parameters(), lr=0.1).step()


def test_lr_schedulers_all_run():
    """Every scheduler in torch.optim.lr_scheduler drives the ZOOptimizer's (shared) groups."""
    makers = {
        "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.9**t),
        "MultiplicativeLR": lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda t: 0.9),
        "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, 1),
        "MultiStepLR": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 2]),
        "ConstantLR": lambda o: torch.optim.lr_scheduler.ConstantLR(o, 0.5, total_iters=2),
        "LinearLR": lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.5, total_iters=3),
        "ExponentialLR": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9),
        "PolynomialLR": lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=4),
        "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 4),
        "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, step_size_up=2),
        "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, total_steps=10),
        "CosineAnnealingWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 2),
        "SequentialLR": lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.ConstantLR(o, 0.5, total_iters=1),
                torch.optim.lr_scheduler.ExponentialLR(o, 0.9),
            ],
            [1],
        ),
        "ChainedScheduler": lambda o: torch.optim.lr_scheduler.ChainedScheduler(
            [torch.optim.lr_scheduler.ConstantLR(o, 0.5, total_iters=1), torch.optim.lr_scheduler.ExponentialLR(o, 0.9)]
        ),
        "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),
    }
    for name, make in makers.items():
        model, x, y = _setup()
        opt = ZOOptimizer(model.parameters(), lr=0.1, estimator="spsa", seed=0, base="sgd", momentum=0.9)
        sched = make(opt)
        lrs = []
        for _ in range(4):
            opt.step(closure=Objective(model, F.cross_entropy, x, y))
            sched.step(1.0) if name == "ReduceLROnPlateau" else sched.step()
            lrs.append(opt.base.param_groups[0]["lr"])
        assert len(set(lrs)) > 1, name


def test_default_step_writes_into_the_existing_grad():
    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.1, estimator="spsa", seed=0)
    opt.step(Objective(model, F.cross_entropy, x, y))
    grads = [p.grad for p in model.parameters()]
    opt.step(Objective(model, F.cross_entropy, x, y))
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))  # the same tensors: no second gradient


def test_inplace_without_an_estimator_is_spsa():
    model, _, _ = _setup()
    assert isinstance(ZOOptimizer(model.parameters(), lr=0.1, inplace=True).estimator, SPSA)
    assert isinstance(ZOOptimizer(model.parameters(), lr=0.1).estimator, CGE)


@pytest.mark.parametrize("closure", ["backward", "zero_grad-backward", "enable_grad-backward"])
def test_closure_calling_backward_raises_a_zeroth_error(closure):
    from zeroth import ZerothError

    model, x, y = _setup()
    opt = ZOOptimizer(model.parameters(), lr=0.1, estimator="spsa", inplace=True, seed=0)
    before = [p.detach().clone() for p in model.parameters()]

    def f():
        if closure.startswith("zero_grad"):
            opt.zero_grad()
        with torch.enable_grad() if closure.startswith("enable_grad") else torch.no_grad():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        return loss

    with pytest.raises(ZerothError, match="closure called backward.*automatic_optimization = False"):
        opt.step(f)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


# -- exact in-place restore ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_inplace_step_at_lr_zero_is_bitwise_in_every_dtype(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8)).to(dtype)
    with torch.no_grad():
        model[0].bias.zero_()
        model[0].bias[:3] = -0.0
        model[2].weight.mul_(40.0)  # large values: beyond bf16's exact ±a range
    x, y = torch.randn(16, 64, dtype=dtype), torch.randint(0, 8, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    opt = ZOOptimizer(model.parameters(), lr=0.0, inplace=True, seed=0, weight_decay=0.0)
    for _ in range(20):
        opt.step(lambda: F.cross_entropy(model(x).float(), y))
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a.view(torch.uint8), b.detach().view(torch.uint8))  # bit patterns, -0.0 included


def test_exact_involution_against_a_slow_reference():
    """Each coordinate: x ± σ(x)·a exactly representable (checked with fractions) ⇒ moved there, else kept."""
    from fractions import Fraction

    import numpy as np

    from zeroth.estimators.exact_perturbation import ExactRademacher, _rademacher_words, _unpack

    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randn(600, generator=g) * 0.01,
            torch.randn(200, generator=g) * 30,
            torch.tensor([0.0, -0.0, 1e-30, 2.0**-9, 2.0**-9 - 2.0**-33]),
        ]
    ).to(torch.float32)
    params = [x.clone()]
    dirs = ExactRademacher(params, seed=11, q=1, mus=[1e-3], antithetic=True)
    a = dirs.mus[0]
    assert a == 2.0**-10
    bits = _unpack(_rademacher_words(11, 0, 0, 0, x.numel(), x.device), 0, x.numel()).tolist()
    for sign, e in ((1, 0), (-1, 1)):
        out = params[0].clone()
        dirs.perturb([out], e)
        for k, v in enumerate(x.tolist()):
            r = sign * (2 * bits[k] - 1)
            sigma = -1 if (Fraction(v) / Fraction(a)).__floor__() % 2 else 1
            target = Fraction(v) + r * sigma * Fraction(a)
            exact = Fraction(float(np.float32(float(target)))) == target
            neg_zero = v == 0.0 and np.signbit(np.float32(x[k].item()))
            want = float(target) if exact and not neg_zero else v
            assert np.float32(out[k].item()).tobytes() == np.float32(want).tobytes() or (
                want == v and out[k] == x[k] and np.signbit(out[k].item()) == np.signbit(x[k].item())
            ), k
        dirs.restore([out], e, None)
        assert torch.equal(out.view(torch.int32), x.view(torch.int32))


def test_exact_inplace_step_equals_the_stored_gradient_step_on_the_same_directions():
    """The fused MeZO step (exact directions, update from the applied perturbation) equals accumulate + torch SGD."""
    from zeroth.estimators.exact_perturbation import ExactRademacher

    class Exact(SPSA):
        def directions(self, params, *, mus=None, generator=None, masks=None):
            d = super().directions(params, mus=mus, generator=generator, masks=masks)
            return ExactRademacher.from_directions(d, params)

    runs = []
    for inplace in (False, True):
        model, x, y = _setup(dtype=torch.float64)
        groups = [
            {"params": model[0].parameters(), "lr": 0.2, "weight_decay": 0.01},
            {"params": model[2].parameters(), "maximize": False},
        ]
        opt = ZOOptimizer(
            groups,
            lr=0.05,
            estimator=Exact(mu=1e-4) if not inplace else SPSA(mu=1e-4),
            seed=3,
            inplace=inplace,
            evaluator="sequential" if not inplace else "auto",
        )
        losses = _run(model, opt, x, y, 3)
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    (la, pa), (lb, pb) = runs
    assert lb == pytest.approx(la, rel=1e-12)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("estimator", ["spsa", "rge4-onesided"])
def test_inplace_step_is_the_same_with_the_reference_ops(dtype, estimator):
    """The fused kernels (zeroth.ops.rademacher_*) and their PyTorch references (what runs without
    a compiler) give the same parameters bitwise, weight decay, two groups and a mask included."""
    from zeroth import ops
    from zeroth.sparsity import DynamicMask

    runs = []
    for reference_only in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(70, 33), nn.Tanh(), nn.Linear(33, 8)).to(dtype)
        x, y = torch.randn(16, 70, dtype=dtype), torch.randint(0, 8, (16,))
        est = SPSA(mu=1e-3) if estimator == "spsa" else RGE(q=4, mu=1e-3, dist="rademacher", antithetic=False)
        groups = [{"params": model[0].parameters(), "weight_decay": 0.05}, {"params": model[2].parameters()}]
        opt = ZOOptimizer(
            groups,
            lr=1e-2,
            estimator=est,
            inplace=True,
            seed=0,
            sparsity=DynamicMask(0.5, model=model) if estimator != "spsa" else None,
        )

        def loss(model=model, x=x, y=y):
            return F.cross_entropy(model(x).float(), y)

        with ops.reference_only() if reference_only else contextlib.nullcontext():
            for _ in range(3):
                opt.step(loss)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_inplace_bf16_transformer_drift_is_zero():
    transformers = pytest.importorskip("transformers", reason="the [hf] extra (CI installs it)")
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=32,
    )
    model = transformers.OPTForCausalLM(cfg).to(torch.bfloat16)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    opt = ZOOptimizer(model.parameters(), lr=0.0, inplace=True, seed=0)
    for _ in range(10):
        opt.step(Objective(model, inputs={"input_ids": ids, "labels": ids}))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# -- Objective for real batches ------------------------------------------------------------
def test_objective_takes_mapping_batches_and_output_loss():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, features, labels=None, extra=None):
            logits = self.lin(features["x"] if isinstance(features, dict) else features)
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = F.cross_entropy(logits, labels)
            return out

    model = Model()
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    batch = {"features": {"x": x}, "labels": y}  # nested structure
    obj = Objective(model, inputs=batch)
    torch.testing.assert_close(obj(), F.cross_entropy(model.lin(x), y))
    assert not obj.standard_form
    custom = Objective(model, lambda out, b: F.cross_entropy(out["logits"], b["labels"]), batch, targets=batch)
    torch.testing.assert_close(custom(), obj())
    assert Objective(model.lin, F.cross_entropy, x, y).standard_form
    with pytest.raises(ValueError, match="without a loss"):
        Objective(model, inputs={"features": x})()
    with pytest.raises(ValueError, match="targets: given without a loss_fn"):
        Objective(model, None, batch, targets=y)
    opt = ZOOptimizer(model.parameters(), lr=0.1, inplace=True, seed=0)
    assert torch.isfinite(opt.step(obj))
