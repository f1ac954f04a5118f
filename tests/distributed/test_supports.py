"""``RayEvaluator.supports`` answers with a :class:`~zeroth.engine.base.Support` (truthy, with a
reason), as the Evaluator protocol says, and ``evaluator="auto"`` reports those reasons. Nothing
here starts Ray: ``supports`` is a static check on the driver."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("ray")

from zeroth import CGE, SPSA, Objective  # noqa: E402
from zeroth.distributed import RayEvaluator  # noqa: E402
from zeroth.engine import AutoEvaluator  # noqa: E402
from zeroth.engine.base import Support  # noqa: E402


class Unsplittable:
    """A direction set with no subset/to_devices."""

    kind, num_signs, mus, num_directions, needs_base = "random", 2, [1e-3], 1, False

    def __len__(self):
        return 2


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    return model, Objective(model, F.cross_entropy, x, y), list(model.parameters())


def test_supports_returns_support_with_a_reason_for_each_refusal():
    model, obj, params = problem()
    dirs = SPSA().directions(params)
    cases = [
        (RayEvaluator("sequential"), (lambda: obj(), dirs, params), "Objective"),
        (RayEvaluator("sequential"), (obj, Unsplittable(), params), "Unsplittable cannot be split"),
        (RayEvaluator("sequential"), (obj, dirs, [torch.zeros(3, requires_grad=True)]), "not a parameter of"),
        (RayEvaluator("feature_reuse"), (obj, dirs, params), "inner evaluator 'feature_reuse' does not apply: "),
    ]
    for ev, args, reason in cases:
        got = ev.supports(*args)
        assert isinstance(got, Support) and not got, (ev, got)
        assert reason in got.reason, (reason, got.reason)
    yes = RayEvaluator("sequential").supports(obj, CGE().directions(params), params)
    assert isinstance(yes, Support) and yes
    assert RayEvaluator("sequential").supports(obj)  # nothing but the objective: supported


def test_auto_reports_the_ray_evaluators_reason_and_runs_the_next_one():
    model, obj, params = problem()
    auto = AutoEvaluator(preferred=[RayEvaluator("sequential")])
    dirs = SPSA().directions(params, generator=torch.Generator().manual_seed(0))
    losses = auto.evaluate(lambda: obj(), params, dirs)  # a plain closure: Ray declines, SequentialEvaluator runs
    assert losses.perturbed.shape == (len(dirs),)
    assert "needs an Objective" in auto.explain(), auto.explain()
