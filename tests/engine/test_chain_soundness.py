"""FeatureReuseEvaluator runs a model's stage chain in place of its forward, so the chain must *be*
the forward. Models where it is not — found by a new-user review, where ``auto`` returned losses
and gradients off by up to 0.66 with no warning — are declined (statically, or at run time by
comparing the chain's loss with the forward's) and ``auto`` then equals SequentialEvaluator."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import CGE, Objective, estimate_gradient
from zeroth.engine import AutoEvaluator, FeatureReuseEvaluator, SequentialEvaluator
from zeroth.engine.rules import Unsupported
from zeroth.models import DigitsCNN


class ScaledSeq(nn.Sequential):
    def forward(self, x):
        return super().forward(x * 2.0 - 1.0)


class ResidualSeq(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + x[:, :3]


class NormalizedDigits(DigitsCNN):
    def forward(self, x):
        return super().forward((x - 0.5) / 0.25)


class StagesNotForward(nn.Module):
    """Declares Tanh in its stages but applies ReLU in forward."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))

    def zo_stages(self):
        return [self.l1, nn.Tanh(), self.l2]


def _mlp(cls=nn.Sequential):
    return cls(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _hooked(kind):
    model = _mlp()
    if kind == "forward":
        model.register_forward_hook(lambda m, i, o: o * 1.5)
    else:
        model.register_forward_pre_hook(lambda m, i: (i[0] + 1.0,))
    return model


def _nested_override():
    return nn.Sequential(ScaledSeq(nn.Linear(4, 6), nn.Tanh()), nn.Linear(6, 3))


CASES = {
    # name: (build, input shape, declined by the static rules)
    "sequential_subclass_forward": (lambda: _mlp(ScaledSeq), (8, 4), True),
    "sequential_subclass_residual": (lambda: _mlp(ResidualSeq), (8, 4), True),
    "nested_sequential_subclass": (_nested_override, (8, 4), True),
    "root_forward_hook": (lambda: _hooked("forward"), (8, 4), True),
    "root_forward_pre_hook": (lambda: _hooked("pre"), (8, 4), True),
    "subclass_forward_below_zo_stages": (NormalizedDigits, (8, 1, 8, 8), True),
    "zo_stages_not_forward": (StagesNotForward, (8, 4), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_chain_that_is_not_the_forward_is_declined_and_auto_equals_sequential(name):
    build, shape, static = CASES[name]
    torch.manual_seed(0)
    model = build().double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(*shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (shape[0],), generator=g)
    obj = Objective(model, F.cross_entropy, x, y)
    params = list(model.parameters())
    fr = FeatureReuseEvaluator()
    support = fr.supports(obj)
    if static:
        assert not support, name
    else:
        assert support
        with pytest.raises(Unsupported, match="does not describe forward"):
            estimate_gradient(obj, params, CGE(mu=1e-6), fr)
    before = [p.detach().clone() for p in params]
    auto = AutoEvaluator()
    _, got, _ = estimate_gradient(obj, params, CGE(mu=1e-6), auto)
    _, ref, _ = estimate_gradient(obj, params, CGE(mu=1e-6), SequentialEvaluator())
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert not isinstance(auto.last, FeatureReuseEvaluator)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def test_a_sound_chain_is_still_taken():
    torch.manual_seed(0)
    model = DigitsCNN().double()
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    obj = Objective(model, F.cross_entropy, x, y)
    auto = AutoEvaluator()
    estimate_gradient(obj, list(model.parameters()), CGE(mu=1e-6), auto)
    assert isinstance(auto.last, FeatureReuseEvaluator)
