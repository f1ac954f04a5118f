"""Mask rules: selection, schedule, resume through ZOOptimizer, sparse CGE, the base rule, training."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import CGE, Objective, SequentialEvaluator, ZOOptimizer, estimate_gradient
from zeroth.data import accuracy, batches, load_digits
from zeroth.models import DigitsCNN
from zeroth.sparsity import DynamicMask, FixedMask, balanced_batch, count_selected, grasp_ratios


def _bn_net():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(48, 5),
    ).double()


def _data(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 5, (n,), generator=g)


RATIOS = {"0.weight": 0.5, "4.weight": 0.25}


def test_selects_the_ratio_per_layer_and_all_of_bn_and_biases():
    model = _bn_net()
    params = list(model.parameters())  # conv w, conv b, bn w, bn b, linear w, linear b
    masks = DynamicMask(RATIOS, model=model).select(params, 0, torch.Generator().manual_seed(0))
    assert [m is None for m in masks] == [False, True, True, True, False, True]
    assert masks[0].numel() == round(0.5 * 27) and masks[4].numel() == 0.25 * 240
    for m, p in ((masks[0], params[0]), (masks[4], params[4])):
        assert m.dtype == torch.long and torch.equal(m, torch.unique(m)) and int(m.max()) < p.numel()
    assert count_selected(masks, params) == 14 + 3 + 3 + 3 + 60 + 5


def test_a_number_applies_to_every_weight_with_or_without_a_model():
    model = _bn_net()
    params = list(model.parameters())
    a = DynamicMask(0.1, model=model).select(params, 0, torch.Generator().manual_seed(0))
    b = DynamicMask(0.1).select(params, 0, torch.Generator().manual_seed(0))
    for m1, m2 in zip(a, b):
        assert (m1 is None and m2 is None) or torch.equal(m1, m2)
    assert [m is None for m in a] == [False, True, True, True, False, True]


def test_masks_redraw_on_schedule_only():
    model = _bn_net()
    params = list(model.parameters())
    rule = DynamicMask(RATIOS, resample_every=3, model=model)
    gen = torch.Generator().manual_seed(0)
    drawn = [rule.select(params, t, gen)[4] for t in range(9)]
    for t in range(1, 9):
        assert torch.equal(drawn[t], drawn[t - 1]) == (t % 3 != 0), t
    fixed = DynamicMask(RATIOS, resample_every=None, model=model)
    first = fixed.select(params, 0, gen)[4]
    assert all(torch.equal(fixed.select(params, t, gen)[4], first) for t in range(1, 20))


def test_magnitude_rule_keeps_the_largest_weights():
    model = _bn_net()
    params = list(model.parameters())
    w = params[4].detach().reshape(-1).abs()
    idx = DynamicMask(RATIOS, model=model, rule="magnitude").select(params, 0, None)[4]
    rest = torch.ones_like(w, dtype=torch.bool)
    rest[idx] = False
    assert float(w[idx].min()) >= float(w[rest].max())


def test_fixed_user_masks_by_name_and_by_position():
    model = _bn_net()
    params = list(model.parameters())
    bool_mask = torch.zeros_like(params[0], dtype=torch.bool)
    bool_mask.view(-1)[[2, 5]] = True
    by_name = FixedMask({"0.weight": bool_mask, "4.weight": torch.tensor([7, 1, 7])}, model=model)
    masks = by_name.select(params, 0)
    assert masks[0].tolist() == [2, 5] and masks[4].tolist() == [1, 7] and masks[1] is None
    by_pos = FixedMask([torch.tensor([3]), None, None, None, None, None])
    assert by_pos.select(params, 5)[0].tolist() == [3]
    with pytest.raises(ValueError, match=r"6 trainable parameters"):
        FixedMask([None]).select(params, 0)


def _train(model, rule, steps, start=0, opt=None, seed=0, **kw):
    x, y = _data(seed=1, n=32)
    if opt is None:
        opt = ZOOptimizer(model.parameters(), lr=0.05, estimator=CGE(mu=1e-4), sparsity=rule, seed=seed, **kw)
    for t in range(start, start + steps):
        sl = slice((t * 8) % 32, (t * 8) % 32 + 8)
        opt.step(Objective(model, F.cross_entropy, x[sl], y[sl]))
    return opt


@pytest.mark.parametrize("rule", ["random", "magnitude"])
def test_resume_through_the_optimizer_state_dict_is_bit_identical(rule):
    kw = dict(base="sgd", momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(0)
    model = _bn_net()
    init = copy.deepcopy(model.state_dict())
    full = _train(model, DynamicMask(RATIOS, 3, model=model, rule=rule), 8, **kw)

    model2 = _bn_net()
    model2.load_state_dict(init)
    opt = _train(model2, DynamicMask(RATIOS, 3, model=model2, rule=rule), 4, **kw)  # stops mid-block
    ckpt, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(model2.state_dict())

    model3 = _bn_net()
    model3.load_state_dict(weights)
    rule3 = DynamicMask(RATIOS, 3, model=model3, rule=rule)
    opt3 = ZOOptimizer(model3.parameters(), lr=0.05, estimator=CGE(mu=1e-4), sparsity=rule3, seed=123, **kw)
    opt3.load_state_dict(ckpt)
    _train(model3, rule3, 4, start=4, opt=opt3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model3.state_dict()[k]), k
    assert all(torch.equal(a, b) for a, b in zip(full.sparsity.current[::4], rule3.current[::4]))


def test_a_failed_step_leaves_the_mask_schedule_untouched():
    model = _bn_net()
    rule = DynamicMask(RATIOS, 2, model=model)
    opt = _train(model, rule, 2)  # next step (2) starts a new block
    state = copy.deepcopy(rule.state_dict())
    x, y = _data()
    with pytest.raises(RuntimeError, match="boom"):
        opt.step(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert rule.state_dict()["block"] == state["block"] == 0
    assert torch.equal(rule.current[0], state["masks"][0])


@pytest.mark.parametrize("net", [_bn_net, lambda: DigitsCNN(channels=(3, 4)).double()])
@pytest.mark.parametrize("evaluator", ["sequential", "auto"])
def test_sparse_cge_equals_dense_cge_restricted_to_the_selected_coordinates(net, evaluator):
    torch.manual_seed(0)
    model = net()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 4 if net is _bn_net else 8, 4 if net is _bn_net else 8, generator=g, dtype=torch.float64)
    obj = Objective(model, F.cross_entropy, x, torch.randint(0, 5, (16,), generator=g))
    params = list(model.parameters())
    masks = DynamicMask(0.3).select(params, 0, torch.Generator().manual_seed(0))
    est = CGE(mu=1e-6)
    loss_d, dense, _ = estimate_gradient(obj, params, est, SequentialEvaluator())  # the reference
    loss_s, sparse, losses = estimate_gradient(
        obj, params, est, ZOOptimizer(params, evaluator=evaluator).evaluator, masks=masks
    )
    assert losses.count == 1 + count_selected(masks, params) < 0.5 * (1 + sum(p.numel() for p in params))
    exact = evaluator == "sequential"
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=0, atol=1e-7)  # other evaluators: up to rounding / mu
    torch.testing.assert_close(loss_s, loss_d, **tol)
    for g_d, g_s, m in zip(dense, sparse, masks):
        sel = torch.zeros(g_d.numel(), dtype=torch.bool)
        if m is None:
            sel[:] = True
        else:
            sel[m] = True
        torch.testing.assert_close(g_s.reshape(-1)[sel], g_d.reshape(-1)[sel], **tol)
        assert not g_s.reshape(-1)[~sel].any()
    assert any(g.abs().sum() > 0 for g in sparse)


def _step_unselected(base, **kw):
    """Two sparse steps; returns (unselected weights before step 2, after step 2, masks of step 2)."""
    torch.manual_seed(0)
    model = _bn_net()
    x, y = _data()
    obj = Objective(model, F.cross_entropy, x, y)
    opt = ZOOptimizer(
        model.parameters(),
        lr=0.1,
        base=base,
        estimator=CGE(mu=1e-5),
        sparsity=DynamicMask(RATIOS, 1, model=model),
        seed=0,
        **kw,
    )
    opt.step(obj)
    w = model[4].weight
    before = w.detach().clone()
    opt.step(obj)
    off = torch.ones(w.numel(), dtype=torch.bool)
    off[opt.sparsity.current[4]] = False
    return before.reshape(-1)[off], w.detach().reshape(-1)[off], w.grad.reshape(-1)[off]


def test_unselected_coordinates_get_zero_grad_and_plain_sgd_leaves_them():
    before, after, grad = _step_unselected("sgd")
    assert not grad.any()
    assert torch.equal(before, after)


def test_momentum_and_weight_decay_still_move_unselected_coordinates():
    before, after, _ = _step_unselected("sgd", weight_decay=0.5)
    torch.testing.assert_close(after, before * (1 - 0.1 * 0.5), rtol=0, atol=1e-15)
    before, after, _ = _step_unselected("sgd", momentum=0.9)
    assert not torch.equal(before, after)  # momentum from step 1 (where some were selected)


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda m: DynamicMask(1.5), ValueError, r"ratios"),
        (lambda m: DynamicMask({"0.weight": 0.5}), ValueError, r"model"),
        (lambda m: DynamicMask({"nope": 0.5}, model=m), ValueError, r"nope"),
        (lambda m: DynamicMask({"0.weight": -1}, model=m), ValueError, r"ratios\['0.weight'\]"),
        (lambda m: DynamicMask(0.5, resample_every=0), ValueError, r"resample_every"),
        (lambda m: DynamicMask(0.5, rule="largest"), ValueError, r"rule"),
        (lambda m: DynamicMask(0.5, model="net"), TypeError, r"model"),
        (lambda m: FixedMask({"0.weight": torch.ones(2, dtype=torch.bool)}, model=m), ValueError, r"shape"),
        (lambda m: FixedMask({"0.weight": torch.tensor([99])}, model=m), ValueError, r"out of range"),
        (lambda m: FixedMask({"0.weight": torch.tensor([0.5])}, model=m), TypeError, r"dtype"),
        (lambda m: FixedMask("0.weight"), TypeError, r"masks"),
        (lambda m: DynamicMask(True, model=m), TypeError, r"^ratios must be one kept fraction \(a number in \[0, 1\]"),
        (lambda m: DynamicMask("0.1", model=m), TypeError, r"^ratios must be one kept fraction .*mapping.* got str$"),
    ],
)
def test_bad_input_names_the_argument(make, exc, match):
    with pytest.raises(exc, match=match):
        make(_bn_net())


def test_a_number_for_sparsity_is_refused_with_the_rule_that_takes_it():
    """ZOOptimizer(sparsity=0.9) names DynamicMask/uniform_ratios; the suggested rule is accepted."""
    model = _bn_net()
    with pytest.raises(
        TypeError, match=r"^sparsity must provide select\(params, step, generator\) .*got float; "
    ) as info:
        ZOOptimizer(model.parameters(), lr=1e-2, sparsity=0.9)
    message = str(info.value)
    assert "DynamicMask(uniform_ratios(model, 0.9), model=model)" in message and "zeroth.sparsity" in message
    from zeroth.sparsity import uniform_ratios

    rule = DynamicMask(uniform_ratios(model, 0.9), model=model)  # what the message suggests
    ZOOptimizer(model.parameters(), lr=1e-2, sparsity=rule, seed=0)
    with pytest.raises(TypeError, match=r"got str$"):  # no hint for something that is not a number
        ZOOptimizer(model.parameters(), lr=1e-2, sparsity="0.9")


def test_a_named_bias_or_norm_ratio_is_applied_and_unnamed_tensors_are_selected_in_full():
    """The module docstring's rule: only tensors without a ratio are selected in full."""
    model = _bn_net()
    params = list(model.parameters())  # conv w, conv b, bn w, bn b, linear w, linear b
    masks = DynamicMask({"0.bias": 0.5, "1.weight": 1 / 3}, model=model).select(params, 0, torch.Generator())
    assert [m is None for m in masks] == [True, False, False, True, True, True]
    assert masks[1].numel() == round(0.5 * 3) and masks[2].numel() == 1
    assert count_selected(masks, params) == sum(p.numel() for p in params) - 3 + 2 - 3 + 1


