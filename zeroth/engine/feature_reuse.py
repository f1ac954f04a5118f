r"""``FeatureReuseEvaluator``: CGE losses for models that are chains of stages, doing far less arithmetic.

For a coordinate of stage ``s``:

1. the input of stage ``s`` is taken from the cached unperturbed pass (computed once a step,
   residual blocks' inner activations included);
2. a coordinate of a Linear/Conv weight or bias (or a BatchNorm affine parameter) changes one
   output channel only, so the perturbed stage output is the cached output plus a local
   change ``Δ`` built from the cached input (``μ·x[:, i]`` for Linear, ``μ·patch`` for Conv);
   other parameters re-run their stage on K perturbed copies (``torch.func``).
   Inside a residual block (``zo_residual``) the same holds for its ``main`` layers;
3. the layers after it see only the *difference* (``delta.propagate``, including through
   residual blocks) up to a position fixed before the step by a cost model
   (:mod:`.schemes`, ``scheme=``): while Δ is confined to one channel it costs a fraction of a
   forward; once it is dense, the chunk's K copies ``a + Δ`` are formed there and run the rest
   as one batch — never from earlier than the perturbed layer's cached input (DeepZero restarts
   from the perturbed *block*'s);
4. the loss difference of each copy: for ``F.cross_entropy`` in closed form from the cached
   logits, ``ℓ(z + Δ) − ℓ(z) = mean_b[log Σ_j p_bj e^{Δ_bj} − Δ_{b,y_b}]``, formed in float64
   (from the copies' logits minus the cached ones when copies ran); for the last Linear layer
   all of its coordinates at once (``ops.head_cross_entropy_difference``, the cost of about one
   forward); for any other loss by evaluating it per copy.

On a CPU the cached pass of an image model runs channels-last and the copies repeat its
arithmetic exactly (:mod:`.stages`), so their loss differences carry the rounding of the
perturb–evaluate–restore loop, not more.

``precision`` (``"fp32"`` | ``"tf32"`` | ``"bf16"`` | ``"bf16x3"``, see :mod:`.precision`) is the
arithmetic of the linear ops applied to Δ; the base pass, the nonlinear differences and the loss
difference stay in full precision, so low precision costs accuracy relative to Δ only.
The hot loops run in :mod:`zeroth.ops` (compiled kernels when available).

BatchNorm semantics (same as :class:`~zeroth.engine.SequentialEvaluator`): in train mode every
perturbed copy is normalised with its own batch statistics; running statistics are
updated once per step, by the unperturbed pass. Dropout must be inactive (eval or p = 0).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..estimators.directions import Coordinates, Directions
from ..objective import Objective, scalar_loss
from .base import EVALUATORS, Evaluator, Losses, StepState, all_finite, only_batchnorm_statistics
from .delta import (
    Delta,
    Traces,
    add_delta_,
    conv_copies,
    fuses_conv,
    is_residual,
    materialise,
    propagate,
    propagate_chain,
)
from .precision import check_precision
from .rules import (
    Support,
    Unsupported,
    chain_support,
    classic_objective,
    cross_entropy_closed_form,
    dtype_support,
    global_hooks,
    layer_support,
    shared_parameters,
    starts_delta,
)
from .schemes import BlockShapes, Cut, candidate_cuts, choose_cut, costs_for
from .stages import (
    copies_layout,
    fast_layout,
    forward_cached,
    forward_copies,
    frozen_batchnorm_buffers,
    owns,
    residual_parts,
    run_copies,
    stages,
    uses_batch_statistics,
)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def cross_entropy_difference(logits: Tensor, targets: Tensor, delta: Delta) -> Tensor:
    """``CE(z + Δ_k) − CE(z)`` for every copy k (mean over the batch), in float64."""
    out = ops.cross_entropy_difference(logits, targets, delta.values, delta.channels)
    if not bool(torch.isfinite(out).all()):  # huge dense Δ: fall back to the direct form
        z = logits.double()
        full = z.unsqueeze(0) + delta.dense(z).double()
        out = torch.stack([F.cross_entropy(f, targets) for f in full]) - F.cross_entropy(z, targets)
    return out


SCHEMES: Dict[str, Callable[[Sequence[Tuple[Cut, float]]], Cut]] = {
    "auto": choose_cut,  # the cheapest by the cost model
    "propagate": lambda cands: cands[-1][0],  # Δ as far as it goes
    "restart": lambda cands: cands[0][0],  # the copies right after the perturbed layer
}
"""How FeatureReuseEvaluator picks a :class:`~.schemes.Cut` from the candidates (in chain order)."""


CPU_CHUNK_BYTES = 8 * 2**20
"""On CPU a chunk's K copies of the largest activation stay within this many bytes: glibc
hands larger blocks back to the kernel on free, so every chunk would page-fault its memory
in again (digits CNN, batch 256, one full gradient: 11,700 page faults and 0.147 s with
42 MB tensors, none and 0.093 s with 10 MB ones; smaller chunks lose to per-chunk overhead)."""


@EVALUATORS.register("feature_reuse")
class FeatureReuseEvaluator(Evaluator):
    """Coordinate losses from cached features and propagated differences (see module doc).

    Args:
        max_memory: bytes bounding the per-chunk working set: K copies of the largest activation
            are processed at a time (on CPU also at most :data:`CPU_CHUNK_BYTES` of them).
        precision: arithmetic of the linear ops on Δ (:mod:`.precision`).
        scheme: where the K perturbed copies take over from difference propagation
            (:mod:`.schemes`; every choice is exact): ``"auto"`` — the cheapest position by the
            cost model of the device type, fixed before the step (with a ``precision`` other than
            fp32: as ``"propagate"``, since that arithmetic applies to Δ only); ``"propagate"`` —
            Δ as far as the layers allow; ``"restart"`` — the copies right after the perturbed
            layer, from its cached input (DeepZero's restart, one layer instead of one block
            earlier, all K coordinates of a chunk as one batch).

    Raises:
        ValueError: ``max_memory`` not an int of at least 65536, an unknown ``precision`` or ``scheme``.
    """

    name = "feature_reuse"

    def __init__(self, max_memory: int = 256 * 2**20, precision: str = "fp32", scheme: str = "auto"):
        if not isinstance(max_memory, int) or max_memory < 2**16:
            raise ValueError(f"Invalid max_memory value: {max_memory!r} (bytes, at least 65536)")
        if scheme not in SCHEMES:
            raise ValueError(f"Invalid scheme value: {scheme!r} (expected one of {', '.join(SCHEMES)})")
        self.max_memory = max_memory
        self.precision = check_precision(precision)
        self.scheme = scheme

    # -- applicability --------------------------------------------------------------------
    def supports(
        self, objective: Any, dirs: Optional[Directions] = None, params: Optional[Sequence[Tensor]] = None
    ) -> Support:
        """Whether this evaluator computes ``dirs`` of ``params`` on ``objective`` exactly (the rules of
        :mod:`zeroth.engine.rules`); a false :class:`Support` carries the reason."""
        form = classic_objective(objective)
        if not form:
            return form
        if dirs is not None and getattr(dirs, "kind", None) != "coordinates":
            return Support.no(
                "FeatureReuseEvaluator evaluates CGE coordinates only (random directions change every layer)"
            )
        chain = stages(objective.model)
        if not chain:
            return Support.no(
                f"{type(objective.model).__name__} is not a chain of stages (nn.Sequential or zo_stages())"
            )
        if global_hooks():
            return Support.no("global module forward hooks are registered")
        whole = chain_support(objective.model)
        if not whole:
            return whole
        for s, m in enumerate(chain):
            sub = layer_support(m)
            if not sub:
                return Support.no(f"stage {s}: {sub.reason}")
        shared = shared_parameters(chain)
        if shared:
            names = [n for n, p in objective.model.named_parameters(remove_duplicate=False) if id(p) in shared]
            return Support.no(f"a parameter is used in more than one place ({', '.join(sorted(set(names))[:4])})")
        if params is not None and not owns(chain, params):
            return Support.no("a trained parameter is not a parameter of the model's stages")
        return dtype_support(objective.model, objective.inputs)

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, objective: Any, params: Sequence[Tensor], dirs: Directions) -> Losses:
        """Losses at every evaluation of ``dirs`` (see the module doc and :meth:`Evaluator.evaluate`).

        Raises:
            zeroth.engine.base.Unsupported: ``supports`` is false, or the base pass changes a buffer
                other than BatchNorm's statistics (everything restored first).
        """
        support = self.supports(objective, dirs, params)
        if not support:
            raise Unsupported(f"FeatureReuseEvaluator does not apply: {support.reason}")
        chain = stages(objective.model)
        assert chain is not None  # supports() declined a model that is not a chain of stages
        coords = cast(Coordinates, dirs)  # supports() declined a kind other than "coordinates"
        state = StepState(objective, params)
        try:
            with torch.no_grad():
                state.before()
                ctx = self._base_pass(objective, chain)
                state.after()
                only_batchnorm_statistics(state, "FeatureReuseEvaluator")
                diffs = self._differences(ctx, params, coords)
        except BaseException:
            state.abort()
            raise
        perturbed = ctx.reported.double() + diffs
        base = ctx.reported if dirs.needs_base else None
        state.finish(failed=not all_finite(base, perturbed))
        return Losses(base, perturbed)

    def _base_pass(self, objective: Any, chain: List[nn.Module]) -> _StepContext:
        """The unperturbed pass (under ``no_grad``): every stage's input and output, and the inner
        activations of residual blocks; BatchNorm running statistics move here, once, as in one
        first-order step.

        Image inputs on a CPU are cached channels-last (:func:`~.stages.fast_layout`, the copies'
        layout). Then the model's own forward on the input as given comes first: it moves the
        running statistics and gives ℓ(θ) exactly as SequentialEvaluator's unperturbed evaluation does; the
        cached pass follows with statistics frozen (as given, if a stage cannot run channels-last,
        e.g. a ``view`` in its forward).
        """
        x = objective.inputs
        layout = fast_layout(x)
        if layout == copies_layout(x):
            ctx = self._cached_pass(objective, chain, x)
            if callable(getattr(objective.model, "zo_stages", None)):
                # a declared chain is a promise about forward: check it on this step's input
                with frozen_batchnorm_buffers(objective.model):
                    _check_chain(scalar_loss(objective()), ctx.base)
            return ctx
        reported = scalar_loss(objective())
        with frozen_batchnorm_buffers(objective.model):
            try:
                ctx = self._cached_pass(objective, chain, x.contiguous(memory_format=layout))
            except Exception:
                ctx = self._cached_pass(objective, chain, x)
        _check_chain(reported, ctx.base)
        ctx.reported = reported
        return ctx

    def _cached_pass(self, objective: Any, chain: List[nn.Module], x: Tensor) -> _StepContext:
        traces = Traces()
        acts = [x]
        for m in chain:
            acts.append(traces.record(m, acts[-1]) if is_residual(m) else forward_cached(m, acts[-1]))
        scheme = "propagate" if (self.scheme == "auto" and self.precision != "fp32") else self.scheme
        return _StepContext(
            chain, acts, objective, _loss(objective, acts[-1]), self.precision, traces, choose=SCHEMES[scheme]
        )

    def _differences(self, ctx: _StepContext, params: Sequence[Tensor], dirs: Coordinates) -> Tensor:
        """``ℓ(θ + h e_k) − ℓ(θ)`` for every evaluation, in float64."""
        chain, acts = ctx.chain, ctx.acts
        owner = _owners(chain)
        diffs = torch.empty(len(dirs), dtype=torch.float64, device=ctx.base.device)
        n = dirs.num_directions
        for j, p in enumerate(params):
            s, name = owner[id(p)]
            idx = dirs.indices[j]
            chunk = self._chunk_size(acts, s + (not is_residual(chain[s])))
            for sign_block in range(dirs.num_signs):
                nominal = (1.0 if sign_block == 0 else -1.0) * dirs.mus[j]
                steps, values = dirs.signed_steps(j, sign_block), dirs.values[sign_block][j]
                for lo in range(0, idx.numel(), chunk):
                    sel = idx[lo : lo + chunk]
                    d = ctx.chunk(
                        s, name, p, sel, steps[lo : lo + chunk], values[lo : lo + chunk], nominal, idx.numel()
                    )
                    start = sign_block * n + dirs.offsets[j] + lo
                    diffs[start : start + sel.numel()] = d
        return diffs

    def _chunk_size(self, acts: List[Tensor], first: int) -> int:
        """Copies per chunk: K copies of the largest activation from ``acts[first]`` on (what the
        copies can grow to: a stage's outputs, or for a residual block its input too) fit
        ``max_memory`` six times over, and on CPU one of them fits :data:`CPU_CHUNK_BYTES`."""
        largest = max(a.numel() for a in acts[first:]) * acts[0].element_size()
        chunk = max(1, self.max_memory // max(6 * largest, 1))
        if acts[0].device.type == "cpu":
            chunk = min(chunk, max(1, CPU_CHUNK_BYTES // max(largest, 1)))
        return chunk


def _check_chain(own: Tensor, chained: Tensor) -> None:
    """The model's own forward and its stage chain give the same loss, to rounding (the chain may
    run in another memory layout); else the chain is not the forward and FeatureReuse declines.

    Raises:
        Unsupported: they differ by more than √eps of the dtype, relative.
    """
    tol = float(torch.finfo(own.dtype).eps) ** 0.5 * max(1.0, abs(float(own)))
    if not abs(float(own) - float(chained)) <= tol:
        raise Unsupported(
            f"the model's stage chain gives loss {float(chained):.9g} where its forward gives {float(own):.9g}: "
            "zo_stages() does not describe forward"
        )


class _StepContext:
    """One step's cached base pass and the computation of a chunk's loss differences.

    A chunk follows the plan of :mod:`.schemes`: Δ is propagated up to the planned :class:`Cut`
    (or to the first layer it cannot pass), then the K copies ``a + Δ`` run the rest as one batch.
    ``choose`` picks a cut from the candidates (default: :func:`~.schemes.choose_cut`).
    """

    def __init__(
        self,
        chain,
        acts,
        objective,
        base,
        precision,
        traces: Optional[Traces] = None,
        choose: Callable[[Sequence[Tuple[Cut, float]]], Cut] = choose_cut,
    ):
        # Δ's kernels read plain (contiguous) base activations; the copies start from the cached
        # pass's own tensors (laid_out), so that they repeat its arithmetic
        self._layouts: Dict[int, Tuple[Tensor, Tensor]] = {}
        self._plains: Dict[int, Tuple[Tensor, Tensor]] = {}
        self.chain, self.objective, self.base = chain, objective, base
        self.reported = base  # ℓ(θ) as reported (the model's own forward when the cached pass is laid out anew)
        self.acts = [self._plain(a) for a in acts]
        self.precision = precision
        self.traces = traces if traces is not None else Traces()
        self.traces.convert(self._plain)
        self.closed_form = bool(cross_entropy_closed_form(objective.loss_fn, self.acts[-1], objective.targets))
        self.costs = costs_for(self.acts[0].device.type)
        self.choose = choose
        self._heads: Dict[Tuple[int, float], Tensor] = {}
        self._plans: Dict[Tuple[int, str, int], Cut] = {}

    def _plain(self, a: Tensor) -> Tensor:
        """``a`` contiguous, converted once (a block's input is also its trace's first activation)."""
        if a.is_contiguous():
            return a
        if id(a) not in self._plains:
            plain = a.contiguous()
            self._plains[id(a)] = (a, plain)  # (both kept alive: their ids stay unique)
            self._layouts[id(plain)] = (plain, a)
        return self._plains[id(a)][1]

    def laid_out(self, a: Tensor) -> Tensor:
        """The cached pass's own tensor (in its layout) for plain base activation ``a``."""
        return self._layouts.get(id(a), (a, a))[1]

    def materialise(self, a: Tensor, delta: Optional[Delta], k: int) -> Tensor:
        """The K copies ``a + Δ_k`` from base activation ``a`` (see :func:`~.delta.materialise`)."""
        return materialise(self.laid_out(a), delta, k)

    # -- the plan -------------------------------------------------------------------------
    def candidates(self, s: int, name: str, k: int) -> List[Tuple[Cut, float]]:
        """The exact switch positions for K coordinates of ``name`` in stage ``s``, with modelled costs."""
        return candidate_cuts(
            self.chain,
            [tuple(a.shape) for a in self.acts],
            self._inner_shapes,
            s,
            name,
            k,
            self.costs,
            self.closed_form,
        )

    def plan(self, s: int, name: str, k: int) -> Cut:
        """The cut for K coordinates of ``name`` in stage ``s`` (fixed for the step)."""
        key = (s, name, k)
        if key not in self._plans:
            self._plans[key] = self.choose(self.candidates(s, name, k))
        return self._plans[key]

    def _inner_shapes(self, t: int) -> BlockShapes:
        tr = self.traces.residual(self.chain[t], self.acts[t])
        return BlockShapes([tuple(a.shape) for a in tr.main], tuple(tr.total.shape))

    # -- one chunk ------------------------------------------------------------------------
    def chunk(
        self, s: int, name: str, p: Tensor, sel: Tensor, steps: Tensor, values: Tensor, nominal: float, selected: int
    ) -> Tensor:
        """Loss differences of the copies moving coordinate ``sel[k]`` of parameter ``p`` to ``values[k]``,
        i.e. by ``steps[k]`` (the signed step actually taken, float64; ``nominal``: the signed μ);
        ``selected``: how many coordinates of ``p`` this step estimates in all."""
        chain, acts = self.chain, self.acts
        stage = chain[s]
        if (
            self.closed_form
            and s == len(chain) - 1
            and isinstance(stage, nn.Linear)
            and acts[s].dim() == 2
            and name in ("weight", "bias")
        ):
            if 2 * selected >= p.numel():
                # the table is made at the nominal step; the step actually taken differs by rounding
                # (|h − μ| ≤ ulp(θ)), and D(h) − D(μ)·h/μ = O(h·|h − μ|·D''), far below the loss's own rounding
                return self._head(stage, name, p, nominal)[sel] * (steps / nominal)
            # a sparse selection: only its coordinates, each a one-logit change (O(B) apiece)
            head = initial_delta(stage, name, p, sel, steps, acts[s], acts[s + 1])
            assert head is not None  # a Linear's weight/bias on 2-D input (supports() declined overridden forwards)
            return cross_entropy_difference(acts[-1], self.objective.targets, head)
        k = sel.numel()
        cut = self.plan(s, name, k)
        inner = _main_layer(stage, name)
        state: _State
        if inner is not None:  # a layer inside a residual block: Δ (or copies) from that layer's output
            t0, rest = inner
            tr = self.traces.residual(stage, acts[s])
            layer = list(stage.main)[t0]
            delta = initial_delta(layer, rest, p, sel, steps, tr.main[t0], tr.main[t0 + 1])
            main: _State = (
                delta if delta is not None else perturbed_stage_outputs(layer, rest, p, sel, values, tr.main[t0])
            )
            state = self._block(s, t0 + 1, main, None, cut.inner if cut.stage == s else None, k)
        else:
            delta = initial_delta(stage, name, p, sel, steps, acts[s], acts[s + 1])
            state = delta if delta is not None else perturbed_stage_outputs(stage, name, p, sel, values, acts[s])
        t = s + 1
        while isinstance(state, Delta) and t < len(chain):
            if cut == Cut(t):
                state = self.materialise(acts[t], state, k)
                break
            if is_residual(chain[t]):
                state = self._block(t, 0, state, state, cut.inner if cut.stage == t else None, k)
            elif (
                cut == Cut(t + 1)
                and self.precision == "fp32"
                and fuses_conv(chain[t], state, self.laid_out(acts[t + 1]))
            ):
                state = conv_copies(chain[t], self.laid_out(acts[t + 1]), state, k)
            else:
                nxt = propagate(chain[t], acts[t], acts[t + 1], state, self.precision, self.traces)
                if nxt is None:
                    state = self.materialise(acts[t], state, k)
                    break
                state = nxt
            t += 1
        if isinstance(state, Delta):  # the difference reached the logits
            if self.closed_form:
                return cross_entropy_difference(acts[-1], self.objective.targets, state)
            state = self.materialise(acts[-1], state, k)
        copies = forward_copies(chain[t:], state)
        if self.closed_form:  # the logits' change is exact in fp32 (nearby values); the loss's in float64
            return cross_entropy_difference(acts[-1], self.objective.targets, Delta(copies - acts[-1].unsqueeze(0)))
        return _per_copy_losses(self.objective, copies) - self.base.double()

    def _block(self, t: int, m0: int, main: _State, delta_in: Optional[Delta], cut: Optional[int], k: int) -> _State:
        """Residual stage ``t`` from position ``m0`` of ``main`` (Δ or copies there) to its output.

        ``delta_in``: Δ of the block's input (None in the perturbed block: the input, hence the
        shortcut, is unchanged). ``cut``: the main position where copies take over (None: Δ
        goes as far as it can, through the whole block when possible).
        """
        block, a_in, a_out = self.chain[t], self.acts[t], self.acts[t + 1]
        tr = self.traces.residual(block, a_in)
        layers = list(block.main)
        m = m0
        while isinstance(main, Delta) and m < len(layers) and m != cut:
            if cut == m + 1 and self.precision == "fp32" and fuses_conv(layers[m], main, self.laid_out(tr.main[m + 1])):
                main, m = conv_copies(layers[m], self.laid_out(tr.main[m + 1]), main, k), m + 1
                break
            nxt = propagate(layers[m], tr.main[m], tr.main[m + 1], main, self.precision, self.traces)
            if nxt is None:
                break
            main, m = nxt, m + 1
        if isinstance(main, Delta) and m == len(layers) and cut != m:  # Δ through the whole main
            total: Optional[Delta] = main
            if delta_in is not None:
                short = propagate(block.shortcut, a_in, tr.shortcut, delta_in, self.precision, self.traces)
                total = None if short is None else Delta(main.dense(tr.total) + short.dense(tr.total))
            if total is not None:
                out = propagate(block.post, tr.total, a_out, total, self.precision, self.traces)
                if out is not None:
                    return out
                return forward_copies([block.post], self.materialise(tr.total, total, k))
        copies = main if isinstance(main, Tensor) else self.materialise(tr.main[m], main, k)
        copies = forward_copies(layers[m:], copies)
        if delta_in is None:
            copies = copies.add_(self.laid_out(tr.shortcut))  # every copy shares the cached shortcut output
        else:
            short = propagate(block.shortcut, a_in, tr.shortcut, delta_in, self.precision, self.traces)
            if short is not None:
                copies = add_delta_(copies.add_(self.laid_out(tr.shortcut)), short)
            else:
                copies = copies.add_(run_copies(block.shortcut, self.materialise(a_in, delta_in, k)))
        return forward_copies([block.post], copies)

    def _head(self, stage: nn.Linear, name: str, p: Tensor, step: float) -> Tensor:
        """CE differences of every coordinate of the last Linear's ``p`` (flat), once per step and μ."""
        key = (id(p), step)
        if key not in self._heads:
            x = self.acts[-2]
            if name == "bias":
                x = x[:, :0]
            table = ops.head_cross_entropy_difference(x, self.acts[-1], self.objective.targets, step, name == "bias")
            self._heads[key] = table.reshape(-1)
        return self._heads[key]


