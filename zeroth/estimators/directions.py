"""Directions: *what* to perturb, in the flat space of a list of parameter tensors.

A direction set describes ``n`` evaluation points ``θ + s·μ_j·d_e`` (one per evaluation
``e``) without materialising the directions when it need not:

* :class:`Coordinates` — unit vectors ``e_k`` of selected coordinates (CGE);
* :class:`RandomDirections` — Gaussian / sphere / Rademacher vectors regenerated from a
  seed on demand (RGE, SPSA: the MeZO "seed trick", so a step never stores them).

Evaluation layout (shared by every evaluator): for two-sided schemes the first half of the
evaluations are the ``+`` points and the second half the ``−`` points, in the same order.

``perturb``/``restore`` change parameters in place (used by the sequential evaluator);
``accumulate`` turns per-direction coefficients ``c`` into ``grad_j += Σ_i c_i d_ij / μ_j``.

μ is an absolute step in the units of the parameter it perturbs (not relative to ``|θ|``). The
structural contract every direction set meets is :class:`zeroth.protocols.Directions`.
"""

from __future__ import annotations

import bisect
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


CHUNK = 1 << 20
"""Entries of a random direction drawn at once: perturbing, restoring and accumulating never
hold more of a direction than this (4 MiB in float32), whatever the size of a parameter."""


def _mix_seed(seed: int, i: int, j: int, chunk: int = 0) -> int:
    """A well-spread 63-bit seed for chunk ``chunk`` of direction ``i`` of parameter ``j`` (splitmix64 rounds)."""
    z = (seed + 0x9E3779B97F4A7C15 * (i + 1) + 0xBF58476D1CE4E5B9 * (j + 1) + 0x94D049BB133111EB * chunk) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def _element(t: Tensor, k: int):
    """Index of the ``k``-th element of ``t`` in row-major (logical) order, whatever its strides."""
    if t.dim() <= 1:
        return (k,) if t.dim() else ()
    at = []
    for size in reversed(t.shape):
        k, r = divmod(k, size)
        at.append(r)
    return tuple(reversed(at))