def test_the_guide_s_resnet20_count_of_coordinates_a_partial_fixed_mask_estimates():
    """docs/guide/sparsity.md: masking two layers of ResNet-20 still estimates 268,671 coordinates."""
    from pathlib import Path

    from zeroth.models import ResNet20

    model = ResNet20(num_classes=10)
    params = list(model.parameters())
    rule = FixedMask({"fc.weight": torch.arange(0, 640, 64), "stem.0.weight": torch.arange(0, 432, 43)}, model=model)
    selected = count_selected(rule.select(params, 0, torch.Generator()), params)
    total = sum(p.numel() for p in params)
    guide = (Path(__file__).parents[2] / "docs" / "guide" / "sparsity.md").read_text()
    assert (
        f"selects {selected:,} of its {total:,} coordinates" in guide and f"makes {selected + 1:,} evaluations" in guide
    )
    assert selected == total - 640 - 432 + 10 + 11


def test_named_ratios_must_be_trained_but_a_number_fits_any_subset():
    model = _bn_net()
    head = list(model[4].parameters())
    masks = DynamicMask(0.25, model=model).select(head, 0, torch.Generator().manual_seed(0))
    assert masks[0].numel() == 60 and masks[1] is None
    with pytest.raises(ValueError, match=r"0.weight"):
        DynamicMask(RATIOS, model=model).select(head, 0, torch.Generator().manual_seed(0))


