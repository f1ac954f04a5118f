r"""Exactly invertible random perturbations: MeZO's in-place step without drift, in every dtype.

MeZO perturbs in place, ``θ ← θ + μz``, and undoes it by subtraction. In floating point
``(θ + μz) − μz ≠ θ`` in general, so parameters drift (bf16: about 1e-3 relative after a
few hundred steps at lr = 0, MeZO issue #42). No elementwise map ``θ ↦ θ + μz`` can be
undone exactly without storing something: near zero and at the edges of each binade there
are more floats on one side than on the other.

What *can* be undone exactly is an **involution that pairs floats**. With ``a = 2^k`` (the
power of two nearest μ) and ``σ(x) = (−1)^⌊x/a⌋``,

* ``S₊(x) = x + σ(x)·a``  (pairs ``[2ma, 2ma + a)`` with ``[2ma + a, 2ma + 2a)``),
* ``S₋(x) = x − σ(x)·a``  (the pairing shifted by ``a``),

each applied only where the partner is exactly representable (elsewhere ``x`` is left
unchanged). Representability is symmetric in a pair and ``σ`` flips across it, so
``S±(S±(x)) = x`` **bitwise** for every float — the restore is the same operation again.

A Rademacher direction ``r ∈ {±1}^d`` (drawn from a seed, never stored) selects per
coordinate which involution realises ``+``: evaluation point ``θ⁺ = S_{r}(θ)`` and
``θ⁻ = S_{−r}(θ)`` (``S_{+1} = S₊``, ``S_{−1} = S₋``). Where both partners exist the
displacements are ``±u·a`` with ``u = r·σ(θ)`` — uniform ±1, independent of θ because r
is; so the estimator is SPSA with step ``a``. The update uses the perturbation *actually
applied*: ``D = (θ⁺ − θ⁻)/2`` (``±a``, ``±a/2`` where one partner is missing, 0 where both
are), recomputed from the restored θ (nothing stored).

Where an exact ±a move does not exist:

* ``|θ| < 2a`` with bits finer than ``Q = ulp(2a)`` (the lattice every ``|x| ≥ 2a`` is
  on): left unperturbed. With ``lr > 0`` the update rounds values below ``2a`` to the
  lattice Q (fp32: Q ≈ 2.3e-10 for a ≈ 1e-3; bf16: 1.5e-5; fp16: 1.9e-6), so from the next
  step on they are perturbed like every other coordinate. (At ``lr = 0`` nothing is
  rounded: parameters stay bitwise.)
* ``ulp(θ) > a`` (bf16 weights above ``2^8·a``, fp16 above ``2^11·a``): ``θ ± a`` is not
  a float, the coordinate is not perturbed and not updated (plain MeZO perturbs it by 0
  too, then updates it with noise).
* half of the values in the last ``a/2`` below a binade edge have only one partner:
  perturbed one-sided, updated with ``D = ±a/2``.

Each pass over the parameters is one compiled kernel per chunk of ``2²⁰`` entries that reads
and writes every entry once: :func:`zeroth.ops.rademacher_involution_` (perturb, move from one
evaluation point to the next, restore) and :func:`zeroth.ops.rademacher_sgd_` (restore and the
SGD update from the applied displacement, in one pass), C++ on CPU and CUDA on GPU. The random
signs are the packed bits of a generator seeded per (step seed, direction, parameter, chunk),
never stored (temporaries: ``2²⁰/64`` int64 words per direction). Without a compiler the
PyTorch references of those ops run (:mod:`zeroth.ops.reference`): the same bits, slower.
The step ``a`` must lie in the range the parameter's dtype takes (:func:`check_step`; fp32:
``2⁻¹²⁷ ≤ a ≤ 2¹²⁶``, fp16: ``2⁻²⁴ ≤ a ≤ 2¹⁴``).

Only Rademacher signs are made exact: ``ZOOptimizer(inplace=True)`` refuses Gaussian and sphere
directions. An exact involution has to pair representable values, so a Gaussian magnitude
would be quantised to each coordinate's own ulp grid (bf16 near 0.02: steps in multiples of
``a/8``, none for ``|z| < 1/16``) and values near 0 would need a separate signed lattice — a
different distribution, not MeZO's Gaussian; and ±1 signs are the asymptotically optimal
SPSA perturbation (Sadegh and Spall, 1998).

References:
    S. Malladi et al., "Fine-tuning language models with just forward passes", NeurIPS 2023,
    arXiv:2305.17333 (MeZO's in-place perturb/restore, which this makes exact).

    P. H. Sterbenz, "Floating-Point Computation", Prentice-Hall, 1974 (the exact-subtraction
    lemma used to test that a sum is exact).

    P. Sadegh and J. C. Spall, "Optimal random perturbations for stochastic approximation using
    a simultaneous perturbation gradient approximation", IEEE Trans. Automatic Control 43(10),
    1998 (symmetric Bernoulli ±1 perturbations are asymptotically optimal for SPSA).
"""

