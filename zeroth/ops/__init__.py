"""``zeroth.ops``: the hot loops of feature reuse and difference propagation.

Each op runs a compiled kernel from ``zeroth/csrc/`` (C++ on CPU, CUDA on GPU) when one is
built for the tensors' device and dtype, and otherwise its pure-PyTorch twin in
:mod:`zeroth.ops.reference`. ``backend()`` says which: ``"cpp"``, ``"cpp+cuda"`` or
``"python"``. The kernels build on first use from the sources installed with the package
(see :mod:`zeroth.ops._build`); ``ZEROTH_OPS=python`` forces the reference,
``ZEROTH_OPS=cpp`` makes a failed build an error instead of a warning.

The ops (shapes in each docstring):

* ``activation_difference`` / ``activation_difference_confined``: ``σ(a + Δ_k) − σ(a)``
  with ``a`` broadcast over the K copies (never K copies of ``a`` in memory);
* ``batchnorm_difference``: train-mode BatchNorm with per-copy batch statistics;
* ``cross_entropy_difference``: per-copy ``CE(z + Δ_k) − CE(z)`` from the cached softmax;
* ``head_cross_entropy_difference``: every coordinate of the last Linear layer at once;
* ``conv_weight_patches``: the Δ of a chunk of Conv2d weight coordinates (divided by μ);
* ``scatter_scaled_add``: ``grad[idx] += c·scale`` for the selected coordinates;
* ``rademacher_involution_`` / ``rademacher_sgd_``: the exact in-place (MeZO) step of
  :mod:`zeroth.estimators.exact_perturbation` — the involutions of a perturb/move/restore
  pass, and the restore fused with the SGD update — each reading and writing a parameter once.

Every op checks its arguments before reading memory, the same way in C++ and Python (one
helper per op, ``zeroth_checks.h`` and :mod:`zeroth.ops._checks`): ``TypeError`` for a
dtype it does not take, ``IndexError`` for an index, target or channel out of range (a
cross-entropy target of ``ignore_index`` included), ``ValueError`` for shapes, lengths,
devices or an unknown activation kind. The kernels dispatch float32 and float64; tensors of
another floating dtype (bfloat16, float16) run the reference, which computes in float64.
The exact Rademacher kernels dispatch float16, bfloat16, float32 and float64 and agree with
their references bitwise (both round every step in the parameter's own dtype).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _checks, reference, vectorized
from ._build import KernelBuildWarning, cuda_buildable, load, mode
from ._checks import KERNEL_DTYPES
from .activations import PIECEWISE_LINEAR, Activation, activation_kind

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "KERNEL_DTYPES",
    "KernelBuildWarning",
    "activation_difference",
    "activation_difference_confined",
    "activation_kind",
    "backend",
    "batchnorm_difference",
    "conv_weight_patches",
    "cross_entropy_difference",
    "cuda_buildable",
    "head_cross_entropy_difference",
    "mode",
    "rademacher_involution_",
    "rademacher_sgd_",
    "reference",
    "reference_only",
    "scatter_scaled_add",
]

ACTIVATIONS = tuple(kind.name.lower() for kind in Activation)
"""Names of the activation kinds, indexed by :class:`Activation` value."""

_lock = threading.Lock()
_loaded: Optional[str] = None
_tried = False
_reference_only = threading.local()


def backend() -> str:
    """What runs the ops: ``"cpp"``, ``"cpp+cuda"`` or ``"python"``.

    The first call builds (or loads from the cache) the compiled kernels; without a C++
    compiler, or with ``ZEROTH_OPS=python``, it returns ``"python"`` (after one
    :class:`KernelBuildWarning` when a build was tried and failed).

    Raises:
        RuntimeError: ``ZEROTH_OPS=cpp`` and the kernels did not build.
        ValueError: ``ZEROTH_OPS`` has a value other than ``auto``, ``cpp``, ``python``.
    """
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
# as the scalar float64 loop of zeroth/csrc/zeroth_ops.cpp (bench.kernels: GELU 0.6×; a full
# ResNet-20 CGE sample 2.3 s vs 3.6 s), so on CPU it runs the reference (ReLU/LeakyReLU run
# the kernel's exact fp32 form, see activation_difference); its kernel is still built,
# tested and used on CUDA. (The head and cross-entropy kernels lose in isolation at K = 512
# dense copies but win inside a full digits-CNN gradient, where their inputs are confined.)
_CPU_PREFERS_REFERENCE = frozenset({"activation_difference"})


def _compiled(tensors: Sequence[Tensor], floats: Sequence[Tensor], op: str = "") -> bool:
    """True when a compiled kernel serves these tensors (and is the faster path there).

    ``tensors``: every tensor argument; ``floats``: those the kernel reads as float32/float64.
    Tensors on different devices or of another dtype go to the reference, which raises the
    kernel's error or computes in float64.
    """
    if getattr(_reference_only, "on", False):
        return False
    active = backend()
    if active == "python":
        return False
    device = tensors[0].device
    if any(t.device != device for t in tensors) or any(t.dtype not in KERNEL_DTYPES for t in floats):
        return False
    if device.type == "cpu":
        return op not in _CPU_PREFERS_REFERENCE
    return device.type == "cuda" and active == "cpp+cuda"


def _empty(like: Tensor, dtype=torch.long) -> Tensor:
    return torch.empty(0, dtype=dtype, device=like.device)


def activation_difference(a: Tensor, delta: Tensor, kind: int, slope: float = 0.0) -> Tensor:
    """``σ(a + Δ_k) − σ(a)`` for every copy k: an exact finite difference, not a linearisation.

    Args:
        a: base pre-activation, any shape, floating.
        delta: ``(K, *a.shape)``, the change of each of K copies; ``a``'s dtype and device.
        kind: an :class:`Activation`.
        slope: LeakyReLU's negative slope (ignored by the other kinds).

    Returns:
        ``(K, *a.shape)`` in ``delta``'s dtype. Smooth kinds are computed in float64 and rounded
        once; ReLU/LeakyReLU in the operands' precision by a form without cancellation (within a
        few ulp of Δ of the float64 value).

    Raises:
        TypeError: a non-floating ``a``, or ``delta`` of another dtype.
        ValueError: an unknown ``kind``, a ``delta`` shape other than ``(K, *a.shape)``, or
            tensors on different devices.
    """
    piecewise = kind in PIECEWISE_LINEAR  # exact fp32 form in one pass: the kernel wins on CPU too
    if _compiled((a, delta), (a, delta), op="" if piecewise else "activation_difference"):
        return torch.ops.zeroth.activation_difference(a, delta, int(kind), slope)
    if piecewise and not getattr(_reference_only, "on", False):
        _checks.activation(a, delta, kind)
        return vectorized.piecewise_linear_difference(a, delta, slope)
    return reference.activation_difference(a, delta, kind, slope)


def activation_difference_confined(a: Tensor, channels: Tensor, delta: Tensor, kind: int, slope: float = 0.0) -> Tensor:
    """``σ(a[:, c_k] + Δ_k) − σ(a[:, c_k])`` for copies whose change is confined to one channel.

    Args:
        a: ``(B, C, S)`` base pre-activation (``S``: the flattened spatial size), floating.
        channels: ``(K,)`` integer, the channel ``c_k`` of copy k, in ``[0, C)``.
        delta: ``(K, B, S)``, copy k's change on its channel; ``a``'s dtype.
        kind, slope: as in :func:`activation_difference`.

    Returns:
        ``(K, B, S)`` in ``delta``'s dtype (computed as in :func:`activation_difference`).

    Raises:
        TypeError: non-floating ``a``, ``delta`` of another dtype, or non-integer ``channels``.
        IndexError: a channel outside ``[0, C)``.
        ValueError: an unknown ``kind``, mismatched shapes, or tensors on different devices.
    """
    if _compiled((a, channels, delta), (a, delta)):
        return torch.ops.zeroth.activation_difference_confined(a, channels, delta, int(kind), slope)
    return reference.activation_difference_confined(a, channels, delta, kind, slope)


def batchnorm_difference(
    a: Tensor, delta: Tensor, channels: Optional[Tensor], weight: Optional[Tensor], eps: float
) -> Tensor:
    """Train-mode BatchNorm of each copy ``a + Δ_k`` (its own batch statistics) minus that of ``a``.

    Args:
        a: ``(B, C, S)`` base input, floating.
        delta: dense ``(K, B, C, S)``, or confined ``(K, B, S)`` with ``channels``; ``a``'s dtype.
        channels: ``(K,)`` integer channel of each confined copy, in ``[0, C)``; None when dense.
        weight: γ ``(C,)`` or None (no affine). β cancels in the difference.
        eps: BatchNorm's ε, added to the variance.

    Returns:
        ``delta``'s shape and dtype; statistics over ``(B, S)`` per copy and channel, in float64.

    Raises:
        TypeError: non-floating ``a``/``weight``, ``delta`` of another dtype, non-integer ``channels``.
        IndexError: a channel outside ``[0, C)``.
        ValueError: mismatched shapes (``weight`` not ``(C,)`` included) or devices.
    """
    channels = _empty(a) if channels is None else channels
    weight = _empty(a, a.dtype) if weight is None else weight.detach()
    bias = _empty(a, a.dtype)
    if _compiled((a, delta, channels, weight, bias), (a, delta) + ((weight,) if weight.numel() else ())):
        return torch.ops.zeroth.batchnorm_difference(a, delta, channels, weight, bias, eps)
    return reference.batchnorm_difference(a, delta, channels, weight, bias, eps)


def cross_entropy_difference(
    logits: Tensor, targets: Tensor, delta: Tensor, channels: Optional[Tensor] = None
) -> Tensor:
    """``CE(z + Δ_k) − CE(z)`` per copy (cross-entropy, mean over the batch) from the cached softmax.

    Args:
        logits: ``z``, ``(B, C)``, floating.
        targets: ``(B,)`` integer class indices in ``[0, C)``. Class-probability targets and
            ``ignore_index`` entries are not supported: the caller declines them.
        delta: dense ``(K, B, C)``, or ``(K, B)`` moving only logit ``channels[k]`` of copy k.
        channels: ``(K,)`` integer logit of each copy, in ``[0, C)``; None when dense.

    Returns:
        ``(K,)`` float64.

    Raises:
        TypeError: non-floating ``logits``/``delta`` or non-integer ``targets``/``channels``.
        IndexError: a target (e.g. ``ignore_index=-100``) or channel outside ``[0, C)``.
        ValueError: mismatched shapes or devices.
    """
    channels = _empty(logits) if channels is None else channels
    if _compiled((logits, targets, delta, channels), (logits, delta), op="cross_entropy_difference"):
        return torch.ops.zeroth.cross_entropy_difference(logits, targets, delta, channels)
    return reference.cross_entropy_difference(logits, targets, delta, channels)


def head_cross_entropy_difference(x: Tensor, logits: Tensor, targets: Tensor, mu: float, with_bias: bool) -> Tensor:
    """The cross-entropy change of every coordinate of the last Linear layer moved by ``mu``.

    Weight ``(o, i)`` changes logit ``o`` by ``μ·x[:, i]``, the bias entry ``o`` by ``μ``; each
    coordinate's change of the batch-mean cross-entropy is O(B) from the cached softmax.

    Args:
        x: ``(B, I)`` input of the layer, floating.
        logits: ``(B, O)`` its output, floating.
        targets: ``(B,)`` integer class indices in ``[0, O)``.
        mu: the step (absolute, in parameter units).
        with_bias: add a last column for the bias.

    Returns:
        ``(O, I + with_bias)`` float64.

    Raises:
        TypeError, IndexError, ValueError: as :func:`cross_entropy_difference`.
    """
    if _compiled((x, logits, targets), (x, logits), op="head_cross_entropy_difference"):
        return torch.ops.zeroth.head_cross_entropy_difference(x, logits, targets, float(mu), bool(with_bias))
    return reference.head_cross_entropy_difference(x, logits, targets, float(mu), bool(with_bias))


def conv_weight_patches(
    x: Tensor, c: Tensor, i: Tensor, j: Tensor, out_hw: Tuple[int, int], stride, padding, dilation
) -> Tensor:
    """The input values that Conv2d weight coordinates ``(·, c_k, i_k, j_k)`` multiply.

    This is the change of the output channel when the weight moves by 1 (zero padding).

    Args:
        x: ``(B, C, H, W)`` input of the convolution, floating.
        c, i, j: ``(K,)`` integer input channel, kernel row and kernel column of each coordinate
            (equal lengths); ``c`` in ``[0, C)``, and each row/column offset must keep the
            receptive field inside the padded input (true of every coordinate of a Conv2d
            whose output is ``out_hw``).
        out_hw: the convolution's output size ``(h, w)``.
        stride, padding, dilation: pairs, as the Conv2d's.

    Returns:
        ``(K, B, h, w)`` in ``x``'s dtype.

    Raises:
        TypeError: non-floating ``x`` or non-integer ``c``/``i``/``j``.
        IndexError: a channel or offset out of range.
        ValueError: unequal lengths, bad strides/paddings/dilations, or tensors on different devices.
    """
    args = (
        int(out_hw[0]),
        int(out_hw[1]),
        int(stride[0]),
        int(stride[1]),
        int(padding[0]),
        int(padding[1]),
        int(dilation[0]),
        int(dilation[1]),
    )
    if _compiled((x, c, i, j), (x,)):
        return torch.ops.zeroth.conv_weight_patches(x, c, i, j, *args)
    return reference.conv_weight_patches(x, c, i, j, *args)


def scatter_scaled_add(grad: Tensor, indices: Tensor, coeffs: Tensor, scale: float) -> Tensor:
    """``grad[indices[k]] += coeffs[k]·scale`` in place (repeated indices accumulate).

    Args:
        grad: flat (1-D) contiguous, floating; updated in place and returned.
        indices: ``(K,)`` integer, in ``[0, grad.numel())``.
        coeffs: ``(K,)`` floating (read in float64).
        scale: a common factor.

    Raises:
        TypeError: non-floating ``grad``/``coeffs`` or non-integer ``indices``.
        IndexError: an index out of range.
        ValueError: ``grad`` not flat and contiguous, unequal lengths, or different devices.
    """
    if _compiled((grad, indices, coeffs), (grad, coeffs)):
        return torch.ops.zeroth.scatter_scaled_add(grad, indices, coeffs, float(scale))
    return reference.scatter_scaled_add(grad, indices, coeffs, float(scale))


def _exact_compiled(x: Tensor, *words: Tensor) -> bool:
    """``_compiled`` for the exact Rademacher ops (every floating dtype), with less per-call work:
    these run once per parameter tensor and pass, many of them small."""
    if getattr(_reference_only, "on", False):
        return False
    active = _loaded if _tried else backend()
    if not active:
        return False
    device = x.device
    if any(w.device != device for w in words):
        return False  # the reference raises the kernel's error
    return device.type == "cpu" or (device.type == "cuda" and active == "cpp+cuda")


def rademacher_involution_(x: Tensor, words: Tensor, signs: Sequence[float], a: float) -> Tensor:
    """Apply the exact involutions ``S_{signs[m]·r_m}`` to ``x`` in place, one after the other.

    ``S_{±r}(x) = x ± r·σ(x)·a`` with ``σ(x) = (−1)^⌊x/a⌋``, applied to an entry only where that
    sum is exact in x's dtype (else the entry is kept): applying the same involution again
    restores ``x`` bitwise (see :mod:`zeroth.estimators.exact_perturbation`).

    Args:
        x: flat (1-D) contiguous float16/bfloat16/float32/float64, updated in place and returned.
        words: ``(M, W)`` int64, row m the packed random bits ``r_m`` (entry ``t`` is bit ``t % 64``
            of word ``t // 64``: 1 means +1), ``W ≥ ⌈x.numel()/64⌉``; x's device.
        signs: M values, each +1 or −1.
        a: the step, a power of two > 0 (absolute, in x's units).

    Raises:
        TypeError: ``x`` of another dtype, or ``words`` not int64.
        ValueError: ``x`` not flat and contiguous, a ``words`` shape other than ``(M, W)``,
            a sign other than ±1, ``a`` not a finite power of two > 0, or different devices.
    """
    if _exact_compiled(x, words):
        return torch.ops.zeroth.rademacher_involution_(x, words, [float(s) for s in signs], float(a))
    return reference.rademacher_involution_(x, words, [float(s) for s in signs], float(a))


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
    """Undo ``S_{undo_signs[m]·r_m}``, then MeZO's SGD update from the displacements actually applied, in place.

    ``x ← x·decay + scale·Σ_k w_k·D_k(x)/a``, formed in float32 (16-bit ``x``) or float64 and
    rounded once to x's dtype; ``D_k(x)/a = u·(ok₊ + ok₋)/2`` (two-sided) or ``u·ok₊`` (one-sided):
    ±1, ±½ or 0 where an exact partner is missing. A result below ``2a`` in magnitude is
    rounded to the nearest multiple of ``Q = ulp(2a)`` (x's dtype), so it is perturbed from the
    next step on. Without directions (``K = 0``) nothing is added; ``decay == 1`` multiplies by nothing.

    Args:
        x: as for :func:`rademacher_involution_`.
        undo_words, undo_signs: the moves to undo first (``(M, W)`` words, M signs; M may be 0).
        words: ``(K, W)`` int64, row k the bits of direction k.
        weights: K coefficients ``w_k``.
        a: the step, a power of two > 0.
        scale: the factor of the sum (``∓lr/μ``).
        decay: ``1 − lr·weight_decay``.
        antithetic: two-sided directions (``D`` counts both partners).

    Raises:
        TypeError, ValueError: as :func:`rademacher_involution_` (for both word tensors).
    """
    undo, weights = [float(s) for s in undo_signs], [float(w) for w in weights]
    if _exact_compiled(x, undo_words, words):
        return torch.ops.zeroth.rademacher_sgd_(
            x, undo_words, undo, words, weights, float(a), float(scale), float(decay), bool(antithetic)
        )
    return reference.rademacher_sgd_(
        x, undo_words, undo, words, weights, float(a), float(scale), float(decay), bool(antithetic)
    )