_State = Union[Delta, Tensor]
"""Between layers a chunk is either a Δ of the base activation or the K copies ``(K, B, ...)`` themselves."""


def _main_layer(stage: nn.Module, name: str) -> Optional[Tuple[int, str]]:
    """``(t, rest)`` when ``name`` is ``main.<t>.<rest>`` of a residual stage, else None."""
    if not is_residual(stage):
        return None
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "main" or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2]


def _owners(chain: List[nn.Module]) -> Dict[int, Tuple[int, str]]:
    """``id(param) -> (stage index, name inside the stage)``."""
    out: Dict[int, Tuple[int, str]] = {}
    for s, m in enumerate(chain):
        for name, p in m.named_parameters():
            out.setdefault(id(p), (s, name))
    return out


def initial_delta(
    stage: nn.Module, name: str, p: Tensor, sel: Tensor, steps: Tensor, a_in: Tensor, a_out: Tensor
) -> Optional[Delta]:
    """Δ of the stage output when coordinate ``sel[k]`` of a Linear/Conv2d/BatchNorm parameter moves by
    ``steps[k]`` (signed, any float dtype), else None."""
    if not starts_delta(stage, name):
        return None
    k = sel.numel()
    st = steps.to(dtype=a_in.dtype, device=a_in.device)

    def per_copy(t: Tensor) -> Tensor:  # (K,) -> (K, 1, 1, ...) against a (K, B, ...) tensor
        return st.view((k,) + (1,) * (t.dim() - 1))

    if isinstance(stage, nn.Linear) and a_in.dim() == 2:
        if name == "weight":
            o, i = sel // p.shape[1], sel % p.shape[1]
            v = a_in[:, i].t()
            return Delta(per_copy(v) * v, o)  # (K, B): h·x_i enters logit/feature o
        if name == "bias":
            return Delta(st.view(k, 1).repeat(1, a_in.shape[0]), sel)
    if (
        isinstance(stage, nn.Conv2d)
        and stage.groups == 1
        and stage.padding_mode == "zeros"
        and not isinstance(stage.padding, str)
    ):
        h, w = a_out.shape[2:]
        if name == "bias":
            return Delta(st.view(k, 1, 1, 1).repeat(1, a_in.shape[0], h, w), sel)
        if name == "weight":
            per_out = p[0].numel()
            kh, kw = p.shape[2:]
            o, r = sel // per_out, sel % per_out
            c, i, jj = r // (kh * kw), (r % (kh * kw)) // kw, r % kw
            patches = ops.conv_weight_patches(a_in, c, i, jj, (h, w), stage.stride, stage.padding, stage.dilation)
            return Delta(per_copy(patches) * patches, o)
    if isinstance(stage, _BN) and name in ("weight", "bias"):
        if name == "bias":
            shape = (k, a_in.shape[0]) + tuple(a_in.shape[2:])
            return Delta(st.view((k,) + (1,) * (len(shape) - 1)).expand(shape).clone(), sel)
        xhat = _normalized(stage, a_in).transpose(0, 1)[sel]
        return Delta(per_copy(xhat) * xhat, sel)
    return None


