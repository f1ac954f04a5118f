"""zeroth.ops side by side, in one run: each compiled kernel vs its PyTorch reference, then a
full CGE gradient with kernels vs references, and fp32 vs (emulated) low-precision
difference propagation with its accuracy.

Run: ``python -m bench.kernels [--batch 256] [--resnet-batch 8] [--repeat 5]``.
On CPU, bf16/TF32 are *emulated* (operands rounded, fp32 arithmetic): their rows measure
accuracy, and their time is the emulation's, not what tensor cores would take.
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from zeroth import CGE, Objective, estimate_gradient, ops
from zeroth.engine import FeatureReuseEvaluator
from zeroth.models import DigitsCNN, resnet20

from .engine import median_time, problem


def kernel_cases(batch: int) -> Dict[str, Tuple[Callable, Callable]]:
    """(compiled, reference) callables on the shapes of a digits-CNN step at ``batch``."""
    g = torch.Generator().manual_seed(0)
    k = 512
    a = torch.randn(batch, 16, 16, generator=g)  # conv2 output (B, C, 4·4)
    dc = 1e-3 * torch.randn(k, batch, 16, generator=g)  # confined Δ of k coordinates
    ch = torch.randint(0, 16, (k,), generator=g)
    dd = 1e-3 * torch.randn(64, batch, 16, 16, generator=g)  # dense Δ of 64 copies
    w = torch.rand(16, generator=g) + 0.5
    logits = torch.randn(batch, 10, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    dl = 1e-3 * torch.randn(k, batch, 10, generator=g)
    x = torch.rand(batch, 256, generator=g)
    img = torch.rand(batch, 8, 8, 8, generator=g)
    ci, ii, jj = (torch.randint(0, n, (k,), generator=g) for n in (8, 3, 3))
    grad = torch.zeros(3818)
    idx = torch.randperm(3818, generator=g)
    coeffs = torch.randn(3818, dtype=torch.float64, generator=g)
    none = torch.empty(0, dtype=torch.long)
    empty = torch.empty(0)
    z, r = torch.ops.zeroth, ops.reference
    RELU, GELU = int(ops.Activation.RELU), int(ops.Activation.GELU)
    return {
        f"ReLU difference, confined ({k} copies)": (
            lambda: z.activation_difference_confined(a, ch, dc, RELU, 0.0),
            lambda: r.activation_difference_confined(a, ch, dc, RELU, 0.0),
        ),
        "GELU difference, dense (64 copies)": (
            lambda: z.activation_difference(a, dd, GELU, 0.0),
            lambda: r.activation_difference(a, dd, GELU, 0.0),
        ),
        f"BatchNorm difference, confined ({k})": (
            lambda: z.batchnorm_difference(a, dc, ch, w, empty, 1e-5),
            lambda: r.batchnorm_difference(a, dc, ch, w, empty, 1e-5),
        ),
        "BatchNorm difference, dense (64)": (
            lambda: z.batchnorm_difference(a, dd, none, w, empty, 1e-5),
            lambda: r.batchnorm_difference(a, dd, none, w, empty, 1e-5),
        ),
        f"cross-entropy difference, dense ({k})": (
            lambda: z.cross_entropy_difference(logits, y, dl, none),
            lambda: r.cross_entropy_difference(logits, y, dl, none),
        ),
        "head: all 2,570 last-Linear coords": (
            lambda: z.head_cross_entropy_difference(x, logits, y, 1e-3, True),
            lambda: r.head_cross_entropy_difference(x, logits, y, 1e-3, True),
        ),
        f"conv weight patches ({k} coords)": (
            lambda: z.conv_weight_patches(img, ci, ii, jj, 4, 4, 2, 2, 1, 1, 1, 1),
            lambda: r.conv_weight_patches(img, ci, ii, jj, 4, 4, 2, 2, 1, 1, 1, 1),
        ),
        "gradient scatter (3,818 coords)": (
            lambda: z.scatter_scaled_add(grad, idx, coeffs, 1e3),
            lambda: r.scatter_scaled_add(grad, idx, coeffs, 1e3),
        ),
    }


def kernel_table(batch: int, repeat: int) -> List[str]:
    rows = [
        f"zeroth.ops kernels ({ops.backend()}) vs PyTorch reference, digits-CNN shapes at batch {batch}",
        f"{'op':<40}{'kernel ms':>11}{'reference ms':>14}{'speedup':>9}",
    ]
    for name, (kern, ref) in kernel_cases(batch).items():
        tk, tr = median_time(kern, repeat), median_time(ref, repeat)
        rows.append(f"{name:<40}{tk * 1e3:>11.3f}{tr * 1e3:>14.3f}{tr / tk:>9.1f}")
    return rows


def gradient_table(batch: int, resnet_batch: int, resnet_coords: int, repeat: int) -> List[str]:
    """Full CGE gradient: kernels vs references; precisions with accuracy vs float64 autograd."""
    rows = [
        "full CGE gradient with FeatureReuseEvaluator: kernels vs references, and precision of the linear ops on Δ",
        f"{'model':<30}{'variant':<24}{'seconds':>9}{'vs ref fp32':>12}{'cosine':>11}{'rel err':>10}",
    ]
    for name, b in (("digits_cnn", batch), ("resnet20", resnet_batch)):
        model, obj, params = problem(name, b)
        masks = None
        if name == "resnet20":
            g = torch.Generator().manual_seed(0)
            masks = [torch.randperm(p.numel(), generator=g)[:resnet_coords] for p in params]
        exact64 = _exact_gradient(name, obj)
        label = f"{name} b{b}" + (f" ({sum(int(m.numel()) for m in masks):,} coords)" if masks else "")
        results = {}
        for variant, precision, reference in (
            ("references, fp32", "fp32", True),
            ("kernels, fp32", "fp32", False),
            ("kernels, tf32 (emul.)", "tf32", False),
            ("kernels, bf16 (emul.)", "bf16", False),
            ("kernels, bf16x3 (emul.)", "bf16x3", False),
        ):
            ev = FeatureReuseEvaluator(precision=precision)

            def run(reference=reference, obj=obj, params=params, ev=ev, masks=masks):  # this variant's values
                if reference:
                    with ops.reference_only():
                        return estimate_gradient(obj, params, CGE(mu=1e-3), ev, masks=masks)[1]
                return estimate_gradient(obj, params, CGE(mu=1e-3), ev, masks=masks)[1]

            grad = run()
            results[variant] = (
                median_time(run, repeat if name == "digits_cnn" else 1),
                _accuracy(grad, exact64, masks),
            )
        base = results["references, fp32"][0]
        for variant, (t, (cos, err)) in results.items():
            rows.append(f"{label:<30}{variant:<24}{t:>9.3f}{base / t:>12.2f}{cos:>11.6f}{err:>10.2e}")
    return rows


def _exact_gradient(name: str, obj: Objective):
    model = DigitsCNN() if name == "digits_cnn" else resnet20()
    model.load_state_dict(obj.model.state_dict())
    model = model.double()
    loss = F.cross_entropy(model(obj.inputs.double()), obj.targets)
    return torch.autograd.grad(loss, list(model.parameters()))


def _accuracy(grad, exact, masks):
    if masks is None:
        got, want = (torch.cat([t.reshape(-1) for t in ts]).double() for ts in (grad, exact))
    else:
        got, want = (torch.cat([t.reshape(-1)[m] for t, m in zip(ts, masks)]).double() for ts in (grad, exact))
    return float(F.cosine_similarity(got, want, dim=0)), float((got - want).norm() / want.norm())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--resnet-coords", type=int, default=10, help="sampled coordinates per ResNet-20 parameter")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ops backend {ops.backend()}\n")
    if ops.backend() != "python":
        print("\n".join(kernel_table(args.batch, args.repeat)), "\n")
    print("\n".join(gradient_table(args.batch, args.resnet_batch, args.resnet_coords, args.repeat)), "\n")


if __name__ == "__main__":
    main()
