"""``zeroth.ops``: the hot loops of feature reuse and difference propagation.

Each op runs a compiled kernel from ``csrc/`` (C++ on CPU, CUDA on GPU) when one is built
for the tensors' device, and otherwise its pure-PyTorch twin in :mod:`zeroth.ops.reference`.
``backend()`` says which: ``"cpp"``, ``"cpp+cuda"`` or ``"python"``. ``ZEROTH_OPS=python``
forces the reference; ``ZEROTH_OPS=cpp`` makes a failed build an error instead of a warning.

The ops (shapes in each docstring):

* ``activation_difference`` / ``activation_difference_confined``: ``σ(a + Δ_k) − σ(a)``
  with ``a`` broadcast over the K copies (never K copies of ``a`` in memory);
* ``batchnorm_difference``: train-mode BatchNorm with per-copy batch statistics;
* ``cross_entropy_difference``: per-copy ``CE(z + Δ_k) − CE(z)`` from the cached softmax;
* ``head_cross_entropy_difference``: every coordinate of the last Linear layer at once;
* ``conv_weight_patches``: the Δ of a chunk of Conv2d weight coordinates (divided by μ);
* ``scatter_scaled_add``: ``grad[idx] += c·scale`` for the selected coordinates.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from . import reference, vectorized
from ._build import KernelBuildWarning, cuda_buildable, load, mode

__all__ = [
    "ACTIVATIONS", "KernelBuildWarning", "activation_difference", "activation_difference_confined",
    "activation_kind", "backend", "batchnorm_difference", "conv_weight_patches", "cross_entropy_difference",
    "cuda_buildable", "head_cross_entropy_difference", "mode", "reference", "reference_only", "scatter_scaled_add",
]

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid")

_lock = threading.Lock()
_loaded: Optional[str] = None
_tried = False
_reference_only = threading.local()


def backend() -> str:
    """``"cpp"``, ``"cpp+cuda"`` or ``"python"``: what runs the ops (builds them on first call)."""
    global _loaded, _tried
    with _lock:
        if not _tried:
            _loaded = load()
            _tried = True
    return _loaded or "python"


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Run the PyTorch references inside this block (this thread), e.g. to compare timings."""
    saved = getattr(_reference_only, "on", False)
    _reference_only.on = True
    try:
        yield
    finally:
        _reference_only.on = saved


# On CPU the dense difference of a smooth activation is faster as vectorised ATen calls than
# as the scalar float64 loop of csrc/zeroth_ops.cpp (bench.kernels: GELU 0.6×; a full ResNet-20
# CGE sample 2.3 s vs 3.6 s), so on CPU it runs the reference (ReLU/LeakyReLU run the kernel's
# exact fp32 form, see activation_difference); its kernel is still built,
# tested and used on CUDA. (The head and cross-entropy kernels lose in isolation at K = 512
# dense copies but win inside a full digits-CNN gradient, where their inputs are confined.)
_CPU_PREFERS_REFERENCE = frozenset({"activation_difference"})


def _compiled(*tensors: Tensor, op: str = "") -> bool:
    """True when a compiled kernel serves tensors on this device (and is the faster path there)."""
    if getattr(_reference_only, "on", False):
        return False
    active = backend()
    if active == "python":
        return False
    device = tensors[0].device.type
    if device == "cpu":
        return op not in _CPU_PREFERS_REFERENCE
    return device == "cuda" and active == "cpp+cuda"


def _empty(like: Tensor, dtype=torch.long) -> Tensor:
    return torch.empty(0, dtype=dtype, device=like.device)


def activation_kind(module: nn.Module) -> Optional[Tuple[int, float]]:
    """``(kind, negative_slope)`` for an activation module the kernels implement, else None."""
    if isinstance(module, nn.ReLU):
        return 0, 0.0
    if isinstance(module, nn.LeakyReLU):
        return 1, float(module.negative_slope)
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return 2, 0.0
    if isinstance(module, nn.SiLU):
        return 3, 0.0
    if isinstance(module, nn.Tanh):
        return 4, 0.0
    if isinstance(module, nn.Sigmoid):
        return 5, 0.0
    return None