from __future__ import annotations

import math
import threading
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import ops as _ops
from ..ops import reference as _ref
from ..ops._checks import EXACT_STEP_EXPONENTS
from . import directions as _directions
from .directions import RandomDirections, _mix_seed

SUB = _ref.EXACT_PIECE
"""Entries processed at once where a direction is materialised (``direction``/``accumulate``):
temporaries of a few of this many entries of the wide dtype."""


def power_of_two(mu: float) -> float:
    """The power of two nearest ``mu`` in log scale (the exact perturbation size ``a``).

    Args:
        mu: the requested step (absolute, in the parameter's units).

    Returns:
        ``2.0 ** round(log2(mu))`` (e.g. 1e-3 → 2⁻¹⁰ ≈ 9.77e-4).

    Raises:
        ValueError: ``mu`` is not a finite number > 0.
    """
    if not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu > 0):
        raise ValueError(f"Invalid mu value: {mu!r} (mu must be a finite number > 0)")
    return 2.0 ** round(math.log2(mu))


def precision_bits(dtype: torch.dtype) -> int:
    """Significand bits (implicit bit included) of a floating dtype."""
    return {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24, torch.float64: 53}[dtype]


def lattice(a: float, dtype: torch.dtype) -> float:
    """``Q = ulp(2a)`` in ``dtype``: every value with ``|x| ≥ 2a`` is a multiple of it."""
    return _ref.lattice(a, dtype)


def check_step(mu: float, a: float, dtype: torch.dtype, where: str = "") -> None:
    """Check that the exact step ``a`` (rounded from ``mu``) is in the range the involutions take for ``dtype``.

    Raises:
        TypeError: ``dtype`` is not float16, bfloat16, float32 or float64.
        ValueError: ``a`` outside ``[2^lo, 2^hi]`` (:data:`zeroth.ops._checks.EXACT_STEP_EXPONENTS`).
    """
    if dtype not in EXACT_STEP_EXPONENTS:
        raise TypeError(
            f"exact perturbation needs a float16, bfloat16, float32 or float64 parameter, got {dtype}{where}"
        )
    lo, hi = EXACT_STEP_EXPONENTS[dtype]
    if not 2.0**lo <= a <= 2.0**hi:
        raise ValueError(
            f"mu: exact in-place perturbation of a {dtype} parameter needs mu between 2^{lo} and 2^{hi} "
            f"(got {mu!r}{where}, rounded to {a!r})"
        )


_GENERATORS = threading.local()


def _generator(device) -> torch.Generator:
    """This thread's generator for ``device``, reused: ``manual_seed`` resets its whole state, so a
    reseeded generator draws what a fresh one would (and saves creating one per chunk)."""
    cache = getattr(_GENERATORS, "by_device", None)
    if cache is None:
        cache = _GENERATORS.by_device = {}
    key = torch.device(device)
    g = cache.get(key)
    if g is None:
        g = cache[key] = torch.Generator(device=key)
    return g


