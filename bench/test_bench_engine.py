"""pytest-benchmark suite: one full CGE gradient of the digits CNN per evaluator, autograd for scale.

Run with ``python -m pytest bench --benchmark-only``; compare rows within one run
(``--benchmark-group-by=param:batch``).
"""

import pytest

from zeroth import CGE, SPSA, estimate_gradient
from zeroth.engine import BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator

from .engine import problem


@pytest.mark.parametrize("batch", [256, 32])
@pytest.mark.parametrize("evaluator", [SequentialEvaluator(), BatchedEvaluator(), FeatureReuseEvaluator()], ids=repr)
def test_full_cge_gradient(benchmark, evaluator, batch):
    model, obj, params = problem("digits_cnn", batch)
    benchmark.group = f"digits_cnn full CGE, batch {batch}"
    benchmark.pedantic(lambda: estimate_gradient(obj, params, CGE(), evaluator), rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("batch", [256, 32])
def test_autograd_forward_backward(benchmark, batch):
    model, obj, params = problem("digits_cnn", batch)
    benchmark.group = f"digits_cnn full CGE, batch {batch}"

    def fb():
        for p in params:
            p.grad = None
        obj().backward()

    benchmark(fb)


@pytest.mark.parametrize("batch", [256, 32])
def test_spsa_step(benchmark, batch):
    model, obj, params = problem("digits_cnn", batch)
    benchmark.group = f"digits_cnn SPSA, batch {batch}"
    benchmark(lambda: estimate_gradient(obj, params, SPSA(), SequentialEvaluator()))
