"""Pure-PyTorch reference implementations of ``zeroth.ops`` (always available).

Each function mirrors one compiled kernel of ``zeroth/csrc/`` argument for argument, checks
its arguments as the kernel does (:mod:`zeroth.ops._checks`, the mirror of
``zeroth_checks.h``: same exception types and messages) and computes the same values; the
tests compare the two. Float inputs are promoted to float64 for the arithmetic (as the
kernels do), so a difference like ``σ(a + Δ) − σ(a)`` is not spoiled by rounding ``a + Δ``
first. Unlike the kernels, the references take every floating dtype (bfloat16, float16).
"""

from __future__ import annotations

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
