"""Every evaluator agrees with SequentialEvaluator (the perturb-evaluate-restore loop) — one suite for all."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import CGE, RGE, SPSA, Objective, ZOOptimizer, estimate_gradient
from zeroth.engine import AutoEvaluator, BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator
from zeroth.models import DigitsCNN, DigitsMLP, resnet20

from ..conftest import cosine

EVALUATORS = [FeatureReuseEvaluator(), BatchedEvaluator(chunk_size=7)]  # chunk_size=7: chunks end inside parameters


def _mse(out, t):
    return F.mse_loss(out, F.one_hot(t, out.shape[-1]).to(out.dtype))


def _mixed():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.GELU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(6),
        nn.Linear(6, 10),
    )


def _bn_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.BatchNorm1d(12), nn.SiLU(), nn.Linear(12, 10))


MODELS = {
    "digits_cnn": (lambda: DigitsCNN(), F.cross_entropy, (1, 8, 8)),
    "digits_cnn_bn": (lambda: DigitsCNN(batch_norm=True), F.cross_entropy, (1, 8, 8)),
    "digits_cnn_bn_eval": (lambda: DigitsCNN(batch_norm=True).eval(), F.cross_entropy, (1, 8, 8)),
    "mlp_mse": (lambda: DigitsMLP(hidden=12), _mse, (1, 8, 8)),
    "bn_mlp": (_bn_mlp, nn.CrossEntropyLoss(), (1, 8, 8)),
    "mixed": (_mixed, F.cross_entropy, (1, 8, 8)),
    "resnet20": (lambda: resnet20(), F.cross_entropy, (3, 32, 32)),
}


def _problem(name, dtype, batch=12, per_param=None, seed=0):
    make, loss, shape = MODELS[name]
    torch.manual_seed(seed)
    model = make().to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((batch,) + shape, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (batch,), generator=g)
    params = list(model.parameters())
    masks = None
    if per_param is not None:  # a sample of coordinates of every parameter, keeps big models fast
        masks = [torch.randperm(p.numel(), generator=g)[:per_param] for p in params]
    return model, Objective(model, loss, x, y), params, masks


def _cases():
    for name in MODELS:
        per = 6 if name == "resnet20" else None
        batch = 2 if name == "resnet20" else 12
        yield name, per, batch


@pytest.mark.parametrize("evaluator", EVALUATORS, ids=repr)
@pytest.mark.parametrize("name,per_param,batch", list(_cases()), ids=lambda v: str(v))
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_losses_agree_with_sequential_in_float32(evaluator, name, per_param, batch, scheme):
    model, obj, params, masks = _problem(name, torch.float32, batch, per_param)
    dirs = CGE(mu=1e-3, scheme=scheme).directions(params, masks=masks)
    assert evaluator.supports(obj, dirs, params)  # every model here is one both fast paths compute
    before = [p.clone() for p in params]
    buffers = [b.clone() for b in model.buffers()]
    ref = SequentialEvaluator().evaluate(obj, params, dirs)
    ref_buffers = [b.clone() for b in model.buffers()]
    for b, v in zip(model.buffers(), buffers):
        b.copy_(v)
    got = evaluator.evaluate(obj, params, dirs)
    assert all(torch.equal(a, b) for a, b in zip(before, params))  # parameters bitwise unchanged
    # BN running statistics as after one forward at θ, for every evaluator and scheme (two-sided
    # schemes evaluate no point at θ: SequentialEvaluator then runs one forward there)
    for a, b in zip(ref_buffers, model.buffers()):
        assert torch.equal(a, b)
    assert (got.base is None) == (ref.base is None)
    torch.testing.assert_close(got.perturbed, ref.perturbed, rtol=1e-6, atol=0)


@pytest.mark.parametrize("evaluator", EVALUATORS, ids=repr)
@pytest.mark.parametrize("name,per_param,batch", list(_cases()), ids=lambda v: str(v))
def test_gradients_agree_with_sequential_and_autograd_in_float64(evaluator, name, per_param, batch):
    model, obj, params, masks = _problem(name, torch.float64, batch, per_param)
    est = CGE(mu=1e-4)  # float64 rounding of a loss difference: ~1e-16·ℓ/μ ≈ 1e-12, far below the tolerance
    assert evaluator.supports(obj, est.directions(params, masks=masks), params)
    _, ref, _ = estimate_gradient(obj, params, est, SequentialEvaluator(), masks=masks)
    _, got, _ = estimate_gradient(obj, params, est, evaluator, masks=masks)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
    if masks is None:  # and CGE through the evaluator matches autograd
        exact = torch.autograd.grad(obj(), params)
        assert cosine(got, exact) >= 0.999


@pytest.mark.parametrize("estimator", [RGE(q=5), RGE(q=3, dist="sphere", antithetic=True), SPSA()], ids=repr)
def test_batched_random_directions_agree_with_sequential(estimator):
    model, obj, params, _ = _problem("digits_cnn_bn", torch.float32)
    dirs = estimator.directions(params, generator=torch.Generator().manual_seed(3))
    ref = SequentialEvaluator().evaluate(obj, params, dirs)
    got = BatchedEvaluator(chunk_size=2).evaluate(obj, params, dirs)
    torch.testing.assert_close(got.perturbed, ref.perturbed, rtol=1e-6, atol=0)


def test_feature_reuse_declines_what_it_cannot_do_and_says_why():
    model, obj, params, _ = _problem("digits_cnn", torch.float32)
    fr = FeatureReuseEvaluator()
    cases = [
        ((lambda: obj(), None), "plain closure"),
        ((obj, RGE(q=2).directions(params)), "CGE coordinates only"),
        ((obj, None, [torch.zeros(3, requires_grad=True)]), "not a parameter"),
    ]
    drop = Objective(
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)), F.cross_entropy, obj.inputs, obj.targets
    )
    cases.append(((drop,), "Dropout is active"))
    half = Objective(DigitsCNN().to(torch.bfloat16), F.cross_entropy, obj.inputs.bfloat16(), obj.targets)
    cases.append(((half,), "bfloat16"))
    for args, reason in cases:
        support = fr.supports(*args)
        assert not support and reason in support.reason, (reason, support)
    assert BatchedEvaluator().supports(drop)  # copies share the base pass's mask through vmap(randomness="same")
    drop.model.eval()
    assert fr.supports(drop)


def test_auto_is_a_rule_not_a_measurement():
    model, obj, params, _ = _problem("digits_cnn", torch.float32)
    auto = AutoEvaluator()
    estimate_gradient(obj, params, CGE(), auto)
    assert isinstance(auto.last, FeatureReuseEvaluator)
    # digits CNN at batch 12: few activations, so on a CPU BatchedEvaluator keeps random directions
    for _ in range(2):
        estimate_gradient(obj, params, RGE(q=4), auto, generator=torch.Generator().manual_seed(0))
        assert isinstance(auto.last, BatchedEvaluator) and not auto.timings
    estimate_gradient(lambda: obj(), params, CGE(), auto)
    assert isinstance(auto.last, SequentialEvaluator)
    assert "FeatureReuseEvaluator(): a plain closure" in auto.explain()


def test_auto_moves_to_sequential_above_the_activation_rule(monkeypatch):
    import zeroth.engine.auto as auto_module

    monkeypatch.setattr(auto_module, "BATCHED_CPU_MAX_ACTIVATIONS", 10)
    model, obj, params, _ = _problem("digits_cnn", torch.float32)
    auto = AutoEvaluator()
    first = estimate_gradient(obj, params, RGE(q=3), auto, generator=torch.Generator().manual_seed(0))
    assert isinstance(auto.last, BatchedEvaluator)  # the key's first step counts activations
    second = estimate_gradient(obj, params, RGE(q=3), auto, generator=torch.Generator().manual_seed(0))
    assert isinstance(auto.last, SequentialEvaluator)  # then the rule applies, for good
    assert "activation elements" in auto.explain()
    torch.testing.assert_close(first[0], second[0])


def test_auto_with_tune_times_candidates_and_moves_batchnorm_statistics_once():
    model, obj, params, _ = _problem("bn_mlp", torch.float32)
    model.train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ref_losses = SequentialEvaluator().evaluate(
        obj, params, RGE(q=3).directions(params, generator=torch.Generator().manual_seed(0))
    )
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    auto = AutoEvaluator(tune=True)
    got = auto.evaluate(obj, params, RGE(q=3).directions(params, generator=torch.Generator().manual_seed(0)))
    assert len(next(iter(auto.timings.values()))) == 2  # two candidates ran
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-6, atol=1e-7)
    assert int(model.state_dict()["2.num_batches_tracked"]) == int(start["2.num_batches_tracked"]) + 1
    torch.testing.assert_close(got.perturbed, ref_losses.perturbed, rtol=1e-6, atol=0)


def test_auto_choice_is_saved_with_the_optimizer():
    model, obj, params, _ = _problem("digits_cnn", torch.float32)
    opt = ZOOptimizer(params, lr=0.01, estimator=RGE(q=2), seed=0)
    opt.step(obj)
    sd = opt.state_dict()
    opt2 = ZOOptimizer(params, lr=0.01, estimator=RGE(q=2), seed=1)
    opt2.load_state_dict(sd)
    assert opt2.evaluator._choice.keys() == opt.evaluator._choice.keys()
    assert [repr(v) for v in opt2.evaluator._choice.values()] == [repr(v) for v in opt.evaluator._choice.values()]


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (FeatureReuseEvaluator, dict(max_memory=10), "Invalid max_memory"),
        (BatchedEvaluator, dict(max_memory=-1), "Invalid max_memory"),
        (BatchedEvaluator, dict(chunk_size=0), "Invalid chunk_size"),
        (SequentialEvaluator, dict(restore="undo"), "Invalid restore"),
    ],
)
def test_bad_evaluator_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_explain_names_each_case_in_words_and_each_declined_evaluator_on_its_own_line():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    auto = AutoEvaluator()
    params = list(model.parameters())
    estimate_gradient(lambda: F.cross_entropy(model(x), y), params, CGE(), auto)
    estimate_gradient(Objective(model, F.cross_entropy, x, y), params, CGE(), auto)
    lines = auto.explain().splitlines()
    assert lines[0] == "a plain closure, Coordinates x 23: SequentialEvaluator(restore='exact')"  # 4·3 + 3 + 3·2 + 2
    assert lines[1].startswith("  not FeatureReuseEvaluator(): a plain closure")
    assert lines[2].startswith("  not BatchedEvaluator(): a plain closure")
    assert lines[3] == "Sequential on input (8, 4) torch.float32 (cpu), Coordinates x 23: FeatureReuseEvaluator()"
