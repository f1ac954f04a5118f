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

Functions here work on one contiguous 1-D chunk; :class:`ExactRademacher` drives them over
parameters a chunk at a time (temporaries: a few ``SUB`` entries of the wide dtype).

References:
    S. Malladi et al., "Fine-tuning language models with just forward passes", NeurIPS 2023,
    arXiv:2305.17333 (MeZO's in-place perturb/restore, which this makes exact).

    P. H. Sterbenz, "Floating-Point Computation", Prentice-Hall, 1974 (the exact-subtraction
    lemma used to test that a sum is exact).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import directions as _directions
from .directions import RandomDirections, _mix_seed

SUB = 1 << 17
"""Entries processed at once (temporaries: a few of this many entries of the parameter dtype)."""

_WIDE = {torch.bfloat16: torch.float32, torch.float16: torch.float32, torch.float32: torch.float64,
         torch.float64: torch.float64}
"""The dtype an update is computed in before its single rounding to the parameter dtype."""


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
    return a * 2.0 ** (2 - precision_bits(dtype))


class _Consts:
    """Per (dtype, a) constants of the involution."""

    def __init__(self, dtype: torch.dtype, a: float):
        if dtype not in _BITS_OF:
            raise TypeError(f"exact perturbation needs a floating dtype, got {dtype}")
        self.dtype, self.a = dtype, float(a)
        self.int = _BITS_OF[dtype]
        self.wide = _WIDE[dtype]
        self.inv_a = 1.0 / self.a
        self.q = lattice(self.a, dtype)


_BITS_OF = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}


def _unit_step(x: Tensor, bits: Tensor, c: _Consts) -> Tensor:
    """``u = r·σ(x)`` as 0/1 (int64, 1 = +1): ``r = 2·bits − 1``, ``σ(x) = (−1)^⌊x/a⌋``.

    Scaling by a power of two is exact; parities of ``|x/a| ≥ 2^62`` are meaningless but such
    values have no exact partner anyway.
    """
    odd = torch.floor(x * c.inv_a).to(torch.int64).bitwise_and_(1)
    return odd.bitwise_xor_(bits)


def partner(x: Tensor, k: Tensor, sign: float, c: _Consts) -> Tuple[Tensor, Tensor, Tensor]:
    """``(y, ok, step)``: ``step = sign·a·(2k − 1)``, ``y = fl(x + step)`` and whether that sum is exact.

    ``x``: 1-D chunk of a parameter; ``k``: :func:`_unit_step` of it. Exactness is checked in
    x's own dtype: the sum ``y = x + step`` (``|step| = a``) is exact iff ``fl(y − x) = step``
    and ``fl(y − step) = x`` — one of the two differences is itself exact (Sterbenz:
    ``|y| ≤ 2|x|`` or ``|y| ≤ 2a``), so a rounded ``y`` fails it. The second test compares
    bit patterns, so ``−0.0`` (whose partner would come back as ``+0.0``) is never moved.
    """
    step = k.to(c.dtype).mul_(2.0 * sign * c.a).sub_(sign * c.a)
    y = x + step
    ok = (y - x) == step
    return y, ok.logical_and_((y - step).view(c.int) == x.view(c.int)), step


def _select_(x: Tensor, y: Tensor, ok: Tensor, c: _Consts) -> None:
    """``x ← ok ? y : x`` on the bit patterns (exact, and much faster than ``torch.where`` on CPU)."""
    xi = x.view(c.int)
    xi.add_((y.view(c.int) - xi).mul_(ok))


def involution_(x: Tensor, bits: Tensor, sign: float, c: _Consts) -> Tensor:
    """``x ← S_{sign·r}(x)`` in place (an involution: applying it twice restores ``x`` bitwise). Returns ``ok``."""
    y, ok, _ = partner(x, _unit_step(x, bits, c), sign, c)
    _select_(x, y, ok, c)
    return ok


def applied_direction(x: Tensor, bits: Tensor, c: _Consts, antithetic: bool,
                      ok_minus: Optional[Tensor] = None) -> Tensor:
    """``D/a`` (in the wide dtype): the perturbation actually applied at ``x``, in units of ``a``.

    One-sided: ``S_r(x) − x``; antithetic: ``(S_r(x) − S_{−r}(x))/2``. ``ok_minus`` (whether
    ``S_{−r}`` moves ``x``) may be passed when already known.
    """
    k = _unit_step(x, bits, c)
    _, ok_plus, _ = partner(x, k, 1.0, c)
    u = k.to(c.wide).mul_(2.0).sub_(1.0)
    if not antithetic:
        return u.mul_(ok_plus)
    if ok_minus is None:
        _, ok_minus, _ = partner(x, k, -1.0, c)
    return u.mul_(ok_plus.to(c.wide).add_(ok_minus).mul_(0.5))