def test_masks_drawn_for_other_parameters_are_refused():
    model = _bn_net()
    rule = DynamicMask(0.5, resample_every=None)
    rule.select(list(model.parameters()), 0)
    with pytest.raises(ValueError, match="params"):
        rule.select(list(model.parameters())[:2], 1)


def test_sparse_cge_with_zo_grasp_ratios_trains_the_digits_cnn():
    torch.manual_seed(0)
    data = load_digits()
    model = DigitsCNN()
    gen = torch.Generator().manual_seed(0)
    x, y = balanced_batch(data.x_train, data.y_train, 25, gen)
    ratios = grasp_ratios(model, Objective(model, F.cross_entropy, x, y), 0.9, q=64, generator=gen)
    opt = ZOOptimizer(
        model.parameters(),
        lr=2e-2,
        base="adam",
        estimator=CGE(mu=1e-3),
        seed=0,
        sparsity=DynamicMask(ratios, 1, model=model),
    )
    for xb, yb in batches(data.x_train, data.y_train, 64, gen):
        opt.step(Objective(model, F.cross_entropy, xb, yb))
    assert opt.num_evaluations / opt.zo_steps < 0.12 * sum(p.numel() for p in model.parameters())
    assert accuracy(model, data.x_test, data.y_test) > 0.5  # chance is 0.1
