"""pytest-benchmark suite: one full CGE gradient of the digits CNN, local and over 1 or 2 Ray workers.

Run with ``python -m pytest bench/test_bench_distributed.py --benchmark-only``; the table with
speedups, efficiency and Ray's overhead per step is ``python -m bench.distributed``.
"""

import pytest
import torch

from zeroth import CGE, estimate_gradient
from zeroth.engine import SequentialEvaluator

from .engine import problem

pytest.importorskip("ray")


@pytest.mark.parametrize("workers", [0, 1, 2], ids=lambda w: f"ray-{w}" if w else "local")
def test_full_cge_gradient_over_ray_workers(benchmark, workers):
    from zeroth.distributed import RayEvaluator

    torch.set_num_threads(1)
    _, obj, params = problem("digits_cnn", 64)
    benchmark.group = "digits_cnn full CGE (inner SequentialEvaluator), batch 64"
    # the evaluator starts Ray on this machine when none is running (and it stays up for the next rows)
    ev = (
        RayEvaluator("sequential", num_workers=workers, ray_init={"log_to_driver": False}).start()
        if workers
        else SequentialEvaluator()
    )
    try:
        benchmark.pedantic(lambda: estimate_gradient(obj, params, CGE(), ev), rounds=3, warmup_rounds=1)
    finally:
        if workers:
            ev.close()
