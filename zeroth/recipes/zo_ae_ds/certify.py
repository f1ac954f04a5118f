r"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): certify, predict, certified accuracy.

The smoothed classifier is :math:`g(x) = \arg\max_c P(h(x + δ) = c)`, :math:`δ \sim N(0, σ^2 I)`,
for a base classifier ``h`` (here ``f``, ``f∘D`` or ``f∘Dec∘Enc∘D``). If the top class has
probability at least :math:`\underline{p_A} > 1/2`, then ``g`` is constant on the L2 ball of
radius :math:`σ\,Φ^{-1}(\underline{p_A})`.

``certify`` is Cohen et al.'s CERTIFY: ``n0`` samples pick the candidate class, ``n`` fresh
samples bound its probability from below by the exact (Clopper–Pearson) one-sided ``1 − α``
bound, and the answer is that class with radius :math:`σΦ^{-1}(\underline{p_A})`, or
:data:`ABSTAIN` when :math:`\underline{p_A} < 1/2`. ``predict`` is their PREDICT: the top
class unless a two-sided binomial test between the two most frequent classes cannot reject
equality at level ``α``. ``σ`` is the noise standard deviation on [0, 1] pixels (the paper
writes σ² = 0.25, its code and README use σ = 0.25: we follow the code).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..._optional import require
from ._checks import positive

ABSTAIN = -1
"""The prediction of a smoothed classifier that declines to answer."""


@dataclass(frozen=True)
class Certificate:
    """One certified input: the prediction (or :data:`ABSTAIN`), its L2 radius and the evidence.

    Attributes:
        prediction: the certified class, or :data:`ABSTAIN` (-1).
        radius: the certified L2 radius ``σ·Φ⁻¹(p_lower)`` (0.0 when abstaining).
        p_lower: Clopper–Pearson lower bound on ``P(h(x + δ) = prediction)``.
        count: samples (of ``n``) that voted for the candidate class.
        n: samples of the estimation round.
        label: the true label, when given.
    """

    prediction: int
    radius: float  # 0.0 when abstaining
    p_lower: float  # Clopper–Pearson lower bound on P(h(x + δ) = prediction)
    count: int  # samples (of n) that voted for the candidate class
    n: int
    label: Optional[int] = None

    @property
    def correct(self) -> bool:
        """Predicted the label (an abstention is never correct).

        Raises:
            ValueError: the certificate has no label.
        """
        if self.label is None:
            raise ValueError("this certificate has no label (pass label= to certify)")
        return self.prediction != ABSTAIN and self.prediction == self.label


def _check_test(sigma, n, alpha):
    """``sigma > 0``, integer ``n > 0`` and ``0 < alpha < 1/2``, validated (ValueError naming each)."""
    return (positive("sigma", sigma), positive("n", n, integer=True), positive("alpha", alpha, upper=0.5))


