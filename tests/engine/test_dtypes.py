"""Every parameter dtype: low precision divides by the step actually taken; fast paths dispatch or decline."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import CGE, Objective, ZOOptimizer, estimate_gradient
from zeroth.engine import AutoEvaluator, BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator


@pytest.mark.parametrize(
    "dtype,step", [(torch.float16, 2.0**-7), (torch.bfloat16, 2.0**-4), (torch.float32, None), (torch.float64, None)]
)
def test_cge_divides_by_the_step_actually_taken(dtype, step):
    # f(w) = Σ w² at w = 8 (computed in float64), μ = 1e-2: fp16 moves w to 8 + 2⁻⁷ (the step taken), bf16
    # cannot move by 1e-2 at all and takes one ulp (2⁻⁴); the forward difference is then exactly 2w + h
    w = nn.Parameter(torch.full((3,), 8.0, dtype=dtype))
    _, (g,), _ = estimate_gradient(lambda: (w.double() ** 2).sum(), [w], CGE(mu=1e-2), SequentialEvaluator())
    h = step if step is not None else float((torch.tensor(8.0, dtype=dtype) + 1e-2).double() - 8.0)
    assert g.dtype == dtype
    # the estimate 16 + h, stored in the parameter's dtype (not 12.5 = 0.78 × 16, not 0)
    expected = torch.full((3,), 16.0 + h, dtype=torch.float64).to(dtype)
    if step is not None:  # exact: the difference of two float64 squares of half-precision values, over h
        assert torch.equal(g, expected)
    else:
        torch.testing.assert_close(g, expected, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_models_train_with_the_default_evaluator(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    x, y = torch.randn(16, 6).to(dtype), torch.randint(0, 3, (16,))
    obj = Objective(model, F.cross_entropy, x, y)
    params = list(model.parameters())
    support = FeatureReuseEvaluator().supports(obj, CGE().directions(params), params)
    assert not support and str(dtype).split(".")[1] in support.reason
    auto = AutoEvaluator()
    estimate_gradient(obj, params, CGE(mu=1e-2), auto)
    assert isinstance(auto.last, BatchedEvaluator)
    # the same points as SequentialEvaluator; each loss equal up to the rounding of the loss in this dtype
    dirs = CGE(mu=1e-2).directions(params)
    got, ref = BatchedEvaluator().evaluate(obj, params, dirs), SequentialEvaluator().evaluate(obj, params, dirs)
    ulp = float(torch.finfo(dtype).eps) * float(ref.perturbed.abs().max())
    assert float((got.perturbed - ref.perturbed).abs().max()) <= 4 * ulp
    # as in mixed-precision training, the loss is formed in float32 (a bf16 loss rounds to 2⁻⁷ and
    # hides every difference of a step of 1e-2)
    upcast = Objective(model, lambda out, t: F.cross_entropy(out.float(), t), x, y)
    opt = ZOOptimizer(params, lr=0.5, estimator=CGE(mu=1e-2), seed=0)

    def full_precision_loss():
        with torch.no_grad():
            return float(F.cross_entropy(model(x).float(), y))

    before = full_precision_loss()
    for _ in range(15):
        opt.step(upcast)
    assert full_precision_loss() < before - 0.01