class Directions:
    """Base class: ``len()`` evaluations, ``needs_base`` says whether f(θ) is needed too.

    ``kind`` names the family (``"coordinates"``, ``"random"``) for evaluators whose support
    depends on it (difference propagation needs coordinates).

    Attributes:
        kind: the family name (``"directions"`` in the base class).
        num_signs: 1 (one-sided: evaluations ``θ + μd``) or 2 (two-sided: ``+`` block, then ``−`` block).
        mus: the nominal step μ_j of each parameter tensor (absolute, in its units).
    """

    kind: str = "directions"
    num_signs: int = 1
    mus: List[float]

    @property
    def needs_base(self) -> bool:
        """Whether the loss at the unperturbed θ is needed too (one-sided schemes)."""
        return self.num_signs == 1

    @property
    def num_directions(self) -> int:
        """Number of distinct directions ``n``; ``len(self) == n · num_signs`` evaluations.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_directions * self.num_signs

    def sign(self, e: int) -> float:
        """+1 for the first block of evaluations, −1 for the second (two-sided schemes)."""
        return 1.0 if e < self.num_directions else -1.0


def _applied_steps(x: Tensor, mu: float, sign: float) -> Tuple[Tensor, Tensor]:
    """``(values, steps)``: the perturbed values ``fl(x ± μ)`` in ``x``'s dtype and the steps actually
    taken, ``|fl(x ± μ) − x|`` in float64.

    Rounding makes the step taken differ from μ (fp32 at 1.0 with μ = 1e-3: 0.99992e-3; fp16 at 8.0
    with μ = 1e-2: 0.78e-2; bf16 at 8.0: 0, the value does not move). A coordinate whose value would
    not move takes one step to the next representable value instead, so no difference is ever 0/0.
    """
    values = x + sign * mu
    stuck = values == x
    if bool(stuck.any()):
        values = torch.where(stuck, torch.nextafter(x, torch.full_like(x, sign * math.inf)), values)
    return values, (values.double() - x.double()).abs()


class Coordinates(Directions):
    """Coordinate directions for CGE: ``indices[j]`` are flat (row-major) indices into parameter ``j``.

    ``scheme="forward"`` gives one evaluation per coordinate (plus f(θ)), ``"central"`` two
    (``+`` block then ``−`` block). The perturbed values are fixed when the set is made from the
    parameters: coordinate ``k`` moves to ``fl(θ_k ± μ_j)`` (:func:`_applied_steps`), every evaluator
    sets exactly these values (or, for difference propagation, uses the steps actually taken), and
    :meth:`accumulate` divides by the step actually taken — ``h₊`` (forward) or ``(h₊ + h₋)/2``
    (central) — not by the nominal μ, which matters in low precision.

    Args:
        indices: per parameter, an integer tensor of flat (row-major) indices, any shape
            (flattened, cast to int64), on the parameter's device or the CPU.
        mus: per parameter, the nominal perturbation size μ_j (an absolute step in the
            parameter's units).
        scheme: ``"forward"`` or ``"central"``.
        params: the parameters (their current values fix the perturbed values); required.

    Attributes:
        values: ``values[s][j]``: the perturbed values of parameter ``j``'s selected
            coordinates for sign block ``s`` (0: ``+``, 1: ``−``), the parameter's dtype.
        steps: ``steps[s][j]``: the steps actually taken ``|fl(θ ± μ_j) − θ|``, float64.
        offsets: ``offsets[j]``: the first direction number of parameter ``j`` (``offsets[-1] = n``).

    Raises:
        TypeError: ``params`` is None.
        ValueError: ``indices``, ``mus`` and ``params`` differ in length.
    """

    kind = "coordinates"

    def __init__(
        self,
        indices: Sequence[Tensor],
        mus: Sequence[float],
        scheme: str = "forward",
        params: Optional[Sequence[Tensor]] = None,
    ):
        if len(indices) != len(mus):
            raise ValueError("indices and mus must have one entry per parameter")
        if params is None:
            raise TypeError(
                "params: Coordinates are made from the parameters they perturb (their values fix the steps)"
            )
        if len(params) != len(indices):
            raise ValueError("indices and params must have one entry per parameter")
        self.indices = [idx.reshape(-1).to(torch.long) for idx in indices]
        self.mus = [float(m) for m in mus]
        self.scheme = scheme
        self.num_signs = 2 if scheme == "central" else 1
        self.values: List[List[Tensor]] = [[] for _ in range(self.num_signs)]  # [sign][j]: perturbed values
        self.steps: List[List[Tensor]] = [[] for _ in range(self.num_signs)]  # [sign][j]: |step| taken, float64
        with torch.no_grad():
            for p, idx, mu in zip(params, self.indices, self.mus):
                x = p.detach().reshape(-1)[idx.to(p.device)]
                for s in range(self.num_signs):
                    v, h = _applied_steps(x, mu, 1.0 if s == 0 else -1.0)
                    self.values[s].append(v)
                    self.steps[s].append(h)
        self._set_offsets()

    def _set_offsets(self) -> None:
        self.offsets = [0]
        for idx in self.indices:
            self.offsets.append(self.offsets[-1] + int(idx.numel()))
        self._lists: Optional[List[List[int]]] = None

    @classmethod
    def _from_parts(cls, indices, mus, scheme, values, steps) -> Coordinates:
        out = cls.__new__(cls)
        out.indices, out.mus, out.scheme = list(indices), list(mus), scheme
        out.num_signs = 2 if scheme == "central" else 1
        out.values, out.steps = values, steps
        out._set_offsets()
        return out

    @property
    def num_directions(self) -> int:
        """Number of selected coordinates over all parameters (one direction each)."""
        return self.offsets[-1]

    def signed_steps(self, j: int, sign_block: int) -> Tensor:
        """The signed steps (float64) actually taken for parameter ``j`` in block ``sign_block`` (0: +, 1: −)."""
        return self.steps[sign_block][j] if sign_block == 0 else -self.steps[sign_block][j]

    def spans(self, j: int) -> Tensor:
        """What the differences of parameter ``j`` are divided by: ``h₊`` or ``(h₊ + h₋)/2`` (float64)."""
        if self.num_signs == 1:
            return self.steps[0][j]
        return (self.steps[0][j] + self.steps[1][j]) / 2

    def locate(self, e: int):
        """``(j, c, k, sign block)`` of evaluation ``e``: parameter, position in ``indices[j]``, flat index."""
        n = self.num_directions
        c = e % n
        j = bisect.bisect_right(self.offsets, c) - 1
        if self._lists is None:
            self._lists = [idx.tolist() for idx in self.indices]
        c -= self.offsets[j]
        return j, c, self._lists[j][c], 0 if e < n else 1

    def perturb(self, params: Sequence[Tensor], e: int, exact: bool = True):
        """Set the one coordinate of evaluation ``e`` to its perturbed value, in place.

        Call under ``torch.no_grad()`` (leaf parameters cannot be written in place otherwise).

        Args:
            params: the parameters the set was made for, in the same order.
            e: evaluation number, ``0 <= e < len(self)``.
            exact: ignored: the old value is always kept, so :meth:`restore` is bitwise.

        Returns:
            A token ``(j, index, old value)`` for :meth:`restore`.
        """
        j, c, k, s = self.locate(e)
        at = _element(params[j], k)
        old = params[j][at].clone()
        params[j][at] = self.values[s][j][c]
        return (j, at, old)

    def restore(self, params: Sequence[Tensor], e: int, token) -> None:
        """Write back the value ``perturb(params, e)`` replaced (bitwise), from its ``token``."""
        j, at, old = token
        params[j][at] = old

    def perturbed_stack(self, params: Sequence[Tensor], lo: int, hi: int) -> List[Tensor]:
        """For evaluations ``lo..hi-1``: per parameter a ``(hi-lo, *shape)`` stack of perturbed values."""
        k = hi - lo
        stacks = [p.detach().unsqueeze(0).repeat((k,) + (1,) * p.dim()) for p in params]
        n = self.num_directions
        for sb in range(self.num_signs):
            for j, idx in enumerate(self.indices):
                first, last = sb * n + self.offsets[j], sb * n + self.offsets[j + 1]
                a, b = max(first, lo), min(last, hi)
                if a >= b:
                    continue
                rows = torch.arange(a - lo, b - lo, device=stacks[j].device)
                cols = idx[a - first : b - first].to(stacks[j].device)
                flat = stacks[j].view(k, -1) if stacks[j].is_contiguous() else None
                values = self.values[sb][j][a - first : b - first].to(stacks[j].device)
                if flat is not None:
                    flat[rows, cols] = values
                else:  # row-major flat index of a strided stack
                    for r, col, v in zip(rows.tolist(), cols.tolist(), values):
                        stacks[j][r][_element(stacks[j][r], col)] = v
        return stacks

    def subset(self, ids: Tensor) -> Coordinates:
        """The directions ``ids`` (ascending) as a set of their own, on the CPU, parameter-major order kept."""
        bounds = torch.searchsorted(ids, torch.tensor(self.offsets, dtype=ids.dtype)).tolist()
        picks = [(ids[bounds[j] : bounds[j + 1]] - self.offsets[j]) for j in range(len(self.indices))]
        take = lambda t, j: t.detach().cpu()[picks[j]]  # noqa: E731
        return Coordinates._from_parts(
            [take(idx, j) for j, idx in enumerate(self.indices)],
            self.mus,
            self.scheme,
            [[take(v, j) for j, v in enumerate(block)] for block in self.values],
            [[take(h, j) for j, h in enumerate(block)] for block in self.steps],
        )

    def to_devices(self, devices: Sequence[torch.device]) -> Coordinates:
        """The same set with parameter ``j``'s tensors on ``devices[j]``."""
        return Coordinates._from_parts(
            [idx.to(d) for idx, d in zip(self.indices, devices)],
            self.mus,
            self.scheme,
            [[v.to(d) for v, d in zip(block, devices)] for block in self.values],
            [[h.to(d) for h, d in zip(block, devices)] for block in self.steps],
        )

    def accumulate(self, coeffs: Tensor, grads: Sequence[Tensor], scales: Optional[Sequence[float]] = None) -> None:
        """``grads[j].flat[k] += scales[j] · c_k / span_k`` for every selected coordinate ``k``, in place.

        ``span`` is the step actually taken (:meth:`spans`). Plain PyTorch (``index_add_``),
        computed in float64 and rounded once to each gradient's dtype.

        Args:
            coeffs: ``(num_directions,)`` coefficients from the estimator's ``combine``.
            grads: one tensor per parameter, shaped like it (any strides), updated in place.
            scales: one factor per parameter (e.g. ``−lr`` for an in-place SGD step); None: 1.
        """
        for j, idx in enumerate(self.indices):
            if idx.numel() == 0:
                continue
            g = grads[j]
            c = coeffs[self.offsets[j] : self.offsets[j + 1]].to(device=g.device, dtype=torch.float64)
            scale = 1.0 if scales is None else scales[j]
            update = (c * scale / self.spans(j).to(g.device)).to(g.dtype)
            if g.is_contiguous():
                g.view(-1).index_add_(0, idx.to(g.device), update)
            else:  # e.g. channels_last: flat indices are in row-major (logical) order
                step = torch.zeros(g.numel(), dtype=g.dtype, device=g.device)
                step.index_add_(0, idx.to(g.device), update)
                g.add_(step.view(g.shape))


class RandomDirections(Directions):
    """``q`` random directions regenerated from ``seed`` (never stored).

    ``dist``: ``"gaussian"`` (N(0, I)), ``"sphere"`` (uniform on the unit sphere of the
    selected coordinates, so ``E[u uᵀ] = I/d``) or ``"rademacher"`` (±1).
    ``antithetic=True`` evaluates ``θ ± μu`` (two-sided) instead of ``θ + μu`` and ``θ``.
    ``masks[j]`` (optional) restricts parameter ``j`` to those flat indices (zero elsewhere).

    Entry chunk ``c`` of direction ``i`` in parameter ``j`` comes from a generator of its own
    seeded by a splitmix64 mix of ``(seed, i, j, c)``, on the parameter's device and in its
    dtype, so any piece can be regenerated alone (the same numbers every time on the same
    device type; a CUDA generator gives other numbers than a CPU one).

    Args:
        params: the parameter tensors (their shapes, devices and dtypes are recorded, not their values).
        seed: the step's seed (e.g. :func:`~zeroth.estimators.draw_seed`).
        q: number of directions.
        mus: per parameter, the step μ_j (absolute, in the parameter's units).
        dist: ``"gaussian"``, ``"sphere"`` or ``"rademacher"``.
        antithetic: two-sided evaluations (``+`` block, then ``−`` block).
        masks: per parameter, None (all entries) or a 1-D int64 tensor of flat indices.

    Attributes:
        dim: the number of selected entries over all parameters (``d`` of the sphere's factor).
    """

    kind = "random"

    def __init__(
        self,
        params: Sequence[Tensor],
        seed: int,
        q: int,
        mus: Sequence[float],
        dist: str = "gaussian",
        antithetic: bool = False,
        masks: Optional[Sequence[Optional[Tensor]]] = None,
    ):
        self.seed = int(seed)
        self.q = int(q)
        self.mus = [float(m) for m in mus]
        self.dist = dist
        self.num_signs = 2 if antithetic else 1
        self.shapes = [p.shape for p in params]
        self.devices = [p.device for p in params]
        self.dtypes = [p.dtype for p in params]
        self.masks = list(masks) if masks is not None else [None] * len(self.shapes)
        self.dim = sum(int(m.numel()) if m is not None else int(math.prod(s)) for m, s in zip(self.masks, self.shapes))
        self._norms: Optional[List[float]] = None

    @property
    def num_directions(self) -> int:
        """``q``, the number of random directions."""
        return self.q

    def _size(self, j: int) -> int:
        """Number of selected entries of parameter ``j``."""
        mask = self.masks[j]
        return int(mask.numel()) if mask is not None else int(math.prod(self.shapes[j]))

    def _chunks(self, j: int) -> range:
        """The chunk numbers of parameter ``j`` (at least one, possibly empty)."""
        return range(max(1, -(-self._size(j) // CHUNK)))

    def _raw(self, i: int, j: int, chunk: int = 0) -> Tensor:
        """Chunk ``chunk`` (entries ``chunk·CHUNK ...``) of the unnormalised direction ``i`` in parameter ``j``.

        Each chunk has a generator of its own, so any chunk can be drawn alone.
        """
        n = max(0, min(CHUNK, self._size(j) - chunk * CHUNK))
        g = torch.Generator(device=self.devices[j])
        g.manual_seed(_mix_seed(self.seed, i, j, chunk))
        if self.dist == "rademacher":
            r = torch.randint(0, 2, (n,), generator=g, device=self.devices[j], dtype=self.dtypes[j])
            return r.mul_(2).sub_(1)  # drawn in the parameter dtype: no int64 chunk
        return torch.randn(n, generator=g, device=self.devices[j], dtype=self.dtypes[j])

    def _place(self, j: int, values: Tensor) -> Tensor:
        """Values drawn for parameter ``j`` on the device that parameter lives on."""
        return values

    def _pieces(self, i: int, j: int):
        """``(start, stop, values)``: direction ``i`` on the selected entries of parameter ``j``, a chunk at a time."""
        scale = 1.0 / self.norm(i) if self.dist == "sphere" else None
        for c in self._chunks(j):
            raw = self._raw(i, j, c)
            if scale is not None:
                raw = raw.mul_(scale)
            yield c * CHUNK, c * CHUNK + raw.numel(), self._place(j, raw)

    def norm(self, i: int) -> float:
        """Euclidean norm of raw direction ``i`` (computed once for all ``q``, then cached)."""
        if self._norms is None:
            self._norms = []
            for ii in range(self.q):
                sq = 0.0
                for j in range(len(self.shapes)):
                    for c in self._chunks(j):
                        sq += float(self._raw(ii, j, c).double().pow(2).sum())
                self._norms.append(math.sqrt(sq))
        return self._norms[i]

    def direction(self, i: int, j: int) -> Tensor:
        """Direction ``i`` restricted to parameter ``j``, shaped like that parameter (materialised)."""
        parts = [v for _, _, v in self._pieces(i, j)]
        raw = parts[0] if len(parts) == 1 else torch.cat(parts)
        mask = self.masks[j]
        if mask is None:
            return raw.view(self.shapes[j])
        full = torch.zeros(math.prod(self.shapes[j]), device=raw.device, dtype=self.dtypes[j])
        full[mask.to(raw.device)] = raw
        return full.view(self.shapes[j])

    def add_to(self, tensors: Sequence[Tensor], i: int, alphas: Sequence[float]) -> None:
        """``tensors[j] += alphas[j] · u_ij`` for every ``j``, a chunk at a time (never a whole direction)."""
        for j, t in enumerate(tensors):
            alpha = alphas[j]
            if alpha == 0.0:
                continue
            if not t.is_contiguous():
                t.add_(self.direction(i, j).to(t.dtype), alpha=alpha)
                continue
            flat, mask = t.view(-1), self.masks[j]
            for a, b, v in self._pieces(i, j):
                if mask is None:
                    flat[a:b].add_(v.to(t.dtype), alpha=alpha)
                else:
                    flat.index_add_(0, mask[a:b].to(t.device), v.to(t.dtype), alpha=alpha)

    def perturb(self, params: Sequence[Tensor], e: int, exact: bool = True):
        """Move ``params`` in place to ``θ + s·μ_j·u_i`` for evaluation ``e`` (``i = e mod q``, sign ``s``).

        Call under ``torch.no_grad()``.

        Args:
            params: the parameters the set was made for, in the same order.
            e: evaluation number, ``0 <= e < len(self)``.
            exact: keep a copy of ``params`` so that :meth:`restore` is bitwise (memory: one
                parameter copy); False undoes by subtraction (about one ulp off per evaluation).

        Returns:
            The copy (``exact=True``) or None: the token for :meth:`restore`.
        """
        i, s = e % self.q, self.sign(e)
        backup = [p.clone() for p in params] if exact else None
        self.add_to(params, i, [s * mu for mu in self.mus])
        return backup

    def restore(self, params: Sequence[Tensor], e: int, token) -> None:
        """Undo ``perturb(params, e)``: copy the saved values back (bitwise), or subtract ``s·μ_j·u_i``."""
        if token is not None:
            for p, b in zip(params, token):
                p.copy_(b)
            return
        i, s = e % self.q, self.sign(e)
        self.add_to(params, i, [-s * mu for mu in self.mus])

    def perturbed_stack(self, params: Sequence[Tensor], lo: int, hi: int) -> List[Tensor]:
        """For evaluations ``lo..hi-1``: per parameter a ``(hi-lo, *shape)`` stack of perturbed values."""
        stacks = [p.detach().unsqueeze(0).repeat((hi - lo,) + (1,) * p.dim()) for p in params]
        for e in range(lo, hi):  # regenerated from the seed
            i, sign = e % self.num_directions, self.sign(e)
            for j, st in enumerate(stacks):
                st[e - lo].add_(self.direction(i, j), alpha=sign * self.mus[j])
        return stacks

    def subset(self, ids: Tensor) -> RandomDirections:
        """The directions ``ids`` (ascending), regenerated from the same seeds (see :class:`SeedSubset`)."""
        return SeedSubset(self, ids)

    def to_devices(self, devices: Sequence[torch.device]) -> RandomDirections:
        """Directions drawn where they are drawn now, handed out on ``devices`` (see :class:`SeedSubset`)."""
        return SeedSubset(self, torch.arange(self.num_directions)).place(devices)

    def accumulate(self, coeffs: Tensor, grads: Sequence[Tensor], scales: Optional[Sequence[float]] = None) -> None:
        """``grads[j] += scales[j] · Σ_i c_i u_ij / μ_j`` in place, regenerating each ``u_i`` a chunk at a time.

        Divides by the nominal μ_j (the rounding of ``θ + μu`` in the parameter's dtype is not
        accounted for, unlike :class:`Coordinates`).

        Args:
            coeffs: ``(q,)`` coefficients from the estimator's ``combine`` (zeros are skipped).
            grads: one tensor per parameter, shaped like it, updated in place.
            scales: one factor per parameter; None: 1.
        """
        scales = [1.0] * len(grads) if scales is None else scales
        for i, c in enumerate(coeffs.tolist()):
            if c != 0.0:
                self.add_to(grads, i, [c * sc / mu for sc, mu in zip(scales, self.mus)])


class SeedSubset(RandomDirections):
    """Random directions ``ids`` of a :class:`RandomDirections`, regenerated from the same seeds.

    Directions are drawn exactly as the parent draws them, on the device type it draws them
    on (a CUDA generator gives other numbers than a CPU one), and then handed out on the
    devices of the parameters they perturb (:meth:`place`) — what a distributed worker needs.
    """

    def __init__(self, parent: RandomDirections, ids: Tensor):
        self.__dict__.update({k: v for k, v in parent.__dict__.items() if k != "_norms"})
        base = getattr(parent, "ids", None)
        self.ids = [base[int(i)] if base is not None else int(i) for i in ids.tolist()]
        self.q = len(self.ids)
        self._norms = None
        self.masks = [m.detach().cpu() if m is not None else None for m in parent.masks]
        self.devices = [torch.device(d.type) for d in parent.devices]  # where directions are drawn
        self.targets = list(self.devices)  # where they are used

    def place(self, devices: Sequence[torch.device]) -> SeedSubset:
        """Draw on the parent's device type (masks moved there), hand directions out on ``devices``."""
        self.devices = [torch.device(d.type) for d in self.devices]
        self.masks = [m.to(d) if m is not None else None for m, d in zip(self.masks, self.devices)]
        self.targets = list(devices)
        return self

    def to_devices(self, devices: Sequence[torch.device]) -> SeedSubset:
        """This set, its directions handed out on ``devices`` (:meth:`place`; drawn where they were)."""
        return self.place(devices)

    def _raw(self, i: int, j: int, chunk: int = 0) -> Tensor:
        return super()._raw(self.ids[i], j, chunk)

    def _place(self, j: int, values: Tensor) -> Tensor:
        return values.to(self.targets[j])