def activation_difference(a: Tensor, delta: Tensor, kind: int, slope: float = 0.0) -> Tensor:
    """``σ(a + Δ_k) − σ(a)`` for ``Δ: (K, *a.shape)``."""
    piecewise = kind in vectorized.PIECEWISE_LINEAR  # exact fp32 form in one pass: the kernel wins on CPU too
    if _compiled(a, op="" if piecewise else "activation_difference"):
        return torch.ops.zeroth.activation_difference(a, delta, kind, slope)
    if piecewise and not getattr(_reference_only, "on", False):
        return vectorized.piecewise_linear_difference(a, delta, slope)
    return reference.activation_difference(a, delta, kind, slope)


def activation_difference_confined(a: Tensor, channels: Tensor, delta: Tensor, kind: int, slope: float = 0.0) -> Tensor:
    """``a: (B, C, S)``, ``Δ: (K, B, S)`` on channel ``channels[k]`` -> ``(K, B, S)``."""
    if _compiled(a):
        return torch.ops.zeroth.activation_difference_confined(a, channels, delta, kind, slope)
    return reference.activation_difference_confined(a, channels, delta, kind, slope)


def batchnorm_difference(a: Tensor, delta: Tensor, channels: Optional[Tensor], weight: Optional[Tensor],
                         eps: float) -> Tensor:
    """Per-copy train-mode BatchNorm difference; ``a: (B, C, S)``; Δ dense ``(K, B, C, S)``
    or confined ``(K, B, S)`` with ``channels: (K,)``. ``weight``: γ or None (β cancels)."""
    channels = _empty(a) if channels is None else channels
    weight = _empty(a, a.dtype) if weight is None else weight.detach()
    bias = _empty(a, a.dtype)
    if _compiled(a):
        return torch.ops.zeroth.batchnorm_difference(a, delta, channels, weight, bias, eps)
    return reference.batchnorm_difference(a, delta, channels, weight, bias, eps)


def cross_entropy_difference(logits: Tensor, targets: Tensor, delta: Tensor, channels: Optional[Tensor] = None) -> Tensor:
    """Per-copy ``CE(z + Δ_k) − CE(z)`` in float64; Δ ``(K, B, C)`` or ``(K, B)`` with ``channels``."""
    channels = _empty(logits) if channels is None else channels
    if _compiled(logits, op="cross_entropy_difference"):
        return torch.ops.zeroth.cross_entropy_difference(logits, targets, delta, channels)
    return reference.cross_entropy_difference(logits, targets, delta, channels)


def head_cross_entropy_difference(x: Tensor, logits: Tensor, targets: Tensor, mu: float, with_bias: bool) -> Tensor:
    """CE change of every last-Linear coordinate moved by ``mu``: ``(O, I + with_bias)`` float64."""
    if _compiled(x, op="head_cross_entropy_difference"):
        return torch.ops.zeroth.head_cross_entropy_difference(x, logits, targets, float(mu), bool(with_bias))
    return reference.head_cross_entropy_difference(x, logits, targets, float(mu), bool(with_bias))


def conv_weight_patches(x: Tensor, c: Tensor, i: Tensor, j: Tensor, out_hw: Tuple[int, int], stride, padding,
                        dilation) -> Tensor:
    """Input values multiplying Conv2d weights ``(·, c_k, i_k, j_k)``: ``(K, B, h, w)``."""
    args = (int(out_hw[0]), int(out_hw[1]), int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
            int(dilation[0]), int(dilation[1]))
    if _compiled(x):
        return torch.ops.zeroth.conv_weight_patches(x, c, i, j, *args)
    return reference.conv_weight_patches(x, c, i, j, *args)


def scatter_scaled_add(grad: Tensor, indices: Tensor, coeffs: Tensor, scale: float) -> Tensor:
    """``grad[indices] += coeffs·scale`` in place on a flat contiguous ``grad``."""
    if _compiled(grad):
        return torch.ops.zeroth.scatter_scaled_add(grad, indices, coeffs, float(scale))
    return reference.scatter_scaled_add(grad, indices, coeffs, float(scale))
