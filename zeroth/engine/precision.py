r"""Compute precision of the linear ops in difference propagation.

Forward differences ``ℓ(θ + μe) − ℓ(θ)`` are of size ``μ·∂ℓ``; running the network's
convolutions in bf16 (8 mantissa bits) or TF32 (10) rounds activations by far more than
that, so plain low-precision finite differences are noise. Difference propagation keeps
the base pass in fp32 and applies the linear ops to the *difference* Δ only: their rounding
error is then relative to Δ itself, and the nonlinear steps ``σ(a + Δ) − σ(a)`` and the
loss difference stay exact. ``precision`` selects the arithmetic of those linear ops:

* ``"fp32"``: the tensors' own dtype (default);
* ``"tf32"`` / ``"bf16"``: on CUDA the real tensor-core arithmetic; elsewhere emulated by
  rounding both operands (Δ and the weight) to that format and accumulating in fp32 —
  which is what the tensor cores do;
* ``"bf16x3"``: each operand split into a bf16 high part and a bf16 remainder, and three
  bf16 products summed (``W_hi·Δ_hi + W_lo·Δ_hi + W_hi·Δ_lo``): about 16 mantissa bits,
  i.e. fp32-grade differences, at three times the bf16 cost (still far above fp32 peak on
  tensor cores). Measured on a small ResNet at μ = 1e-3: bf16 rounding costs ~2.4× the
  error of plain fp32 finite differences, bf16x3 ~0.015× (tests/engine/test_precision.py).

``emulate_plain(model, precision)`` rounds the operands of every Linear/Conv2d forward the
same way, to show (in tests and bench) what plain low-precision finite differences give.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRECISIONS = ("fp32", "tf32", "bf16", "bf16x3")


def check_precision(precision: str) -> str:
    """``precision`` itself when it is one of :data:`PRECISIONS`.

    Raises:
        ValueError: any other value.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Invalid precision value: {precision!r} (expected one of {', '.join(PRECISIONS)})")
    return precision


def round_to(x: Tensor, precision: str) -> Tensor:
    """``x`` rounded (to nearest even) to the mantissa of ``precision``, kept in x's dtype."""
    if precision == "fp32":
        return x
    if precision in ("bf16", "bf16x3"):
        return x.to(torch.bfloat16).to(x.dtype)
    # tf32: 10 explicit mantissa bits; round the fp32 bit pattern at bit 13
    f = x.float()
    bits = f.view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = ((bits + 0xFFF + lsb) & ~0x1FFF).view(torch.float32)
    rounded = torch.where(torch.isfinite(f), rounded, f)
    return rounded.to(x.dtype)


def apply_linear(fn: Callable[[Tensor, Tensor], Tensor], delta: Tensor, weight: Tensor, precision: str) -> Tensor:
    """``fn(delta, weight)`` — a linear op of Δ — in ``precision``; the result in Δ's dtype."""
    if precision == "fp32":
        return fn(delta, weight)
    if precision == "bf16x3":
        return _split_bf16(fn, delta, weight)
    if delta.is_cuda and delta.dtype == torch.float32:
        if precision == "bf16":
            return fn(delta.to(torch.bfloat16), weight.to(torch.bfloat16)).to(delta.dtype)
        with _tf32_enabled():
            return fn(delta, weight)
    return fn(round_to(delta, precision), round_to(weight, precision))


def _split_bf16(fn: Callable[[Tensor, Tensor], Tensor], delta: Tensor, weight: Tensor) -> Tensor:
    """Three bf16 products of the hi/lo split operands (the lo·lo term is below fp32 rounding)."""
    native = delta.is_cuda and delta.dtype == torch.float32

    def split(x):
        hi = x.to(torch.bfloat16)
        lo = (x - hi.to(x.dtype)).to(torch.bfloat16)
        return (hi, lo) if native else (hi.to(x.dtype), lo.to(x.dtype))

    (d_hi, d_lo), (w_hi, w_lo) = split(delta), split(weight)
    out = fn(d_hi, w_hi).to(delta.dtype)
    out = out + fn(d_hi, w_lo).to(delta.dtype)
    return out + fn(d_lo, w_hi).to(delta.dtype)


@contextlib.contextmanager
def _tf32_enabled() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def emulate_plain(model: nn.Module, precision: str) -> Iterator[nn.Module]:
    """Every Linear/Conv2d of ``model`` rounds its input and weight to ``precision`` (plain
    low-precision forwards, for comparison with difference propagation)."""
    check_precision(precision)
    patched: List[nn.Module] = []
    # each patch replaces one instance's forward and is deleted in `finally` (the class's comes back); mypy
    # forbids assigning to a method, hence the ignores (not a stub problem: the patch is deliberate)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.forward = (  # type: ignore[method-assign]
                lambda mod: lambda x: F.linear(round_to(x, precision), round_to(mod.weight, precision), mod.bias)
            )(m)
            patched.append(m)
        elif isinstance(m, nn.Conv2d):
            m.forward = (  # type: ignore[method-assign]
                lambda mod: (
                    lambda x: mod._conv_forward(round_to(x, precision), round_to(mod.weight, precision), mod.bias)
                )
            )(m)
            patched.append(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward
