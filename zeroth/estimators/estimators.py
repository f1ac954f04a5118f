"""Gradient estimators from loss values alone: CGE, RGE, SPSA.

Each estimator is two pure pieces (optax style):

* ``directions(params, ...)`` — which points to evaluate (a :class:`Directions`);
* ``combine(dirs, base, losses)`` — per-direction coefficients ``c`` such that the
  estimate is ``ĝ_j = Σ_i c_i d_ij / μ_j`` (``dirs.accumulate`` applies that sum).

Forward differences (DeepZero's notation, ``φ = d`` for sphere directions, else 1)::

    CGE:  ĝ = Σ_k (ℓ(θ + μ e_k) − ℓ(θ)) / μ · e_k                      (d + 1 evaluations)
    RGE:  ĝ = (1/q) Σ_i φ (ℓ(θ + μ u_i) − ℓ(θ)) / μ · u_i              (q + 1 evaluations)

Central / antithetic variants replace ``ℓ(θ + μ d) − ℓ(θ)`` by ``(ℓ(θ + μ d) − ℓ(θ − μ d))/2``
(2d or 2q evaluations, error O(μ²) instead of O(μ)). SPSA is the antithetic RGE with
q = 1 and Rademacher (or Gaussian, as in MeZO) directions.

**The unit of μ.** ``mu`` is an *absolute* step in the units of the parameter it perturbs
(θ_k moves to θ_k ± μ whatever ``|θ_k|`` is), not a step relative to ``|θ|`` as
scipy.optimize's finite differences take (``finite_diff_rel_step``:
``h = rel_step · max(1, |x|)``). One μ per parameter group can be set through
``ZOOptimizer(params=[{"params": ..., "mu": ...}])``.

References:
    J. C. Spall, "Multivariate stochastic approximation using a simultaneous perturbation
    gradient approximation", IEEE Trans. Automatic Control 37(3):332–341, 1992 (SPSA).

    Y. Nesterov and V. Spokoiny, "Random gradient-free minimization of convex functions",
    Foundations of Computational Mathematics 17(2):527–566, 2017 (Gaussian smoothing, RGE).

    J. C. Duchi, M. I. Jordan, M. J. Wainwright and A. Wibisono, "Optimal rates for zero-order
    convex optimization: the power of two function evaluations", IEEE Trans. Information
    Theory 61(5):2788–2806, 2015 (sphere directions, two-point estimates).

    S. Malladi et al., "Fine-tuning language models with just forward passes", NeurIPS 2023,
    arXiv:2305.17333 (MeZO: SPSA with Gaussian directions regenerated from a seed).

    A. Chen et al., "DeepZero: scaling up zeroth-order optimization for deep model training",
    ICLR 2024, arXiv:2310.02025 (CGE vs RGE notation used here, sparse CGE).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..registry import Registry
from .directions import Coordinates, Directions, RandomDirections


def _check_mu(mu) -> float:
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not math.isfinite(mu) or mu <= 0:
        raise ValueError(f"Invalid mu value: {mu!r} (mu must be a finite number > 0)")
    return float(mu)


def _check_q(q) -> int:
    if isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < 1:
        raise ValueError(f"Invalid q value: {q!r} (q must be an integer >= 1)")
    return int(q)


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"Invalid {name} value: {value!r} (expected one of {', '.join(map(repr, choices))})")
    return value


def draw_seed(generator: Optional[torch.Generator]) -> int:
    """A seed for one step's random directions, drawn from ``generator``.

    Args:
        generator: a CPU ``torch.Generator``; None draws from torch's global RNG.

    Returns:
        An int in ``[0, 2**62)`` (one ``torch.randint`` draw, so the generator advances by one draw).
    """
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


class Estimator:
    """Base class of gradient estimators: ``directions`` (where to evaluate) + ``combine`` (how).

    A subclass implements :meth:`directions`, :meth:`combine` and :meth:`num_evaluations` and
    sets ``name`` (its registry key) and ``kind`` (``"coordinates"`` or ``"random"``: the
    family of its direction sets, which evaluators and :class:`~zeroth.blackbox.BlackBox`
    read). The structural contract is :class:`zeroth.protocols.Estimator`.

    Args:
        mu: the perturbation size μ > 0, an absolute step in the units of the parameters
            (not relative to ``|θ|``; see the module docstring).

    Raises:
        ValueError: ``mu`` is not a finite real number > 0.
    """

    name = "estimator"

    def __init__(self, mu: float):
        self.mu = _check_mu(mu)

    def directions(
        self,
        params: Sequence[Tensor],
        *,
        mus: Optional[Sequence[float]] = None,
        generator: Optional[torch.Generator] = None,
        masks: Optional[Sequence[Optional[Tensor]]] = None,
    ) -> Directions:
        """The direction set of one step: the points ``θ ± μ_j·d`` whose losses are needed.

        Args:
            params: the parameter tensors (any shapes, floating dtypes) the estimate is for.
            mus: one μ per tensor (absolute steps in that tensor's units); None uses ``self.mu``.
            generator: where random directions (and their seed) come from; None: torch's global RNG.
            masks: per tensor, a 1-D int64 tensor of flat (row-major) indices of the coordinates
                to estimate, or None for all of them (sparse ZO, :mod:`zeroth.sparsity`).

        Returns:
            A :class:`~zeroth.estimators.directions.Directions` over ``params``.

        Raises:
            ValueError: ``mus`` has not one entry per tensor, or an entry is not a finite number > 0.
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def combine(self, dirs: Directions, base: Optional[Tensor], losses: Tensor) -> Tensor:
        """Per-direction coefficients ``c`` of the estimate ``ĝ_j = Σ_i c_i d_ij / μ_j`` (``dirs.accumulate``).

        Pure (no state, no randomness): the finite differences of ``losses``, scaled.

        Args:
            dirs: the direction set the losses were evaluated on.
            base: ℓ(θ), 0-d (or shaped like one row of ``losses``), for one-sided schemes
                (``dirs.needs_base``); ignored, and may be None, for two-sided ones.
            losses: ``(len(dirs), ...)``, float64 as the evaluators return them: the loss at each
                evaluation point, ``+`` block first then ``−`` block for two-sided schemes. Extra
                trailing dimensions are carried through (one estimate per output, as
                :func:`~zeroth.estimators.zo_jacobian` and the black boxes use it).

        Returns:
            ``(dirs.num_directions, ...)`` coefficients, the dtype of ``losses``.

        Raises:
            ValueError: ``losses`` does not have ``len(dirs)`` rows, or ``base`` is None for a
                one-sided scheme.
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def num_evaluations(self, dim: int) -> int:
        """Loss evaluations one step costs for ``dim`` estimated coordinates, ℓ(θ) included when needed.

        Args:
            dim: number of coordinates the step estimates (all of ``params``, or the masked ones).

        Returns:
            The count (RGE/SPSA: independent of ``dim``).

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def _mus(self, params, mus):
        if mus is None:
            return [self.mu] * len(params)
        if len(mus) != len(params):
            raise ValueError("mus must have one entry per parameter")
        return [_check_mu(m) for m in mus]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _differences(dirs: Directions, base: Optional[Tensor], losses: Tensor) -> Tensor:
    """``ℓ₊ − ℓ(θ)`` (one-sided) or ``(ℓ₊ − ℓ₋)/2`` (two-sided), one row per direction."""
    n = dirs.num_directions
    if losses.shape[0] != len(dirs):
        raise ValueError(f"losses: expected {len(dirs)} values, got {losses.shape[0]}")
    if dirs.num_signs == 2:
        return (losses[:n] - losses[n:]) / 2
    if base is None:
        raise ValueError("base: one-sided differences need the loss at θ")
    return losses - base


ESTIMATORS = Registry("estimator", Estimator)


@ESTIMATORS.register("cge")
class CGE(Estimator):
    """Coordinate-wise gradient estimate: one finite difference per (selected) coordinate.

    ``scheme="forward"``: ``ĝ_k = (ℓ(θ + h_k e_k) − ℓ(θ)) / h_k`` (``d + 1`` evaluations,
    error O(μ)); ``"central"``: ``ĝ_k = (ℓ(θ + h_k e_k) − ℓ(θ − h'_k e_k)) / (h_k + h'_k)``
    (``2d`` evaluations, error O(μ²)). ``h_k`` is the step actually taken,
    ``|fl(θ_k ± μ) − θ_k|``, which equals μ up to the rounding of θ_k ± μ in the parameter's
    dtype (it matters in bf16/fp16; see :class:`~zeroth.estimators.directions.Coordinates`).
    With a mask only the selected coordinates are estimated; the others get 0.

    Args:
        mu: perturbation size μ > 0, an absolute step in the parameter's units (not relative
            to ``|θ_k|`` as in scipy.optimize's ``finite_diff_rel_step``). Default 1e-3.
        scheme: ``"forward"`` (default) or ``"central"``.

    Raises:
        ValueError: ``mu`` is not a finite number > 0, or ``scheme`` is not one of the two.

    References:
        A. Chen et al., "DeepZero: scaling up zeroth-order optimization for deep model
        training", ICLR 2024, arXiv:2310.02025 (CGE with forward differences; sparse CGE).
    """

    name = "cge"
    kind = "coordinates"

    def __init__(self, mu: float = 1e-3, scheme: str = "forward"):
        super().__init__(mu)
        self.scheme = _check_choice("scheme", scheme, ("forward", "central"))

    def directions(self, params, *, mus=None, generator=None, masks=None) -> Coordinates:
        """The coordinate directions ``e_k`` of every (selected) entry of ``params``.

        The perturbed values ``fl(θ_k ± μ_j)`` are fixed here, from the parameters' current
        values. ``generator`` is not used (CGE is deterministic). Other arguments and errors as
        in :meth:`Estimator.directions`.

        Returns:
            A :class:`~zeroth.estimators.directions.Coordinates` set (``d`` directions for
            ``d`` selected coordinates).

        Raises:
            ValueError: ``mus`` has not one entry per tensor, or an entry is not a finite number > 0.
        """
        mus = self._mus(params, mus)
        if masks is None:
            masks = [None] * len(params)
        indices = [
            torch.arange(p.numel(), device=p.device) if m is None else m.to(p.device) for p, m in zip(params, masks)
        ]
        return Coordinates(indices, mus, self.scheme, params)

    def combine(self, dirs, base, losses):
        """``ℓ₊ − ℓ(θ)`` (forward) or ``(ℓ₊ − ℓ₋)/2`` (central), one per coordinate.

        Division by the step actually taken happens in ``dirs.accumulate`` (a forward step
        ``h₊``, central ``(h₊ + h₋)/2``). Arguments, shapes and errors as in :meth:`Estimator.combine`.

        Raises:
            ValueError: ``losses`` has not ``len(dirs)`` rows, or ``base`` is None with ``scheme="forward"``.
        """
        return _differences(dirs, base, losses)

    def num_evaluations(self, dim: int) -> int:
        """``dim + 1`` (forward) or ``2·dim`` (central) loss evaluations for ``dim`` coordinates."""
        return 2 * dim if self.scheme == "central" else dim + 1


@ESTIMATORS.register("rge")
class RGE(Estimator):
    """Randomized gradient estimate averaged over ``q`` random directions (seed trick).

    One-sided: ``ĝ = (φ/q) Σ_i (ℓ(θ + μ u_i) − ℓ(θ)) / μ · u_i`` (``q + 1`` evaluations);
    ``antithetic=True`` uses ``(ℓ(θ + μ u_i) − ℓ(θ − μ u_i)) / 2`` as the difference instead
    (``2q`` evaluations, no ℓ(θ)). ``φ = d`` (the number of estimated coordinates) for
    ``"sphere"`` directions, 1 otherwise, so that ``E[φ u uᵀ] = I`` in every case. The
    directions are never stored: each is regenerated from a per-step seed (drawn from the
    optimizer's generator) a chunk at a time. With Gaussian (sphere) directions the estimate's
    expectation is the gradient of the smoothed loss E ℓ(θ + μv), v ~ N(0, I) (v uniform in
    the unit ball); antithetic differences have the same expectation and a lower variance.

    Args:
        q: number of random directions per step (integer ≥ 1). Default 1.
        mu: smoothing radius μ > 0, an absolute step in the parameter's units (not relative to
            ``|θ|``). Default 1e-3.
        dist: ``"gaussian"`` (N(0, I), Nesterov–Spokoiny), ``"sphere"`` (uniform on the unit
            sphere of the estimated coordinates, Duchi et al.) or ``"rademacher"`` (±1, Spall).
        antithetic: two-sided differences ``ℓ(θ + μu) − ℓ(θ − μu)`` (default False).

    Raises:
        ValueError: ``q`` is not an integer ≥ 1, ``mu`` not a finite number > 0, or ``dist``
            not one of the three.
        TypeError: ``antithetic`` is not a bool.

    References:
        Y. Nesterov and V. Spokoiny, "Random gradient-free minimization of convex functions",
        Found. Comput. Math. 17(2):527–566, 2017 (Gaussian smoothing).

        J. C. Duchi, M. I. Jordan, M. J. Wainwright and A. Wibisono, "Optimal rates for zero-order
        convex optimization: the power of two function evaluations", IEEE Trans. Inf. Theory
        61(5):2788–2806, 2015 (sphere directions, the factor d).

        A. Chen et al., "DeepZero", ICLR 2024, arXiv:2310.02025 (RGE in this notation).
    """

    name = "rge"
    kind = "random"
    _dists = ("gaussian", "sphere", "rademacher")

    def __init__(self, q: int = 1, mu: float = 1e-3, dist: str = "gaussian", antithetic: bool = False):
        super().__init__(mu)
        self.q = _check_q(q)
        self.dist = _check_choice("dist", dist, self._dists)
        if not isinstance(antithetic, bool):
            raise TypeError(f"antithetic must be a bool, got {type(antithetic).__name__}")
        self.antithetic = antithetic

    def directions(self, params, *, mus=None, generator=None, masks=None) -> RandomDirections:
        """``q`` random directions over ``params``, regenerated from one seed drawn from ``generator``.

        Only the seed is drawn now (one draw from ``generator``); the directions themselves are
        generated on the parameters' devices and dtypes when used. Arguments as in
        :meth:`Estimator.directions`; with ``masks``, each direction is zero outside them.

        Returns:
            A :class:`~zeroth.estimators.directions.RandomDirections` set.

        Raises:
            ValueError: ``mus`` has not one entry per tensor, or an entry is not a finite number > 0.
        """
        return RandomDirections(
            params, draw_seed(generator), self.q, self._mus(params, mus), self.dist, self.antithetic, masks
        )

    def combine(self, dirs, base, losses):
        """``φ/q · (ℓ₊ − ℓ(θ))`` or ``φ/q · (ℓ₊ − ℓ₋)/2`` per direction (``φ = dirs.dim`` for sphere, else 1).

        ``dirs`` must expose ``dim``, ``dist`` and ``num_directions`` (a
        :class:`~zeroth.estimators.directions.RandomDirections` or a black box's
        :class:`~zeroth.blackbox.PointDirections`). Shapes and errors as in :meth:`Estimator.combine`.

        Raises:
            ValueError: ``losses`` has not ``len(dirs)`` rows, or ``base`` is None for a one-sided scheme.
        """
        scale = (dirs.dim if dirs.dist == "sphere" else 1.0) / dirs.num_directions
        return _differences(dirs, base, losses) * scale

    def num_evaluations(self, dim: int) -> int:
        """``2q`` (antithetic) or ``q + 1`` loss evaluations, whatever ``dim``."""
        return 2 * self.q if self.antithetic else self.q + 1


@ESTIMATORS.register("spsa")
class SPSA(RGE):
    """Simultaneous perturbation: antithetic RGE, Rademacher (or Gaussian = MeZO) directions.

    ``ĝ = (1/q) Σ_i (ℓ(θ + μ u_i) − ℓ(θ − μ u_i)) / (2μ) · u_i`` with ``u_i`` of ±1 entries
    (Spall's SPSA; ``1/u_k = u_k`` for ±1) — ``2q`` evaluations, no ℓ(θ). ``dist="gaussian"``
    gives MeZO's estimator. With ``ZOOptimizer(inplace=True)``
    Rademacher directions are applied as exact involutions
    (:mod:`zeroth.estimators.exact_perturbation`, μ rounded to a power of two).

    Args:
        mu: perturbation size μ > 0, an absolute step in the parameter's units (not relative
            to ``|θ|``). Default 1e-3 (MeZO's default).
        q: directions per step (integer ≥ 1). Default 1.
        dist: ``"rademacher"`` (default), ``"gaussian"`` (MeZO) or ``"sphere"``.

    Raises:
        ValueError: ``mu``, ``q`` or ``dist`` is invalid (as for :class:`RGE`).

    References:
        J. C. Spall, "Multivariate stochastic approximation using a simultaneous perturbation
        gradient approximation", IEEE Trans. Automatic Control 37(3):332–341, 1992.

        S. Malladi et al., "Fine-tuning language models with just forward passes", NeurIPS 2023,
        arXiv:2305.17333 (MeZO).
    """

    name = "spsa"

    def __init__(self, mu: float = 1e-3, q: int = 1, dist: str = "rademacher"):
        super().__init__(q=q, mu=mu, dist=dist, antithetic=True)