def _rademacher_words(seed: int, i: int, j: int, chunk: int, n: int, device) -> Tensor:
    """Chunk ``chunk`` of direction ``i`` in parameter ``j``: ``⌈n/64⌉`` random int64 words, one bit an entry."""
    g = _generator(device)
    g.manual_seed(_mix_seed(seed, i, j, chunk))
    return torch.empty(-(-n // 64), dtype=torch.int64, device=device).random_(generator=g)


def _unpack(words: Tensor, start: int, stop: int) -> Tensor:
    """Bits ``start:stop`` of ``words`` (``start`` a multiple of 64) as int64 0/1."""
    return _ref.rademacher_bits(words, start, stop)


def _stack(rows: Sequence[Tensor], like: Tensor) -> Tensor:
    """Rows of words as one contiguous ``(len(rows), W)`` tensor (``(0, 0)`` for none; one row: a view)."""
    if len(rows) == 1:
        return rows[0].unsqueeze(0)
    return torch.stack(list(rows)) if rows else torch.empty(0, 0, dtype=torch.int64, device=like.device)


class ExactRademacher(RandomDirections):
    """Rademacher directions perturbed by exact involutions (see the module docstring).

    Same interface as :class:`RandomDirections` (``dist="rademacher"``); ``mus`` are rounded
    to powers of two (:func:`power_of_two`) and ``perturb``/``restore`` are exact whatever
    ``exact`` says (no copy is ever made). ``direction(i, j)`` is the direction actually
    applied at the parameters' current values (``D/a``: ±1, ±½ or 0), so ``accumulate``
    and :meth:`update_` use what was evaluated. Every part of the interface follows the
    involution: :meth:`perturbed_stack` holds the values :meth:`perturb` sets (so
    :class:`~zeroth.engine.BatchedEvaluator` computes what :class:`~zeroth.engine.SequentialEvaluator` does) and
    :meth:`subset`/:meth:`to_devices` give an :class:`ExactSubset` that perturbs exactly as
    this set does (so a Ray split gives the local losses). The random signs are drawn as packed int64
    words (one bit an entry), not as :class:`RandomDirections` draws them, so the same seed
    gives other directions than a plain Rademacher set.

    Args:
        params: the parameter tensors, which the set keeps: ``direction`` and ``accumulate``
            read their current values.
        seed: the step's seed.
        q: number of directions.
        mus: per parameter, the requested step (rounded to ``a_j = 2^k``, absolute units).
        antithetic: two-sided evaluations (default True: SPSA).
        masks: per parameter, None or a 1-D int64 tensor of flat indices.

    Raises:
        ValueError: an entry of ``mus`` is not a finite number > 0, or outside the range the
            parameter's dtype takes (:func:`check_step`: e.g. fp16 2⁻²⁴ ≤ a ≤ 2¹⁴).
        TypeError: a parameter is not of a floating dtype (bf16, fp16, fp32, fp64).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        seed: int,
        q: int,
        mus: Sequence[float],
        antithetic: bool = True,
        masks: Optional[Sequence[Optional[Tensor]]] = None,
    ):
        steps = [power_of_two(m) for m in mus]
        for j, (p, m, a) in enumerate(zip(params, mus, steps)):
            check_step(m, a, p.dtype, f" for parameter {j}")
        super().__init__(params, seed, q, steps, "rademacher", antithetic, masks)
        self.params = list(params)

    @classmethod
    def from_directions(cls, dirs: RandomDirections, params: Sequence[Tensor]) -> ExactRademacher:
        """The exact version of Rademacher ``dirs`` (same seed, count, masks; μ rounded to 2^k).

        Raises:
            ValueError: ``dirs`` are not Rademacher directions.
        """
        if dirs.dist != "rademacher":
            raise ValueError(f"exact perturbation needs Rademacher directions, got dist={dirs.dist!r}")
        return cls(params, dirs.seed, dirs.q, dirs.mus, dirs.num_signs == 2, dirs.masks)

    # -- chunk iteration -------------------------------------------------------------------
    def _signs(self, i: int, j: int, chunk: int, n: int) -> Tensor:
        return _rademacher_words(self.seed, i, j, chunk, n, self.devices[j])

    def _visit(
        self, params: Sequence[Tensor], fn: Callable[[int, Tensor, int, List[Tensor]], None], directions: Sequence[int]
    ) -> None:
        """Call ``fn(j, x, start, words)`` on chunks ``x`` (flat contiguous views, or gathered copies
        written back) of every parameter, ``words[k]`` the packed random bits of ``directions[k]``
        there (entry ``start + t`` of the parameter's selected entries is bit ``t``)."""
        chunk = _directions.CHUNK
        for j, p in enumerate(params):
            n = p.numel()
            if n == 0:
                continue
            data = p.detach()
            if self.masks[j] is None and n <= chunk and data.is_contiguous():  # one chunk, a view: the common case
                fn(j, data.view(-1), 0, [self._signs(i, j, 0, n) for i in directions])
                continue
            work = data if data.is_contiguous() else data.contiguous()
            flat, mask = work.view(-1), self.masks[j]
            for ch in self._chunks(j):
                lo = ch * chunk
                n = max(0, min(chunk, self._size(j) - lo))
                if n == 0:
                    continue
                words = [self._signs(i, j, ch, n) for i in directions]
                if mask is None:
                    fn(j, flat[lo : lo + n], lo, words)
                else:
                    idx = mask[lo : lo + n].to(flat.device)
                    x = flat[idx]
                    fn(j, x, lo, words)
                    flat[idx] = x
            if work is not data:
                data.copy_(work)

    # -- the Directions interface ----------------------------------------------------------
    def _apply(self, params: Sequence[Tensor], moves: Sequence[Tuple[int, float]]) -> None:
        """Apply the involutions ``S_{s·r_i}`` for ``(i, s)`` in ``moves``, in order, in one pass
        (:func:`zeroth.ops.rademacher_involution_`: each entry read and written once)."""
        order = list(dict.fromkeys(i for i, _ in moves))
        signs = [s for _, s in moves]

        def fn(j, x, start, words):
            _ops.rademacher_involution_(x, _stack([words[order.index(i)] for i, _ in moves], x), signs, self.mus[j])

        with torch.no_grad():
            self._visit(params, fn, order)

    def perturb(self, params: Sequence[Tensor], e: int, exact: bool = True):
        """Apply evaluation ``e``'s involution ``S_{±r_i}`` to ``params`` in place (``exact`` is ignored).

        Returns:
            None: the restore needs no token (it is the same involution again).
        """
        self._apply(params, [(e % self.q, self.sign(e))])
        return None

    def restore(self, params: Sequence[Tensor], e: int, token) -> None:
        """Undo ``perturb(params, e)`` bitwise by applying the same involution again (``token`` unused)."""
        self._apply(params, [(e % self.q, self.sign(e))])

    def move(self, params: Sequence[Tensor], e_from: int, e_to: int) -> None:
        """Restore evaluation ``e_from`` and perturb to ``e_to`` in one pass over the parameters."""
        self._apply(params, [(e_from % self.q, self.sign(e_from)), (e_to % self.q, self.sign(e_to))])

    def _direction_sum(
        self, j: int, x: Tensor, start: int, words: Sequence[Tensor], weights: Sequence[float]
    ) -> Tensor:
        """``Σ_i w_i · D_i(x)/a`` (wide) at the current values ``x`` (entries ``start ...``)."""
        return _ref.rademacher_direction_sum(x, words, start, weights, self.mus[j], self.num_signs == 2)

    def _own_params(self, what: str) -> List[Tensor]:
        """The parameters whose current values ``direction``/``accumulate`` read."""
        if self.params is None:
            raise RuntimeError(
                f"ExactRademacher.{what}: this set was sent to another process without its parameters "
                "(a subset carries only what perturbing needs); call it on the set that owns them"
            )
        return self.params

    def direction(self, i: int, j: int) -> Tensor:
        """Direction ``i`` as applied at parameter ``j``'s current values (``D/a``), materialised.

        Raises:
            RuntimeError: the set was unpickled without its parameters (a subset sent to a worker).
        """
        own = self._own_params("direction")
        out = torch.zeros(math.prod(self.shapes[j]), dtype=self.dtypes[j], device=own[j].device)
        flat_out = out

        def fn(jj, x, start, words):
            if jj != j:
                return
            mask = self.masks[j]
            for s in range(0, x.numel(), SUB):  # temporaries of SUB entries
                piece = x[s : s + SUB]
                d = self._direction_sum(j, piece, 0, [w[s // 64 :] for w in words], [1.0]).to(self.dtypes[j])
                if mask is None:
                    flat_out[start + s : start + s + piece.numel()] = d
                else:
                    flat_out[mask[start + s : start + s + piece.numel()].to(out.device)] = d

        params = [p if k == j else p.new_empty(0) for k, p in enumerate(own)]
        with torch.no_grad():
            self._visit(params, fn, [i])
        return out.view(self.shapes[j])

    def add_to(self, tensors: Sequence[Tensor], i: int, alphas: Sequence[float]) -> None:
        """``tensors[j] += alphas[j] · D_ij/a_j`` for every ``j``: direction ``i`` as applied at the
        parameters' current values (:meth:`direction`), not a plain Rademacher draw."""
        for j, t in enumerate(tensors):
            if alphas[j] != 0.0:
                t.add_(self.direction(i, j).to(t.dtype), alpha=alphas[j])

    def perturbed_stack(self, params: Sequence[Tensor], lo: int, hi: int) -> List[Tensor]:
        """For evaluations ``lo..hi-1``: per parameter a ``(hi-lo, *shape)`` stack of the values
        ``perturb(params, e)`` sets (bitwise: each row is ``params`` with evaluation ``e``'s involution applied)."""
        stacks = [p.detach().unsqueeze(0).repeat((hi - lo,) + (1,) * p.dim()) for p in params]
        for e in range(lo, hi):
            self._apply([st[e - lo] for st in stacks], [(e % self.q, self.sign(e))])
        return stacks

    def subset(self, ids: Tensor) -> ExactSubset:
        """The directions ``ids`` (ascending) as a set of their own that perturbs exactly as this one
        (same signs, same involutions; see :class:`ExactSubset`)."""
        return ExactSubset(self, ids)

    def to_devices(self, devices: Sequence[torch.device]) -> ExactSubset:
        """All directions, their signs drawn where this set draws them, used on parameters on ``devices``."""
        return ExactSubset(self, torch.arange(self.num_directions)).place(devices)

    def norm(self, i: int) -> float:
        """Not defined: Rademacher directions are never normalised.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("ExactRademacher directions are Rademacher, not sphere: no normalisation")

    def accumulate(self, coeffs: Tensor, grads: Sequence[Tensor], scales: Optional[Sequence[float]] = None) -> None:
        """``grads[j] += scales[j] · Σ_i c_i D_ij / a_j²`` with ``D`` as applied at the parameters' values.

        ``D_ij/a_j`` is recomputed from the parameters' *current* values, so call it with the
        parameters restored (as after an evaluation).

        Args:
            coeffs: ``(q,)`` coefficients from the estimator's ``combine``.
            grads: one tensor per parameter, shaped like it, updated in place.
            scales: one factor per parameter; None: 1.

        Raises:
            ValueError: a gradient tensor is the parameter itself (use :meth:`update_`).
        """
        scales = [1.0] * len(grads) if scales is None else list(scales)
        cs = coeffs.tolist()
        live = [i for i, ci in enumerate(cs) if ci != 0.0]
        if not live:
            return
        own = self._own_params("accumulate")
        if any(g is p for g, p in zip(grads, own)):
            raise ValueError("accumulate: grads must not be the parameters themselves; use update_")
        for j, g in enumerate(grads):
            if scales[j] == 0.0:
                continue
            target = g if g.is_contiguous() else torch.zeros(g.shape, dtype=g.dtype, device=g.device)
            tflat, mask, scale = target.view(-1), self.masks[j], scales[j] / self.mus[j]

            def fn(jj, x, start, words, tflat=tflat, mask=mask, scale=scale, j=j):
                for s in range(0, x.numel(), SUB):  # temporaries of SUB entries
                    piece = x[s : s + SUB]
                    total = self._direction_sum(j, piece, 0, [w[s // 64 :] for w in words], [cs[i] for i in live])
                    total = total.mul_(scale).to(tflat.dtype)
                    a, b = start + s, start + s + piece.numel()
                    if mask is None:
                        tflat[a:b].add_(total)
                    else:
                        tflat.index_add_(0, mask[a:b].to(tflat.device), total)

            only_j = [p if k == j else p.new_empty(0) for k, p in enumerate(own)]
            with torch.no_grad():
                self._visit(only_j, fn, live)
            if target is not g:
                g.add_(target)

    def update_(
        self,
        params: Sequence[Tensor],
        coeffs: Tensor,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        ascend: Sequence[bool],
        restore: Optional[int] = None,
    ) -> None:
        """MeZO's SGD step in place: ``θ ← θ(1 − lr·wd) ∓ lr · Σ_i c_i D_i / a²`` (one pass, nothing stored).

        ``restore=e`` first undoes evaluation ``e``'s perturbation in the same pass (the
        parameters are at that evaluation point on entry). Parameters with ``lr = 0`` are
        only restored (weight decay is not applied either): bitwise what they were.

        Args:
            params: the parameters (this set's), updated in place.
            coeffs: ``(q,)`` coefficients from the estimator's ``combine``.
            lrs, weight_decays, ascend: per parameter: learning rate, coupled weight decay, and
                whether to ascend.
            restore: the evaluation the parameters are at on entry (None: they are at θ).
        """
        cs = coeffs.tolist()
        live = [i for i, ci in enumerate(cs) if ci != 0.0]
        undo = [] if restore is None else [(restore % self.q, self.sign(restore))]
        order = list(dict.fromkeys([i for i, _ in undo] + live))
        undo_signs = [s for _, s in undo]
        antithetic = self.num_signs == 2

        def fn(j, x, start, words):
            undo_words = _stack([words[order.index(i)] for i, _ in undo], x)
            lr, wd = float(lrs[j]), float(weight_decays[j])
            if lr == 0.0:  # restore only: bitwise what the parameters were
                _ops.rademacher_involution_(x, undo_words, undo_signs, self.mus[j])
                return
            scale = (lr if ascend[j] else -lr) / self.mus[j]
            _ops.rademacher_sgd_(
                x,
                undo_words,
                undo_signs,
                _stack([words[order.index(i)] for i in live], x),
                [cs[i] for i in live],
                self.mus[j],
                scale,
                1.0 - lr * wd if wd else 1.0,
                antithetic,
            )

        with torch.no_grad():
            self._visit(params, fn, order)
            for j, p in enumerate(params):  # a sparse step: weight decay on the unselected entries too
                lr, wd, mask = float(lrs[j]), float(weight_decays[j]), self.masks[j]
                if mask is None or lr == 0.0 or not wd or p.numel() == 0:
                    continue
                flat = p.data.view(-1) if p.is_contiguous() else None
                work = p.data.reshape(-1).clone() if flat is None else flat
                idx = mask.to(work.device)
                kept = work[idx]
                none = _stack([], work)
                for s in range(0, work.numel(), _directions.CHUNK):
                    _ops.rademacher_sgd_(
                        work[s : s + _directions.CHUNK], none, [], none, [], self.mus[j], 0.0, 1.0 - lr * wd, antithetic
                    )
                work[idx] = kept
                if flat is None:
                    p.data.copy_(work.view(p.shape))


class ExactSubset(ExactRademacher):
    """Directions ``ids`` of an :class:`ExactRademacher` set, perturbing exactly as the parent does.

    Evaluation ``s·m + k`` of the subset (``m = len(ids)``) is the parent's evaluation
    ``s·n + ids[k]``: the same random signs (drawn from the same seeds, on the device type the
    parent draws them on — a CUDA generator gives other signs than a CPU one) and the same
    involutions, so ``perturb``, ``restore``, ``move`` and ``perturbed_stack`` set bitwise the
    values the parent sets, and ``direction``/``accumulate`` equal the parent's for those
    directions. Signs are handed out on the devices of the parameters they perturb
    (:meth:`place`) — what a distributed worker needs.

    A subset keeps a reference to the parent's parameters (``direction`` and ``accumulate``
    read their values) but does not pickle them: a subset sent to another process perturbs
    whatever parameters it is given, and its ``direction``/``accumulate`` raise there.

    Args:
        parent: the :class:`ExactRademacher` set (or a subset of one).
        ids: ascending direction numbers of ``parent``, int64.
    """

    def __init__(self, parent: ExactRademacher, ids: Tensor):
        self.__dict__.update({k: v for k, v in parent.__dict__.items() if k != "_norms"})
        base = getattr(parent, "ids", None)
        self.ids = [base[int(i)] if base is not None else int(i) for i in ids.tolist()]
        self.q = len(self.ids)
        self._norms = None
        self.masks = [m.detach().cpu() if m is not None else None for m in parent.masks]
        self.targets = list(getattr(parent, "targets", parent.devices))  # where signs are used
        self.devices = [torch.device(d.type) for d in parent.devices]  # where signs are drawn

    def place(self, devices: Sequence[torch.device]) -> ExactSubset:
        """Draw signs on the parent's device type, hand them out on ``devices`` (one per parameter)."""
        self.targets = list(devices)
        return self

    def to_devices(self, devices: Sequence[torch.device]) -> ExactSubset:
        """This set, its signs handed out on ``devices`` (:meth:`place`; drawn where they were)."""
        return self.place(devices)

    def subset(self, ids: Tensor) -> ExactSubset:
        """Directions ``ids`` of this subset (numbers relative to it), as a subset of the original set."""
        return ExactSubset(self, ids)

    def _signs(self, i: int, j: int, chunk: int, n: int) -> Tensor:
        return _rademacher_words(self.seed, self.ids[i], j, chunk, n, self.devices[j]).to(self.targets[j])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["params"] = None  # perturbing needs no parameter values; shipping them would copy the model
        return state