def _check_input(x) -> Tensor:
    """One floating-point input (no batch dimension), or a TypeError."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point torch.Tensor (one input, without batch dimension), got {type(x).__name__}"
        )
    return x


def sample_counts(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    sigma: float,
    num: int,
    *,
    batch: int = 1000,
    generator: Optional[torch.Generator] = None,
    num_classes: Optional[int] = None,
) -> Tensor:
    """Votes of ``model`` on ``num`` noisy copies ``x + δ``: an int64 tensor ``(num_classes,)``.

    The noise is drawn on the generator's device (the CPU by default) from ``generator``, so
    a seeded generator gives the same votes on every run; ``batch`` bounds one model call.

    Raises:
        ValueError: ``sigma``, ``num`` or ``batch`` not > 0.
        TypeError: ``x`` is not a floating-point tensor.
    """
    x = _check_input(x)
    sigma = positive("sigma", sigma)
    num = positive("num", num, integer=True)
    batch = positive("batch", batch, integer=True)
    noise_device = generator.device if generator is not None else torch.device("cpu")
    counts: Optional[Tensor] = None
    with torch.no_grad():
        for start in range(0, num, batch):
            k = min(batch, num - start)
            noise = torch.randn((k,) + tuple(x.shape), generator=generator, device=noise_device, dtype=x.dtype)
            logits = model(x.unsqueeze(0) + sigma * noise.to(x.device))  # (k, K)
            if counts is None:
                counts = torch.zeros(num_classes or logits.shape[-1], dtype=torch.long)
            classes = counts.numel()
            counts += torch.bincount(logits.argmax(-1).cpu(), minlength=classes)[:classes]
    assert counts is not None
    return counts


def lower_confidence_bound(count: int, n: int, alpha: float) -> float:
    """Exact one-sided ``1 − α`` Clopper–Pearson lower bound on a binomial proportion.

    The lower end of scipy's two-sided exact interval at confidence ``1 − 2α``
    (``binomtest(count, n).proportion_ci(1 − 2α, "exact")``), i.e. ``Beta(α; count, n − count + 1)``
    — the bound Cohen et al. compute with ``proportion_confint(count, n, 2α, "beta")``.

    Raises:
        ImportError: scipy is not installed.

    References:
        C. J. Clopper and E. S. Pearson, "The use of confidence or fiducial limits illustrated
        in the case of the binomial", Biometrika 26(4):404–413, 1934.
    """
    stats = require("scipy.stats", "science")
    if count == 0:
        return 0.0
    return float(stats.binomtest(int(count), int(n)).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low)


def certify(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    sigma: float,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch: int = 1000,
    *,
    generator: Optional[torch.Generator] = None,
    label: Optional[int] = None,
    num_classes: Optional[int] = None,
) -> Certificate:
    """Cohen et al.'s CERTIFY for one input ``x`` (no batch dimension) of the smoothed ``model``.

    Returns the predicted class with radius ``σ·Φ⁻¹(p̲A)``, or :data:`ABSTAIN` (radius 0) when
    ``p̲A < 1/2``. With probability ≥ ``1 − α`` over the noise, a returned class is the
    smoothed classifier's and is constant on the ball. Put ``model`` in eval mode first.

    Args:
        model: the base classifier ``(b, *x.shape) → logits (b, K)``.
        x: one floating input, without batch dimension.
        sigma: noise standard deviation (in the units of ``x``: [0, 1] pixels here).
        n0: samples that pick the candidate class.
        n: samples that bound its probability.
        alpha: failure probability of the certificate, in (0, 1/2).
        batch: noisy copies per model call.
        generator: noise source (None: torch's global RNG, on the CPU).
        label: the true label, stored in the certificate (for :attr:`Certificate.correct`).
        num_classes: ``K`` (default: the model's output width).

    Raises:
        ValueError: ``sigma``, ``n``, ``n0`` or ``batch`` not > 0, or ``alpha`` not in (0, 1/2).
        TypeError: ``x`` is not a floating-point tensor.
        ImportError: scipy is not installed (the ``science`` extra).

    References:
        J. Cohen, E. Rosenfeld and J. Z. Kolter, "Certified adversarial robustness via
        randomized smoothing", ICML 2019, arXiv:1902.02918 (CERTIFY, Theorem 1).
    """
    sigma, n, alpha = _check_test(sigma, n, alpha)
    n0 = positive("n0", n0, integer=True)
    stats = require("scipy.stats", "science")
    selection = sample_counts(model, x, sigma, n0, batch=batch, generator=generator, num_classes=num_classes)
    candidate = int(selection.argmax())
    counts = sample_counts(model, x, sigma, n, batch=batch, generator=generator, num_classes=selection.numel())
    count = int(counts[candidate])
    p_lower = lower_confidence_bound(count, n, alpha)
    if p_lower < 0.5:
        return Certificate(ABSTAIN, 0.0, p_lower, count, n, label)
    return Certificate(candidate, sigma * float(stats.norm.ppf(p_lower)), p_lower, count, n, label)


def predict(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    sigma: float,
    n: int = 10_000,
    alpha: float = 0.001,
    batch: int = 1000,
    *,
    generator: Optional[torch.Generator] = None,
    num_classes: Optional[int] = None,
) -> int:
    """Cohen et al.'s PREDICT: the smoothed classifier's class, or :data:`ABSTAIN`.

    Abstains when a two-sided binomial test of the top two counts ``(nA, nB)`` against
    ``p = 1/2`` has p-value ``> α``; a returned class is wrong with probability ≤ ``α``.
    Arguments as for :func:`certify`.

    Raises:
        ValueError: ``sigma``, ``n`` or ``batch`` not > 0, or ``alpha`` not in (0, 1/2).
        TypeError: ``x`` is not a floating-point tensor.
        ImportError: scipy is not installed.

    References:
        J. Cohen, E. Rosenfeld and J. Z. Kolter, ICML 2019, arXiv:1902.02918 (PREDICT).
    """
    sigma, n, alpha = _check_test(sigma, n, alpha)
    stats = require("scipy.stats", "science")
    counts = sample_counts(model, x, sigma, n, batch=batch, generator=generator, num_classes=num_classes)
    top = torch.topk(counts, min(2, counts.numel()))
    n_a = int(top.values[0])
    n_b = int(top.values[1]) if counts.numel() > 1 else 0
    if stats.binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(top.indices[0])


def certify_dataset(
    model: nn.Module,
    xs: Tensor,
    ys: Tensor,
    sigma: float,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch: int = 1000,
    *,
    generator: Optional[torch.Generator] = None,
    progress: bool = True,
    desc: str = "certify",
) -> List[Certificate]:
    """:func:`certify` on every row of ``xs`` (``model`` in eval mode meanwhile), labels from ``ys``.

    Args:
        model: the base classifier ``(b, *x) → logits (b, K)``.
        xs: ``(N, *x)`` inputs; ``ys``: ``(N,)`` labels.
        sigma, n0, n, alpha, batch, generator: as for :func:`certify`.
        progress: show a tqdm bar (needs the ``science`` extra).
        desc: the bar's label.

    Returns:
        One :class:`Certificate` per row, with its label.

    Raises:
        ValueError: ``ys`` has not one label per row of ``xs``, or invalid ``sigma``/``n``/``n0``/``alpha``.
        ImportError: scipy (or tqdm with ``progress=True``) is not installed.
    """
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"ys: expected {xs.shape[0]} labels (one per row of xs), got {ys.shape[0]}")
    tqdm = require("tqdm", "science").tqdm if progress else None
    was = model.training
    model.eval()
    try:
        rows = range(xs.shape[0])
        bar = tqdm(rows, desc=desc, leave=False) if tqdm else rows
        return [certify(model, xs[i], sigma, n0, n, alpha, batch, generator=generator, label=int(ys[i])) for i in bar]
    finally:
        model.train(was)


def certified_accuracy(results: Sequence[Certificate], radii: Sequence[float]) -> List[float]:
    """Fraction of ``results`` that are correct with a certified radius ≥ r, for each r in ``radii``.

    At r = 0 this is the smoothed classifier's accuracy (abstentions count as errors).

    Raises:
        ValueError: ``results`` is empty, or a radius is not a number ≥ 0.
    """
    if len(results) == 0:
        raise ValueError("results: no certificates")
    for r in radii:
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not r >= 0:
            raise ValueError(f"Invalid radii value: {r!r} (radii must be numbers >= 0)")
    return [sum(c.correct and c.radius >= r for c in results) / len(results) for r in radii]