def update_(x: Tensor, step: Optional[Tensor], lr: float, wd: float, c: _Consts) -> None:
    """``x ← x(1 − lr·wd) + step`` rounded once to x's dtype, values below ``2a`` on the lattice Q.

    ``step`` (wide, or None for weight decay alone) is the already scaled update.
    """
    xw = x.to(c.wide, copy=True)
    if wd:
        xw.mul_(1.0 - lr * wd)
    if step is not None:
        xw.add_(step)
    x.copy_(xw)  # rounded once
    small = xw.abs() < 2.0 * c.a
    _select_(x, torch.round(xw.mul_(1.0 / c.q)).mul_(c.q).to(c.dtype), small, c)


_SHIFTS = {}


def _rademacher_words(seed: int, i: int, j: int, chunk: int, n: int, device) -> Tensor:
    """Chunk ``chunk`` of direction ``i`` in parameter ``j``: ``⌈n/64⌉`` random int64 words, one bit an entry."""
    g = torch.Generator(device=device)
    g.manual_seed(_mix_seed(seed, i, j, chunk))
    return torch.empty(-(-n // 64), dtype=torch.int64, device=device).random_(generator=g)


def _unpack(words: Tensor, start: int, stop: int) -> Tensor:
    """Bits ``start:stop`` of ``words`` (``start`` a multiple of 64) as int64 0/1."""
    shifts = _SHIFTS.get(words.device)
    if shifts is None:
        shifts = _SHIFTS[words.device] = torch.arange(64, dtype=torch.int64, device=words.device)
    w = words[start // 64:-(-stop // 64)]
    return (w.view(-1, 1) >> shifts).bitwise_and_(1).view(-1)[:stop - start]


class ExactRademacher(RandomDirections):
    """Rademacher directions perturbed by exact involutions (see the module docstring).

    Same interface as :class:`RandomDirections` (``dist="rademacher"``); ``mus`` are rounded
    to powers of two (:func:`power_of_two`) and ``perturb``/``restore`` are exact whatever
    ``exact`` says (no copy is ever made). ``direction(i, j)`` is the direction actually
    applied at the parameters' current values (``D/a``: ±1, ±½ or 0), so ``accumulate``
    and :meth:`update_` use what was evaluated. Every part of the interface follows the
    involution: :meth:`perturbed_stack` holds the values :meth:`perturb` sets (so
    :class:`~zeroth.engine.Batched` computes what :class:`~zeroth.engine.Sequential` does) and
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
        ValueError: an entry of ``mus`` is not a finite number > 0.
        TypeError: a parameter is not of a floating dtype (bf16, fp16, fp32, fp64).
    """

    def __init__(self, params: Sequence[Tensor], seed: int, q: int, mus: Sequence[float], antithetic: bool = True,
                 masks: Optional[Sequence[Optional[Tensor]]] = None):
        super().__init__(params, seed, q, [power_of_two(m) for m in mus], "rademacher", antithetic, masks)
        self.params = list(params)
        self._consts = [_Consts(p.dtype, m) for p, m in zip(self.params, self.mus)]

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

    def _visit(self, params: Sequence[Tensor], fn: Callable[[int, Tensor, int, List[Tensor]], None],
               directions: Sequence[int]) -> None:
        """Call ``fn(j, x, start, signs)`` on sub-chunks ``x`` (views, or gathered copies written back)
        of every parameter, ``signs[k]`` the int8 0/1 signs of ``directions[k]`` there."""
        for j, p in enumerate(params):
            if p.numel() == 0:
                continue
            work = p.data if p.is_contiguous() else p.data.contiguous()
            flat, mask = work.view(-1), self.masks[j]
            chunk, sub = _directions.CHUNK, min(SUB, _directions.CHUNK)
            for ch in self._chunks(j):
                lo = ch * chunk
                n = max(0, min(chunk, self._size(j) - lo))
                if n == 0:
                    continue
                signs = [self._signs(i, j, ch, n) for i in directions]
                for s in range(0, n, sub):
                    e = min(n, s + sub)
                    sub_signs = [_unpack(t, s, e) for t in signs]
                    if mask is None:
                        fn(j, flat[lo + s:lo + e], lo + s, sub_signs)
                    else:
                        idx = mask[lo + s:lo + e].to(flat.device)
                        x = flat[idx]
                        fn(j, x, lo + s, sub_signs)
                        flat[idx] = x
            if work is not p.data:
                p.data.copy_(work)

    # -- the Directions interface ----------------------------------------------------------
    def _apply(self, params: Sequence[Tensor], moves: Sequence[Tuple[int, float]]) -> None:
        """Apply the involutions ``S_{s·r_i}`` for ``(i, s)`` in ``moves``, in order, in one pass."""
        order = list(dict.fromkeys(i for i, _ in moves))

        def fn(j, x, start, signs):
            c = self._consts[j]
            for i, s in moves:
                involution_(x, signs[order.index(i)], s, c)

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

    def _direction_sum(self, j: int, x: Tensor, signs: Sequence[Tensor], weights: Sequence[float],
                       ok_minus: Optional[Sequence[Optional[Tensor]]] = None) -> Tensor:
        """``Σ_i w_i · D_i(x)/a`` (wide) at the current values ``x``."""
        c = self._consts[j]
        total = None
        known = ok_minus or [None] * len(signs)
        for sg, w, okm in zip(signs, weights, known):
            d = applied_direction(x, sg, c, self.num_signs == 2, okm).mul_(w)
            total = d if total is None else total.add_(d)
        return total

    def _own_params(self, what: str) -> List[Tensor]:
        """The parameters whose current values ``direction``/``accumulate`` read."""
        if self.params is None:
            raise RuntimeError(f"ExactRademacher.{what}: this set was sent to another process without its parameters "
                               "(a subset carries only what perturbing needs); call it on the set that owns them")
        return self.params

    def direction(self, i: int, j: int) -> Tensor:
        """Direction ``i`` as applied at parameter ``j``'s current values (``D/a``), materialised.

        Raises:
            RuntimeError: the set was unpickled without its parameters (a subset sent to a worker).
        """
        own = self._own_params("direction")
        out = torch.zeros(math.prod(self.shapes[j]), dtype=self.dtypes[j], device=own[j].device)
        flat_out = out

        def fn(jj, x, start, signs):
            if jj != j:
                return
            d = self._direction_sum(j, x, signs, [1.0]).to(self.dtypes[j])
            mask = self.masks[j]
            if mask is None:
                flat_out[start:start + x.numel()] = d
            else:
                flat_out[mask[start:start + x.numel()].to(out.device)] = d

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

            def fn(jj, x, start, signs, tflat=tflat, mask=mask, scale=scale, j=j):
                total = self._direction_sum(j, x, signs, [cs[i] for i in live]).mul_(scale).to(tflat.dtype)
                if mask is None:
                    tflat[start:start + x.numel()].add_(total)
                else:
                    tflat.index_add_(0, mask[start:start + x.numel()].to(tflat.device), total)

            only_j = [p if k == j else p.new_empty(0) for k, p in enumerate(own)]
            with torch.no_grad():
                self._visit(only_j, fn, live)
            if target is not g:
                g.add_(target)

    def update_(self, params: Sequence[Tensor], coeffs: Tensor, lrs: Sequence[float], weight_decays: Sequence[float],
                ascend: Sequence[bool], restore: Optional[int] = None) -> None:
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

        def fn(j, x, start, signs):
            c = self._consts[j]
            known = {}
            for i, s in undo:  # undoing S_{-r_i} tells whether S_{-r_i} moves the restored value
                ok = involution_(x, signs[order.index(i)], s, c)
                if s < 0 and self.num_signs == 2:
                    known[i] = ok
            lr, wd = float(lrs[j]), float(weight_decays[j])
            if lr == 0.0:
                return
            step = None
            if live:
                step = self._direction_sum(j, x, [signs[order.index(i)] for i in live], [cs[i] for i in live],
                                           [known.get(i) for i in live])
                step.mul_((lr if ascend[j] else -lr) / self.mus[j])
            update_(x, step, lr, wd, c)

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
                for s in range(0, work.numel(), SUB):
                    update_(work[s:s + SUB], None, lr, wd, self._consts[j])
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
        self.devices = [torch.device(d.type) for d in parent.devices]    # where signs are drawn

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
