"""Argument checks of the PyTorch references: the mirror of ``zeroth/csrc/zeroth_checks.h``.

Each function checks one op's devices, dtypes, shapes and index ranges and raises what the
compiled op raises, with the same message: ``TypeError`` for a dtype the op does not take,
``IndexError`` for an index, target or channel out of range, ``ValueError`` for shapes,
lengths, devices or an unknown activation kind. ``tests/ops/test_checks.py`` runs every bad
input through both.

The one difference is by design: the compiled kernels dispatch float32/float64 only and
reject other floating dtypes (bfloat16, float16) with a ``TypeError`` naming the argument,
so a caller can decline; the references compute in float64 whatever the floating dtype, so
they take them (``floating_dtypes`` says which set applies). The exact Rademacher ops take
float16, bfloat16, float32 and float64 on both sides (``EXACT_DTYPES``).
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

from .activations import Activation

KERNEL_DTYPES = (torch.float32, torch.float64)
"""The floating dtypes the compiled kernels dispatch."""

Arg = Tuple[Tensor, str]


def same_device(op: str, args: Sequence[Arg]) -> None:
    first, first_name = args[0]
    for t, name in args[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but {first_name} is on {first.device} "
                "(all tensors must be on one device)"
            )


def floating(op: str, arg: Arg, kernel: bool) -> None:
    """float32/float64 (``kernel``), or any floating dtype (the references)."""
    t, name = arg
    ok = t.dtype in KERNEL_DTYPES if kernel else t.is_floating_point()
    if not ok:
        raise TypeError(f"{op}: {name} must be torch.float32 or torch.float64 (got {t.dtype})")


def same_dtype(op: str, a: Arg, b: Arg) -> None:
    if a[0].dtype != b[0].dtype:
        raise TypeError(f"{op}: {b[1]} must have the dtype of {a[1]} ({a[0].dtype}; got {b[0].dtype})")


def integral(op: str, arg: Arg) -> None:
    t, name = arg
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must be an integer tensor (got {t.dtype})")


def dims(op: str, arg: Arg, n: int, shape: str) -> None:
    t, name = arg
    if t.dim() != n:
        raise ValueError(f"{op}: {name} must be {shape} (got {t.dim()} dimensions)")


def in_range(op: str, arg: Arg, n: int, hint: str = "") -> None:
    t, name = arg
    if t.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(t))
    if lo < 0 or hi >= n:
        raise IndexError(f"{op}: {name} out of range: entries must lie in [0, {n}), got [{lo}, {hi}]{hint}")


def activation_kind(op: str, kind: int) -> None:
    if not 0 <= int(kind) < len(Activation):
        raise ValueError(f"{op}: unknown activation kind {int(kind)} (expected 0 to {len(Activation) - 1})")


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def activation(a: Tensor, delta: Tensor, kind: int, kernel: bool = False) -> None:
    op = "activation_difference"
    same_device(op, [(a, "a"), (delta, "delta")])
    floating(op, (a, "a"), kernel)
    same_dtype(op, (a, "a"), (delta, "delta"))
    activation_kind(op, kind)
    if delta.dim() != a.dim() + 1 or delta.shape[1:] != a.shape:
        raise ValueError(f"{op}: delta must be (K, *a.shape) (a {_shape(a)}, delta {_shape(delta)})")


def activation_confined(a: Tensor, channels: Tensor, delta: Tensor, kind: int, kernel: bool = False) -> None:
    op = "activation_difference_confined"
    same_device(op, [(a, "a"), (channels, "channels"), (delta, "delta")])
    floating(op, (a, "a"), kernel)
    same_dtype(op, (a, "a"), (delta, "delta"))
    integral(op, (channels, "channels"))
    activation_kind(op, kind)
    dims(op, (a, "a"), 3, "(B, C, S)")
    dims(op, (channels, "channels"), 1, "(K,)")
    dims(op, (delta, "delta"), 3, "(K, B, S)")
    if delta.shape[0] != channels.shape[0] or delta.shape[1] != a.shape[0] or delta.shape[2] != a.shape[2]:
        raise ValueError(
            f"{op}: delta must be (K, B, S) with K = len(channels) (a {_shape(a)}, channels "
            f"{_shape(channels)}, delta {_shape(delta)})"
        )
    in_range(op, (channels, "channels"), a.shape[1])


def batchnorm(a: Tensor, delta: Tensor, channels: Tensor, weight: Tensor, bias: Tensor, kernel: bool = False) -> bool:
    """Returns True for the confined form."""
    op = "batchnorm_difference"
    same_device(op, [(a, "a"), (delta, "delta"), (channels, "channels"), (weight, "weight"), (bias, "bias")])
    floating(op, (a, "a"), kernel)
    same_dtype(op, (a, "a"), (delta, "delta"))
    integral(op, (channels, "channels"))
    dims(op, (a, "a"), 3, "(B, C, S)")
    b, c, s = a.shape
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p.numel() == 0:
            continue
        floating(op, (p, name), kernel)
        if p.dim() != 1 or p.shape[0] != c:
            raise ValueError(f"{op}: {name} must be (C,) with C = {c} or empty (got {_shape(p)})")
    confined = channels.numel() > 0 or delta.dim() == 3
    if confined:
        dims(op, (channels, "channels"), 1, "(K,)")
        if not (
            delta.dim() == 3 and delta.shape[0] == channels.shape[0] and delta.shape[1] == b and delta.shape[2] == s
        ):
            raise ValueError(
                f"{op}: confined delta must be (K, B, S) with K = len(channels) (a {_shape(a)}, "
                f"channels {_shape(channels)}, delta {_shape(delta)})"
            )
        in_range(op, (channels, "channels"), c)
    elif not (delta.dim() == 4 and delta.shape[1:] == (b, c, s)):
        raise ValueError(f"{op}: dense delta must be (K, B, C, S) (a {_shape(a)}, delta {_shape(delta)})")
    return confined


def targets(op: str, t: Tensor, b: int, c: int) -> None:
    integral(op, (t, "targets"))
    if t.dim() != 1 or t.shape[0] != b:
        raise ValueError(f"{op}: targets must be (B,) class indices with B = {b} (got {_shape(t)})")
    in_range(op, (t, "targets"), c, " (class indices; ignore_index and probability targets are not supported)")


def cross_entropy(logits: Tensor, targets_: Tensor, delta: Tensor, channels: Tensor, kernel: bool = False) -> bool:
    """Returns True for the confined form."""
    op = "cross_entropy_difference"
    same_device(op, [(logits, "logits"), (targets_, "targets"), (delta, "delta"), (channels, "channels")])
    floating(op, (logits, "logits"), kernel)
    floating(op, (delta, "delta"), kernel)
    integral(op, (channels, "channels"))
    dims(op, (logits, "logits"), 2, "(B, C)")
    b, c = logits.shape
    targets(op, targets_, b, c)
    confined = channels.numel() > 0
    if confined:
        dims(op, (channels, "channels"), 1, "(K,)")
        if not (delta.dim() == 2 and delta.shape[0] == channels.shape[0] and delta.shape[1] == b):
            raise ValueError(
                f"{op}: delta must be (K, B) with K = len(channels) (logits {_shape(logits)}, "
                f"channels {_shape(channels)}, delta {_shape(delta)})"
            )
        in_range(op, (channels, "channels"), c)
    elif not (delta.dim() == 3 and delta.shape[1] == b and delta.shape[2] == c):
        raise ValueError(f"{op}: delta must be (K, B, C) (logits {_shape(logits)}, delta {_shape(delta)})")
    return confined


def head(x: Tensor, logits: Tensor, targets_: Tensor, kernel: bool = False) -> None:
    op = "head_cross_entropy_difference"
    same_device(op, [(x, "x"), (logits, "logits"), (targets_, "targets")])
    floating(op, (x, "x"), kernel)
    floating(op, (logits, "logits"), kernel)
    dims(op, (x, "x"), 2, "(B, I)")
    dims(op, (logits, "logits"), 2, "(B, O)")
    if x.shape[0] != logits.shape[0]:
        raise ValueError(f"{op}: x and logits must have one row per sample (x {_shape(x)}, logits {_shape(logits)})")
    targets(op, targets_, logits.shape[0], logits.shape[1])


def patches(
    x: Tensor,
    c: Tensor,
    i: Tensor,
    j: Tensor,
    out_h: int,
    out_w: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    dh: int,
    dw: int,
    kernel: bool = False,
) -> None:
    op = "conv_weight_patches"
    same_device(op, [(x, "x"), (c, "c"), (i, "i"), (j, "j")])
    floating(op, (x, "x"), kernel)
    for arg in ((c, "c"), (i, "i"), (j, "j")):
        integral(op, arg)
        dims(op, arg, 1, "(K,)")
    if not c.shape[0] == i.shape[0] == j.shape[0]:
        raise ValueError(f"{op}: c, i and j must have equal lengths (got {c.shape[0]}, {i.shape[0]}, {j.shape[0]})")
    dims(op, (x, "x"), 4, "(B, C, H, W)")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw, out_h, out_w) < 0:
        raise ValueError(f"{op}: strides and dilations must be >= 1, paddings and output sizes >= 0")
    in_range(op, (c, "c"), x.shape[1])
    rows = x.shape[2] + 2 * ph - ((out_h - 1) * sh if out_h > 0 else 0)
    cols = x.shape[3] + 2 * pw - ((out_w - 1) * sw if out_w > 0 else 0)
    in_range(
        op, (i, "i"), (rows - 1) // dh + 1 if rows > 0 else 0, " (kernel row offsets for this input and output size)"
    )
    in_range(
        op, (j, "j"), (cols - 1) // dw + 1 if cols > 0 else 0, " (kernel column offsets for this input and output size)"
    )


def scatter(grad: Tensor, indices: Tensor, coeffs: Tensor, kernel: bool = False) -> None:
    op = "scatter_scaled_add"
    same_device(op, [(grad, "grad"), (indices, "indices"), (coeffs, "coeffs")])
    floating(op, (grad, "grad"), kernel)
    floating(op, (coeffs, "coeffs"), kernel)
    integral(op, (indices, "indices"))
    if grad.dim() != 1 or not grad.is_contiguous():
        raise ValueError(f"{op}: grad must be flat (1-D) and contiguous")
    if indices.dim() != 1 or coeffs.dim() != 1 or indices.shape[0] != coeffs.shape[0]:
        raise ValueError(
            f"{op}: indices and coeffs must be (K,) with one coefficient per index (got "
            f"{_shape(indices)} and {_shape(coeffs)})"
        )
    in_range(op, (indices, "indices"), grad.numel())


EXACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes of the exact Rademacher ops (kernels and references alike)."""


