"""Pure-PyTorch reference implementations of ``zeroth.ops`` (always available).

Each function mirrors one compiled kernel of ``zeroth/csrc/`` argument for argument, checks
its arguments as the kernel does (:mod:`zeroth.ops._checks`, the mirror of
``zeroth_checks.h``: same exception types and messages) and computes the same values; the
tests compare the two. Float inputs are promoted to float64 for the arithmetic (as the
kernels do), so a difference like ``σ(a + Δ) − σ(a)`` is not spoiled by rounding ``a + Δ``
first. Unlike the kernels, the references take every floating dtype (bfloat16, float16).

The exact Rademacher involutions (``rademacher_involution_``, ``rademacher_sgd_``) are the
exception to "promote to float64": they are defined by the roundings of the parameter's own
dtype, so the reference forms each op in that dtype, exactly as the kernels do (all four
floating dtypes, in kernel and reference alike).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from .activations import Activation

ACTIVATION_FUNCTIONS = {
    Activation.RELU: lambda x, s: torch.relu(x),
    Activation.LEAKY_RELU: lambda x, s: F.leaky_relu(x, s),
    Activation.GELU: lambda x, s: F.gelu(x),
    Activation.SILU: lambda x, s: F.silu(x),
    Activation.TANH: lambda x, s: torch.tanh(x),
    Activation.SIGMOID: lambda x, s: torch.sigmoid(x),
}
"""``σ(x, negative_slope)`` of each kind (the slope is LeakyReLU's; the others ignore it)."""


def activation_difference(a: Tensor, delta: Tensor, kind: int, slope: float) -> Tensor:
    """``σ(a + Δ_k) − σ(a)`` for ``Δ: (K, *a.shape)``, ``a`` broadcast over the K copies."""
    _checks.activation(a, delta, kind)
    f = ACTIVATION_FUNCTIONS[Activation(kind)]
    x = a.double().unsqueeze(0)
    return (f(x + delta.double(), slope) - f(x, slope)).to(delta.dtype)


def activation_difference_confined(a: Tensor, channels: Tensor, delta: Tensor, kind: int, slope: float) -> Tensor:
    """Confined form: ``a: (B, C, S)``, ``Δ: (K, B, S)`` on channel ``channels[k]`` of copy k."""
    _checks.activation_confined(a, channels, delta, kind)
    channels = channels.long()
    f = ACTIVATION_FUNCTIONS[Activation(kind)]
    x = a.double().transpose(0, 1)[channels]  # (K, B, S)
    return (f(x + delta.double(), slope) - f(x, slope)).to(delta.dtype)


def _normalize(x: Tensor, dims, eps: float) -> Tensor:
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def batchnorm_difference(
    a: Tensor, delta: Tensor, channels: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> Tensor:
    """Train-mode BatchNorm of each copy ``a + Δ_k`` (own batch statistics) minus that of ``a``.

    ``a: (B, C, S)``; dense ``Δ: (K, B, C, S)``, or confined ``Δ: (K, B, S)`` with
    ``channels: (K,)``. ``weight``/``bias``: ``(C,)`` or empty (no affine; β cancels anyway).
    """
    confined = _checks.batchnorm(a, delta, channels, weight, bias)
    channels = channels.long()
    x0 = a.double()
    gamma = weight.double() if weight.numel() else torch.ones(a.shape[1], dtype=torch.float64, device=a.device)
    if confined:
        base = x0.transpose(0, 1)[channels]  # (K, B, S)
        x1 = base + delta.double()
        dims = (1, 2)
        g = gamma[channels].reshape(-1, 1, 1)
    else:
        base = x0.unsqueeze(0)
        x1 = base + delta.double()
        dims = (1, 3)
        g = gamma.reshape(1, 1, -1, 1)
    return ((_normalize(x1, dims, eps) - _normalize(base, dims, eps)) * g).to(delta.dtype)


def _log_mix1(p: Tensor, d: Tensor) -> Tensor:
    """``log(1 − p + p·e^d)`` without overflow (see zeroth/csrc/zeroth_math.h)."""
    small = torch.log1p(p * torch.expm1(torch.clamp(d, max=30.0)))
    large = d + torch.log1p((1.0 - p) * torch.expm1(-torch.clamp(d, min=30.0)))
    return torch.where(d < 30.0, small, large)


def cross_entropy_difference(logits: Tensor, targets: Tensor, delta: Tensor, channels: Tensor) -> Tensor:
    """``CE(z + Δ_k) − CE(z)`` (batch mean) per copy, float64.

    Dense ``Δ: (K, B, C)``, or ``Δ: (K, B)`` moving only logit ``channels[k]`` of copy k.
    Uses ``log Σ_j p_j e^{Δ_j}`` from the cached softmax, so no copy's logits are formed.
    ``targets``: ``(B,)`` class indices in ``[0, C)`` (anything else raises ``IndexError``).
    """
    confined = _checks.cross_entropy(logits, targets, delta, channels)
    targets, channels = targets.long(), channels.long()
    p = torch.softmax(logits.double(), dim=1)
    d = delta.double()
    rows = torch.arange(logits.shape[0], device=logits.device)
    if confined:
        lse = _log_mix1(p[:, channels].t(), d)
        picked = d * (targets.unsqueeze(0) == channels.unsqueeze(1))
    else:
        lse = torch.log1p((p.unsqueeze(0) * torch.expm1(d)).sum(-1))
        picked = d[:, rows, targets]
    return (lse - picked).mean(1)


def head_cross_entropy_difference(x: Tensor, logits: Tensor, targets: Tensor, mu: float, with_bias: bool) -> Tensor:
    """CE change for every coordinate of the last Linear layer moved by ``mu``: ``(O, I [+1])``.

    Weight ``(o, i)`` changes logit ``o`` by ``μ·x[:, i]``; the bias column by ``μ``.
    """
    _checks.head(x, logits, targets)
    targets = targets.long()
    p = torch.softmax(logits.double(), dim=1)  # (B, O)
    xd = x.double()
    if with_bias:
        xd = torch.cat([xd, xd.new_ones(xd.shape[0], 1)], dim=1)
    d = mu * xd  # (B, I')
    out = _log_mix1(p.unsqueeze(2), d.unsqueeze(1))  # (B, O, I')
    hit = F.one_hot(targets, logits.shape[1]).double().unsqueeze(2) * d.unsqueeze(1)
    return (out - hit).mean(0)


def conv_weight_patches(
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
) -> Tensor:
    """For Conv2d weight coordinates ``(·, c_k, i_k, j_k)``: the input values they multiply, ``(K, B, h, w)``."""
    _checks.patches(x, c, i, j, out_h, out_w, sh, sw, ph, pw, dh, dw)
    c, i, j = c.long(), i.long(), j.long()
    xp = F.pad(x, (pw, pw, ph, ph))
    rows = (torch.arange(out_h, device=x.device) * sh).unsqueeze(0) + (i * dh).unsqueeze(1)  # (K, h)
    cols = (torch.arange(out_w, device=x.device) * sw).unsqueeze(0) + (j * dw).unsqueeze(1)  # (K, w)
    planes = xp.transpose(0, 1)[c]  # (K, B, H+2ph, W+2pw)
    k = c.numel()
    kk = torch.arange(k, device=x.device).reshape(k, 1, 1)
    return planes.permute(0, 2, 3, 1)[kk, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)


def scatter_scaled_add(grad: Tensor, indices: Tensor, coeffs: Tensor, scale: float) -> Tensor:
    """``grad[indices[k]] += coeffs[k]·scale`` in place (repeated indices accumulate)."""
    _checks.scatter(grad, indices, coeffs)
    grad.index_add_(0, indices.long(), (coeffs.double() * scale).to(grad.dtype))
    return grad


# -- exact Rademacher involutions (zeroth.estimators.exact_perturbation) ----------------------
# Op by op the same chain of roundings as zeroth/csrc/zeroth_exact.h: an op on dtype-T tensors
# computes in opmath(T) and rounds to T (a Python scalar is cast to opmath first), the update is
# formed in the wide dtype and rounded once, and nothing is fused (no ``alpha=`` adds).

EXACT_PIECE = 1 << 17
"""Entries the references process at once (their temporaries: a few of this many entries)."""

_BITS_OF = {
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
_WIDE = {
    torch.bfloat16: torch.float32,
    torch.float16: torch.float32,
    torch.float32: torch.float64,
    torch.float64: torch.float64,
}
_PRECISION = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24, torch.float64: 53}
_SHIFTS: Dict[torch.device, Tensor] = {}


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an exact update is formed in before its single rounding (float32 for 16-bit, else float64)."""
    return _WIDE[dtype]


def lattice(a: float, dtype: torch.dtype) -> float:
    """``Q = ulp(2a)`` in ``dtype``: every value with ``|x| ≥ 2a`` is a multiple of it."""
    return a * 2.0 ** (2 - _PRECISION[dtype])


def rademacher_bits(row: Tensor, start: int, stop: int) -> Tensor:
    """Bits ``start:stop`` of a row of packed int64 words (bit b of word w is entry 64w + b) as int64 0/1.

    ``start`` must be a multiple of 64.
    """
    shifts = _SHIFTS.get(row.device)
    if shifts is None:
        shifts = _SHIFTS[row.device] = torch.arange(64, dtype=torch.int64, device=row.device)
    w = row[start // 64 : -(-stop // 64)]
    return (w.view(-1, 1) >> shifts).bitwise_and_(1).view(-1)[: stop - start]


def involution_steps(dtype: torch.dtype, sign: float, a: float, device) -> Tensor:
    """``(2,)``: the displacement of ``S_{sign·r}`` for unit bit k = 0, 1 (``−sign·a``, ``+sign·a``), in ``dtype``."""
    return torch.tensor([0, 1], device=device).to(dtype).mul_(2.0 * sign * a).sub_(sign * a)


def unit_bits(x: Tensor, bits: Tensor, a: float) -> Tensor:
    """``k = bit XOR (⌊x·(1/a)⌋ odd)`` (int64 0/1); the parity is ``⌊f/2⌋ ≠ f/2`` (NaN: odd; inf: even)."""
    f = torch.floor(x * (1.0 / a))
    h = f * 0.5
    return (h != torch.floor(h)).to(torch.int64).bitwise_xor_(bits)


def exact_partner(x: Tensor, step: Tensor) -> Tuple[Tensor, Tensor]:
    """``(y, ok)``: ``y = fl(x + step)`` and whether that sum is exact (``fl(y − x) = step`` and
    ``fl(y − step)`` has x's bit pattern, so ``−0.0`` never moves)."""
    y = x + step
    ok = (y - x) == step
    return y, ok.logical_and_((y - step).view(_BITS_OF[x.dtype]) == x.view(_BITS_OF[x.dtype]))


def _select_(x: Tensor, y: Tensor, ok: Tensor) -> None:
    """``x ← ok ? y : x`` on the bit patterns (exact, and much faster than ``torch.where`` on CPU)."""
    xi = x.view(_BITS_OF[x.dtype])
    xi.add_((y.view(_BITS_OF[x.dtype]) - xi).mul_(ok))


def _involution_(x: Tensor, bits: Tensor, steps: Tensor, a: float) -> None:
    y, ok = exact_partner(x, steps[unit_bits(x, bits, a)])
    _select_(x, y, ok)


def rademacher_direction_sum(
    x: Tensor, rows: Sequence[Tensor], start: int, weights: Sequence[float], a: float, antithetic: bool
) -> Tensor:
    """``Σ_k w_k · D_k(x)/a`` in the wide dtype, ``D_k`` the displacement direction k applies at ``x``.

    ``D/a = u·(ok₊ + ok₋)/2`` (two-sided) or ``u·ok₊`` (one-sided) with ``u = 2k − 1``: ±1, ±½
    or (a signed) 0. ``rows[k]``: direction k's packed words; ``x`` is entries ``start ...`` of them.

    Raises:
        ValueError: ``rows`` is empty.
    """
    wide = _WIDE[x.dtype]
    plus, minus = involution_steps(x.dtype, 1.0, a, x.device), involution_steps(x.dtype, -1.0, a, x.device)
    total: Optional[Tensor] = None
    for row, w in zip(rows, weights):
        k = unit_bits(x, rademacher_bits(row, start, start + x.numel()), a)
        _, ok_plus = exact_partner(x, plus[k])
        u = k.to(wide).mul_(2.0).sub_(1.0)
        if antithetic:
            _, ok_minus = exact_partner(x, minus[k])
            d = u.mul_(ok_plus.to(wide).add_(ok_minus).mul_(0.5))
        else:
            d = u.mul_(ok_plus)
        d = d.mul_(w)
        total = d if total is None else total.add_(d)
    if total is None:
        raise ValueError("rademacher_direction_sum: no directions (rows is empty)")
    return total


def rademacher_involution_(x: Tensor, words: Tensor, signs: Sequence[float], a: float) -> Tensor:
    """Apply the involutions ``S_{signs[k]·r_k}`` to ``x`` in place, in order (``r_k``: row k of ``words``)."""
    _checks.rademacher_involution(x, words, signs, a)
    steps = [involution_steps(x.dtype, float(s), a, x.device) for s in signs]
    for lo in range(0, x.numel(), EXACT_PIECE):
        hi = min(x.numel(), lo + EXACT_PIECE)
        for k in range(len(signs)):
            _involution_(x[lo:hi], rademacher_bits(words[k], lo, hi), steps[k], a)
    return x


def rademacher_sgd_(
    x: Tensor,
    undo_words: Tensor,
    undo_signs: Sequence[float],
    words: Tensor,
    weights: Sequence[float],
    a: float,
    scale: float,
    decay: float,
    antithetic: bool,
) -> Tensor:
    """Undo ``S_{undo_signs[m]·r_m}``, then ``x ← x·decay + scale·Σ_k w_k D_k(x)/a`` rounded once, in place.

    The sum is formed in the wide dtype (no sum and no add without directions, no product when
    ``decay == 1``), rounded once to x's dtype; a value whose wide result is below ``2a`` in
    magnitude is rounded to the nearest multiple of ``Q = ulp(2a)`` (halves to even) instead.
    """
    _checks.rademacher_sgd(x, undo_words, undo_signs, words, weights, a)
    wide = _WIDE[x.dtype]
    q = lattice(a, x.dtype)
    undo = [involution_steps(x.dtype, float(s), a, x.device) for s in undo_signs]
    rows = list(words)
    for lo in range(0, x.numel(), EXACT_PIECE):
        hi = min(x.numel(), lo + EXACT_PIECE)
        xs = x[lo:hi]
        for m in range(len(undo)):
            _involution_(xs, rademacher_bits(undo_words[m], lo, hi), undo[m], a)
        xw = xs.to(wide, copy=True)
        if decay != 1.0:
            xw.mul_(decay)
        if rows:
            xw.add_(rademacher_direction_sum(xs, rows, lo, weights, a, antithetic).mul_(scale))
        xs.copy_(xw)  # rounded once
        small = xw.abs() < 2.0 * a
        _select_(xs, torch.round(xw.mul_(1.0 / q)).mul_(q).to(x.dtype), small)
    return x
