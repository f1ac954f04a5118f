"""Side-by-side timing of one full CGE gradient per evaluator, in one run (ratios to a baseline).

Run: ``python -m bench.engine [--batch 256 32] [--resnet-batch 8] [--repeat 3]``.
Times are the median of at least ``--repeat`` runs after one warm-up (fast rows rerun for
at least a second); every row of a table is measured in the same process, so the ratios
compare like with like.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from zeroth import CGE, RGE, SPSA, Objective, estimate_gradient
from zeroth.engine import BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator
from zeroth.models import DigitsCNN, resnet20


def median_time(fn: Callable[[], object], repeat: int, min_seconds: float = 1.0, max_repeat: int = 200) -> float:
    """Median seconds of ``fn()`` after a warm-up: at least ``repeat`` runs, and fast functions
    rerun until ``min_seconds`` have passed (at most ``max_repeat`` runs), so a short slow spell
    of this shared machine does not decide a fast row."""
    fn()  # warm-up
    times: List[float] = []
    began = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - began < min_seconds and len(times) < max_repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def problem(model_name: str, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    if model_name == "digits_cnn":
        model, shape = DigitsCNN(), (1, 8, 8)
    else:
        model, shape = resnet20(), (3, 32, 32)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((batch,) + shape, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return model, Objective(model, F.cross_entropy, x, y), list(model.parameters())


def autograd_time(obj: Objective, params, repeat: int) -> float:
    def fb():
        for p in params:
            p.grad = None
        obj().backward()

    return median_time(fb, repeat)


def cge_table(model_name: str, batch: int, evaluators: Dict[str, object], repeat: int, masks=None) -> List[str]:
    model, obj, params = problem(model_name, batch)
    ref = autograd_time(obj, params, max(repeat, 5))
    n = sum(int(m.numel()) for m in masks) if masks is not None else sum(p.numel() for p in params)
    rows = [
        f"{model_name}, batch {batch}, {n:,} coordinates (full CGE gradient, forward differences)",
        f"{'evaluator':<28}{'seconds':>10}{'x autograd f+b':>16}{'speedup vs SequentialEvaluator':>24}",
    ]
    times = {}
    for name, ev in evaluators.items():
        times[name] = median_time(lambda ev=ev: estimate_gradient(obj, params, CGE(mu=1e-3), ev, masks=masks), repeat)
    seq = times.get("SequentialEvaluator")
    rows.append(f"{'autograd forward+backward':<28}{ref:>10.4f}{1.0:>16.1f}{'':>24}")
    for name, t in times.items():
        speed = f"{seq / t:>24.1f}" if seq else f"{'-':>24}"
        rows.append(f"{name:<28}{t:>10.4f}{t / ref:>16.1f}{speed}")
    return rows


def random_table(batch: int, repeat: int) -> List[str]:
    model, obj, params = problem("digits_cnn", batch)
    with torch.no_grad():
        inference = median_time(obj, max(repeat, 5))
    rows = [
        f"digits_cnn, batch {batch}: randomized estimators (one gradient estimate)",
        f"{'estimator':<36}{'evaluations':>12}{'seconds':>10}{'x one forward':>15}",
    ]
    for est in (SPSA(), RGE(q=16), RGE(q=16, antithetic=True)):
        for ev in (SequentialEvaluator(), BatchedEvaluator()):

            def one_gradient(est=est, ev=ev):
                return estimate_gradient(obj, params, est, ev, generator=torch.Generator().manual_seed(0))

            t = median_time(one_gradient, repeat)
            label = f"{type(est).__name__}(q={est.q}{', anti' if est.antithetic else ''}) {type(ev).__name__}"
            rows.append(f"{label:<36}{est.num_evaluations(0):>12}{t:>10.4f}{t / inference:>15.1f}")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 32])
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--resnet-coords", type=int, default=40, help="sampled coordinates per ResNet-20 parameter")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    for b in args.batch:
        evs = {
            "SequentialEvaluator": SequentialEvaluator(),
            "BatchedEvaluator": BatchedEvaluator(),
            "FeatureReuseEvaluator": FeatureReuseEvaluator(),
        }
        print("\n".join(cge_table("digits_cnn", b, evs, args.repeat)), "\n")
    _, _, params = problem("resnet20", args.resnet_batch)
    g = torch.Generator().manual_seed(0)
    masks = [torch.randperm(p.numel(), generator=g)[: args.resnet_coords] for p in params]
    evs = {"SequentialEvaluator": SequentialEvaluator(), "FeatureReuseEvaluator": FeatureReuseEvaluator()}
    rows = cge_table("resnet20", args.resnet_batch, evs, 1, masks=masks)
    print("\n".join(rows))
    n = sum(int(m.numel()) for m in masks)
    per = float(rows[-1].split()[1]) / n
    print(
        f"  -> FeatureReuseEvaluator {per * 1e3:.2f} ms per coordinate; "
        "a full ResNet-20 gradient (269,722 coordinates) "
        f"extrapolates to {per * 269722 / 60:.1f} min at batch {args.resnet_batch}\n"
    )
    for b in args.batch:
        print("\n".join(random_table(b, args.repeat)), "\n")


if __name__ == "__main__":
    main()