def _normalized(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """BatchNorm's x̂ = (x − mean) / sqrt(var + eps) with the statistics its forward used."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if uses_batch_statistics(bn):
        dims = (0,) + tuple(range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
    else:
        running_mean, running_var = bn.running_mean, bn.running_var
        # (else the base pass's forward raised: eval mode needs both buffers)
        assert running_mean is not None and running_var is not None
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    return (x - mean) * torch.rsqrt(var + bn.eps)


def stage_delta(
    stage: nn.Module,
    name: str,
    p: Tensor,
    sel: Tensor,
    steps: Tensor,
    a_in: Tensor,
    a_out: Tensor,
    precision: str = "fp32",
    traces: Optional[Traces] = None,
) -> Optional[Delta]:
    """Δ of the stage output when coordinate ``sel[k]`` of ``p`` moves by ``steps[k]``, built locally, or None.

    A Linear/Conv2d/BatchNorm stage: :func:`initial_delta`. A residual block whose ``main[t]``
    owns ``p``: Δ at that layer's output, pushed through ``main[t+1:]`` and ``post`` (the
    shortcut is unchanged, since the block's input is).
    """
    direct = initial_delta(stage, name, p, sel, steps, a_in, a_out)
    if direct is not None or not is_residual(stage):
        return direct
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "main" or not parts[1].isdigit():
        return None
    t = int(parts[1])
    traces = traces if traces is not None else Traces()
    main, _, post = residual_parts(stage)
    tr = traces.residual(stage, a_in)
    layers = list(main)
    delta = initial_delta(layers[t], parts[2], p, sel, steps, tr.main[t], tr.main[t + 1])
    if delta is None:
        return None
    delta = propagate_chain(layers[t + 1 :], tr.main[t + 1 :], delta, precision, traces)
    if delta is None:
        return None
    return propagate(post, tr.total, a_out, delta, precision, traces)


def perturbed_stage_outputs(
    stage: nn.Module, name: str, p: Tensor, sel: Tensor, values: Tensor, a_in: Tensor
) -> Tensor:
    """Stage outputs ``(K, B, ...)`` with coordinate ``sel[k]`` of ``p`` set to ``values[k]`` (via torch.func)."""
    k = sel.numel()
    flat = p.detach().reshape(-1)
    stacked = flat.unsqueeze(0).repeat(k, 1)
    stacked[torch.arange(k, device=p.device), sel] = values.to(stacked.device, stacked.dtype)
    stacked = stacked.reshape((k,) + tuple(p.shape))

    def one(param):
        return torch.func.functional_call(stage, {name: param}, (a_in,))

    with frozen_batchnorm_buffers(stage):
        return torch.func.vmap(one)(stacked)


def _loss(objective: Objective, output: Tensor) -> Tensor:
    """The objective's scalar loss of model output ``output``."""
    if objective.targets is None:
        return scalar_loss(objective.loss_fn(output))
    return scalar_loss(objective.loss_fn(output, objective.targets))


def _per_copy_losses(objective: Objective, copies: Tensor) -> Tensor:
    """The objective's loss for each copy ``(K, B, ...)``, in float64."""
    if objective.targets is None:
        fn = objective.loss_fn
        losses = [fn(c) for c in copies]
    else:
        losses = [objective.loss_fn(c, objective.targets) for c in copies]
    return torch.stack([scalar_loss(v) for v in losses]).double()