def _exact_x(op: str, x: Tensor) -> None:
    if x.dtype not in EXACT_DTYPES:
        raise TypeError(
            f"{op}: x must be torch.float16, torch.bfloat16, torch.float32 or torch.float64 (got {x.dtype})"
        )
    if x.dim() != 1 or not x.is_contiguous():
        raise ValueError(f"{op}: x must be flat (1-D) and contiguous")


def _exact_words(op: str, x: Tensor, words: Tensor, name: str, count: int, per: str) -> None:
    same_device(op, [(x, "x"), (words, name)])
    if words.dtype != torch.int64:
        raise TypeError(f"{op}: {name} must be an int64 tensor of packed bits (got {words.dtype})")
    need = -(-x.numel() // 64)
    if words.dim() != 2 or words.shape[0] != count or (count and words.shape[1] < need) or not words.is_contiguous():
        raise ValueError(
            f"{op}: {name} must be a contiguous ({count}, W) int64 tensor, one row per {per}, with "
            f"W >= ceil(x.numel() / 64) = {need} (got {_shape(words)})"
        )


def _exact_signs(op: str, signs: Sequence[float], name: str) -> None:
    for k, s in enumerate(signs):
        if float(s) not in (1.0, -1.0):
            raise ValueError(f"{op}: {name} must be +1 or -1 (entry {k} is not)")


EXACT_STEP_EXPONENTS = {
    torch.float16: (-24, 14),
    torch.bfloat16: (-121, 126),
    torch.float32: (-127, 126),
    torch.float64: (-972, 1022),
}
"""Per dtype, the exponents ``(lo, hi)`` of the steps ``a = 2^k`` (``lo ≤ k ≤ hi``) the exact ops take:
``a`` and ``2a`` are values of the dtype, ``1/a`` is finite in its opmath (so ``⌊x/a⌋`` is exact
wherever a partner exists), and ``Q = ulp(2a)`` and ``1/Q`` are finite in the wide dtype."""


def _exact_a(op: str, a: float, dtype: torch.dtype) -> None:
    lo, hi = EXACT_STEP_EXPONENTS[dtype]
    if not (math.isfinite(a) and a > 0 and math.frexp(a)[0] == 0.5 and lo <= math.frexp(a)[1] - 1 <= hi):
        raise ValueError(f"{op}: a must be a power of two 2^k with {lo} <= k <= {hi} for x of dtype {dtype}")


def rademacher_involution(x: Tensor, words: Tensor, signs: Sequence[float], a: float) -> None:
    """x flat contiguous fp16/bf16/fp32/fp64; words (len(signs), W ≥ ⌈n/64⌉) int64; signs ±1; a = 2^k."""
    op = "rademacher_involution_"
    _exact_x(op, x)
    _exact_words(op, x, words, "words", len(signs), "sign")
    _exact_signs(op, signs, "signs")
    _exact_a(op, a, x.dtype)


def rademacher_sgd(
    x: Tensor, undo_words: Tensor, undo_signs: Sequence[float], words: Tensor, weights: Sequence[float], a: float
) -> None:
    """As :func:`rademacher_involution` for the undone moves, and words (len(weights), W) for the directions."""
    op = "rademacher_sgd_"
    _exact_x(op, x)
    _exact_words(op, x, undo_words, "undo_words", len(undo_signs), "undo sign")
    _exact_signs(op, undo_signs, "undo_signs")
    _exact_words(op, x, words, "words", len(weights), "weight")
    _exact_a(op, a, x.dtype)
