"""DeepZero's workload on one GPU: ResNet-20, batch 256, 90 % sparsity, one sparse-CGE step.

Run: ``python -m bench.gpu_deepzero_step [--device cuda] [--batch 256] [--keep 0.1]``.
Masks keep a uniform random fraction ``--keep`` of every Conv/Linear weight plus all
BatchNorm parameters and biases (DeepZero's "sparse gradient, dense model"). Prints the
number of coordinates, seconds per step for each evaluator asked for (``--evaluators``),
and a check of the sparse gradient against a float64 reference on a sample of coordinates.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from zeroth import CGE, Objective, estimate_gradient
from zeroth.engine import BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator
from zeroth.models import resnet20


def masks_for(model, keep: float, generator: torch.Generator):
    out = []
    for p in model.parameters():
        if p.dim() >= 2:  # Conv/Linear weights: a random fraction
            n = max(1, int(round(keep * p.numel())))
            out.append(torch.randperm(p.numel(), generator=generator)[:n].to(p.device))
        else:  # BN parameters and biases: always
            out.append(torch.arange(p.numel(), device=p.device))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--mu", type=float, default=5e-3)
    ap.add_argument("--max-memory-gb", type=float, default=16.0)
    ap.add_argument("--evaluators", nargs="+", default=["feature_reuse"])
    ap.add_argument("--subset", type=int, default=0, help="time only this many coordinates (0: all)")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet20().to(dev)
    x = torch.rand(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    obj = Objective(model, F.cross_entropy, x, y)
    params = list(model.parameters())
    masks = masks_for(model, args.keep, torch.Generator().manual_seed(0))
    if args.subset:
        g = torch.Generator().manual_seed(1)
        total = sum(m.numel() for m in masks)
        masks = [
            m[torch.randperm(m.numel(), generator=g)[: max(0, round(args.subset * m.numel() / total))].to(m.device)]
            for m in masks
        ]
    n = sum(int(m.numel()) for m in masks)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"ResNet-20 on {name}, batch {args.batch}, {n:,} coordinates, fp32 (TF32 off), mu {args.mu}")
    mem = int(args.max_memory_gb * 2**30)
    evs = {
        "feature_reuse": FeatureReuseEvaluator(max_memory=mem),
        "batched": BatchedEvaluator(max_memory=mem),
        "sequential": SequentialEvaluator(),
    }
    for key in args.evaluators:
        ev = evs[key]
        estimate_gradient(obj, params, CGE(mu=args.mu), ev, masks=[m[:2] for m in masks])  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        _, grads, _ = estimate_gradient(obj, params, CGE(mu=args.mu), ev, masks=masks)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        print(f"{ev!r:<40} {t:8.2f} s/step  {n / t:10.0f} coords/s  peak {peak:.1f} GiB")
    # accuracy on a sample: float64 central differences on a copy
    sample = [m[:3] for m in masks]
    ref_model = resnet20().to(dev).double()
    ref_model.load_state_dict(model.state_dict())
    ref_obj = Objective(ref_model, F.cross_entropy, x.double(), y)
    _, ref, _ = estimate_gradient(
        ref_obj, list(ref_model.parameters()), CGE(mu=1e-6, scheme="central"), SequentialEvaluator(), masks=sample
    )
    a = torch.cat([g.reshape(-1)[s] for g, s in zip(grads, sample)]).double()
    b = torch.cat([r.reshape(-1)[s] for r, s in zip(ref, sample)])
    cos = float(F.cosine_similarity(a, b, dim=0))
    print(
        f"sampled {a.numel()} coordinates: cosine to fp64 central differences {cos:.5f}, "
        f"rel. error {float((a - b).norm() / b.norm()):.3e}"
    )


if __name__ == "__main__":
    main()
