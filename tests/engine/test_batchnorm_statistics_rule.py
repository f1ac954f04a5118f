"""BatchNorm's choice between batch and running statistics follows torch's own rule in every fast path.

In eval mode ``_BatchNorm.forward`` uses the running buffers whenever they exist, whatever
``track_running_stats`` says, and the batch's statistics when there are none; a flag toggled after
construction therefore does not decide it. FeatureReuseEvaluator once read the flag instead: it
computed other numbers than the perturb–evaluate–restore loop (a module with buffers and the flag
set False) or raised TypeError (no buffers, flag set True).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import CGE, Objective
from zeroth.engine import BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator
from zeroth.engine.stages import uses_batch_statistics

# (construct with track_running_stats, then set it to, train mode)
MODES = {
    "eval_tracked": (True, True, False),
    "eval_buffers_flag_off": (True, False, False),
    "eval_no_buffers_flag_on": (False, True, False),
    "eval_untracked": (False, False, False),
    "train_tracked": (True, True, True),
    "train_buffers_flag_off": (True, False, True),
}


def _set_mode(model, mode):
    built, flag, train = MODES[mode]
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None:
                with torch.no_grad():
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
            m.track_running_stats = flag
    return model.train(train)


def _bn(cls, n, mode):
    return cls(n, track_running_stats=MODES[mode][0])


def _mlp(mode):
    return nn.Sequential(nn.Linear(6, 12), _bn(nn.BatchNorm1d, 12, mode), nn.SiLU(), nn.Linear(12, 5))


def _cnn(mode):
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        _bn(nn.BatchNorm2d, 4, mode),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        _bn(nn.BatchNorm2d, 4, mode),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 5),
    )


MODELS = {"mlp": (_mlp, (6,)), "cnn": (_cnn, (2, 5, 5))}
EVALUATORS = {
    "feature_reuse_auto": lambda: FeatureReuseEvaluator(scheme="auto"),
    "feature_reuse_propagate": lambda: FeatureReuseEvaluator(scheme="propagate"),  # Δ through eval BatchNorm
    "feature_reuse_restart": lambda: FeatureReuseEvaluator(scheme="restart"),  # copies run BatchNorm
    "batched": BatchedEvaluator,
}


@pytest.mark.parametrize("mode", list(MODES))
def test_uses_batch_statistics_is_torchs_rule(mode):
    torch.manual_seed(0)
    bn = _set_mode(nn.Sequential(_bn(nn.BatchNorm1d, 3, mode)), mode)[0]
    x = torch.randn(8, 3) * 3 + 1
    batch = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    with torch.no_grad():
        out = bn(x)
    assert uses_batch_statistics(bn) == torch.allclose(out, batch)


@pytest.mark.parametrize("evaluator_name", list(EVALUATORS))
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("mode", list(MODES))
def test_fast_paths_agree_with_sequential_in_every_batchnorm_mode(evaluator_name, model_name, mode):
    make, shape = MODELS[model_name]
    evaluator = EVALUATORS[evaluator_name]()
    torch.manual_seed(0)
    model = _set_mode(make(mode), mode)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((8,) + shape, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    obj = Objective(model, F.cross_entropy, x, y)
    params = list(model.parameters())
    dirs = CGE(mu=1e-3).directions(params)
    assert evaluator.supports(obj, dirs, params)
    buffers = [b.clone() for b in model.buffers()]
    ref = SequentialEvaluator().evaluate(obj, params, dirs)
    ref_buffers = [b.clone() for b in model.buffers()]
    for b, v in zip(model.buffers(), buffers):
        b.copy_(v)
    got = evaluator.evaluate(obj, params, dirs)
    assert all(torch.equal(a, b) for a, b in zip(ref_buffers, model.buffers()))
    torch.testing.assert_close(got.base, ref.base, rtol=0, atol=0)
    torch.testing.assert_close(got.perturbed, ref.perturbed, rtol=1e-6, atol=0)
