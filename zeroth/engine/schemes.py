r"""Where FeatureReuseEvaluator switches from propagating Δ to running K perturbed copies: a cost model.

For a chunk of K coordinates of one parameter, :class:`~zeroth.engine.FeatureReuseEvaluator` can push
the *difference* Δ of the perturbed copies through the following layers (cheap while Δ is
confined to one channel, see :mod:`.delta`), or materialise the K copies ``a + Δ`` and run the
rest of the network on them as one batch. Both are exact; which is cheaper depends on the
layers: a Δ that becomes dense after a convolution costs more to propagate (float64
differences) than the copies' own forward, while a confined Δ costs a fraction of it.
Restarting on the copies right after the perturbed layer (from that layer's cached input, never
earlier) is always a candidate, and the chosen position is never modelled to cost more than it;
that restart itself does less work than DeepZero's restart from the cached input of the
perturbed *block* (arXiv:2310.02025), and runs a chunk's K coordinates as one batch.

The choice is a :class:`Cut` — the position where the copies take over — picked by
:func:`choose_cut` from the layer kinds (:data:`~zeroth.engine.rules.LAYER_RULES`) and the
cached activations' shapes, with a fixed table of costs per device type (:data:`COSTS`):
fixed before any coordinate is evaluated and never by timing, so a step's arithmetic (and
result) does not depend on machine load. Positions:

* ``Cut(t)``: at the input of stage ``t`` (``t = len(chain)``: Δ reaches the logits and the
  loss difference is formed from it);
* ``Cut(t, m)`` for a residual stage ``t`` (``zo_residual``: ``post(main(x) + shortcut(x))``):
  after ``main[m - 1]``; the shortcut's copies are formed from the block's input, and in the
  perturbed block itself the cached shortcut output is shared by all copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from .rules import rule_for, starts_delta
from .stages import uses_batch_statistics


@dataclass(frozen=True)
class Cut:
    """Where the K copies take over: at the input of stage ``stage`` (``inner`` None), or inside
    residual stage ``stage`` after ``main[inner - 1]``."""

    stage: int
    inner: Optional[int] = None


@dataclass(frozen=True)
class Costs:
    """Seconds per unit of work for one device type (a model, not a measurement of the step).

    Attributes:
        conv_mac: a convolution/Linear on copies (or on a dense Δ in fp32), per multiply-add.
        confined_mac: the one-input-channel convolution of a confined Δ, per multiply-add.
        call: fixed cost of one operator call.
        elementwise: an elementwise op on copies (ReLU, add, materialising ``a + Δ``), per element.
        batchnorm: train-mode BatchNorm of copies (own statistics), per element.
        delta_elementwise: ``σ(a + Δ) − σ(a)``, eval-mode BatchNorm or pooling of Δ, per element.
        delta_batchnorm: train-mode BatchNorm difference (float64 statistics), per element.

    The model prices Δ's linear ops at ``conv_mac`` (fp32): FeatureReuseEvaluator consults it only when
    ``precision="fp32"``; a low-precision Δ is propagated as far as it goes.
    """

    conv_mac: float
    confined_mac: float
    call: float
    elementwise: float
    batchnorm: float
    delta_elementwise: float
    delta_batchnorm: float


COSTS: Dict[str, Costs] = {
    # one thread of the project's AMD EPYC (Zen 3, AVX2), float32, measured with
    # `python -m bench.resnet --calibrate` (medians; ResNet-20 shapes, batch 32 and 256)
    "cpu": Costs(
        conv_mac=5.0e-11,
        confined_mac=1.5e-10,
        call=2.0e-5,
        elementwise=6.0e-10,
        batchnorm=2.0e-9,
        delta_elementwise=2.0e-9,
        delta_batchnorm=6.0e-9,
    ),
    # not measured (no GPU in the sessions so far): an H100/H200-class GPU's fp32 rate (~30 TMAC/s)
    # and memory bandwidth (~4 TB/s), a few microseconds per kernel launch
    "cuda": Costs(
        conv_mac=3.0e-14,
        confined_mac=2.0e-13,
        call=8.0e-6,
        elementwise=4.0e-12,
        batchnorm=1.5e-11,
        delta_elementwise=1.0e-11,
        delta_batchnorm=3.0e-11,
    ),
}
"""Cost tables by device type (``torch.device.type``); other devices use the CPU's."""


def costs_for(device_type: str) -> Costs:
    """The cost table of ``device_type`` (``"cpu"``, ``"cuda"``; any other device uses the CPU's)."""
    return COSTS.get(device_type, COSTS["cpu"])


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _is_residual(m: Any) -> bool:
    return bool(getattr(m, "zo_residual", False)) and isinstance(getattr(m, "main", None), nn.Sequential)


class CostModel:
    """Modelled seconds of running a layer on K copies or on their Δ, from the base activations' shapes
    ``(B, ...)`` around it."""

    def __init__(self, costs: Costs, k: int):
        self.c = costs
        self.k = k

    # -- copies ---------------------------------------------------------------------------
    def materialise(self, shape: Sequence[int]) -> float:
        """Forming the K copies ``a + Δ`` of an activation of ``shape``."""
        return self.c.call + 1.5 * self.c.elementwise * self.k * _numel(shape)

    def copies(
        self, m: Any, a_in: Sequence[int], a_out: Sequence[int], inner: Optional[Callable[[Any], BlockShapes]] = None
    ) -> float:
        """K copies through module ``m`` (input shape ``a_in``, output ``a_out``)."""
        c, k = self.c, self.k
        if _is_residual(m) and inner is not None:
            sh = inner(m)
            total = sum((self.copies(layer, sh.main[i], sh.main[i + 1]) for i, layer in enumerate(m.main)), 0.0)
            total += self.copies(m.shortcut, a_in, sh.total) + c.elementwise * k * _numel(sh.total)
            return total + self.copies(m.post, sh.total, a_out)
        if isinstance(m, nn.Sequential):
            return 1e9  # not expected here (stages are flattened); never chosen over a known cost
        rule = rule_for(m)
        kind = rule.kind if rule is not None else "copies"
        n_out = k * _numel(a_out)
        if kind == "conv2d" or isinstance(m, nn.Conv2d):
            macs = n_out * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            return c.call + c.conv_mac * macs
        if kind == "linear":
            return c.call + c.conv_mac * n_out * m.in_features
        if kind == "batchnorm":
            train = uses_batch_statistics(m)
            return (c.call * k + c.batchnorm * n_out) if train else (c.call + c.elementwise * n_out)
        if kind in ("identity", "flatten"):
            return 0.0
        if kind in ("elementwise", "pool", "maxpool"):
            return c.call + c.elementwise * max(n_out, k * _numel(a_in))
        if getattr(m, "zo_linear", False):
            return c.call + 2 * c.elementwise * n_out
        return 4 * c.call + 4 * c.elementwise * max(n_out, k * _numel(a_in))  # other layers: a rough guess

    # -- differences ----------------------------------------------------------------------
    def delta(self, m: Any, a_in: Sequence[int], a_out: Sequence[int], block: int) -> Optional[Tuple[int, float]]:
        """``(state after m, cost)`` of pushing Δ through leaf module ``m``, or None when Δ cannot pass.

        The state is the size of a confined Δ's block per row (its channel's elements), 0 when dense.
        """
        c, k = self.c, self.k
        b = int(a_out[0])
        rule = rule_for(m)
        if rule is None:
            if getattr(m, "zo_linear", False):
                return DENSE, c.call + 3 * c.elementwise * k * _numel(a_out)
            return None
        kind = rule.kind
        block_out = (_numel(a_out[2:]) if len(a_out) > 2 else block) if block else DENSE
        n_out = k * b * block_out if block else k * _numel(a_out)
        n_in = k * b * (_numel(a_in[2:]) if len(a_in) > 2 else block) if block else k * _numel(a_in)
        if kind == "identity":
            return block, 0.0
        if kind == "flatten":
            return (block, 0.0) if (m.start_dim == 1 and m.end_dim == -1) else None
        if kind == "elementwise":
            return block_out, c.call + c.delta_elementwise * n_out
        if kind == "batchnorm":
            train = uses_batch_statistics(m)
            return block_out, c.call + (c.delta_batchnorm if train else c.delta_elementwise) * n_out
        if kind == "pool":
            return block_out, c.call + c.delta_elementwise * n_in
        if kind == "maxpool":
            return block_out, 2 * c.call + 3 * c.elementwise * n_in
        if kind == "linear":
            if len(a_in) != 2:
                return None
            if block:
                return DENSE, c.call + c.confined_mac * k * b * m.out_features * block
            return DENSE, c.call + c.conv_mac * k * b * m.out_features * m.in_features
        if kind == "conv2d":
            if m.padding_mode != "zeros" or (block and m.groups != 1):
                return None
            taps = m.kernel_size[0] * m.kernel_size[1]
            if block:
                return DENSE, c.call * min(k, int(a_in[1])) + c.confined_mac * k * _numel(a_out) * taps
            return DENSE, c.call + c.conv_mac * k * _numel(a_out) * (m.in_channels // m.groups) * taps
        return None  # "copies" kind: the copies must run through it


DENSE = 0
"""The state of a dense Δ in :meth:`CostModel.delta`."""


@dataclass
class BlockShapes:
    """Shapes ``(B, ...)`` inside a residual block: ``main`` inputs/outputs, the shortcut's output, the sum."""

    main: List[Tuple[int, ...]]
    total: Tuple[int, ...]


def candidate_cuts(
    chain: Sequence[Any],
    shapes: Sequence[Tuple[int, ...]],
    inner: Callable[[int], BlockShapes],
    s: int,
    name: str,
    k: int,
    costs: Costs,
    closed_form: bool = True,
) -> List[Tuple[Cut, float]]:
    """Every exact switch position for K coordinates of parameter ``name`` of stage ``s``, with its
    modelled cost (seconds), in chain order.

    Args:
        chain: the model's stages.
        shapes: ``shapes[t]``: the base input shape of stage ``t`` (``len(chain) + 1`` entries).
        inner: ``inner(t)``: the shapes inside residual stage ``t``.
        s, name: the perturbed stage and the parameter's name in it.
        k: copies per chunk.
        costs: the device's cost table.
        closed_form: the loss difference has a closed form from Δ at the logits.

    Returns:
        ``(Cut, seconds)`` pairs; a single pair when there is no choice (the parameter's layer
        itself runs on K copies of the parameter).
    """
    model = CostModel(costs, k)
    n = len(chain)
    block_shapes = {t: inner(t) for t in range(s, n) if _is_residual(chain[t])}
    suffix = [0.0] * (n + 1)  # copies through stages t.. and the loss
    suffix[n] = costs.call * (1 if closed_form else k) + costs.elementwise * k * _numel(shapes[n])
    for t in range(n - 1, s - 1, -1):
        suffix[t] = suffix[t + 1] + model.copies(chain[t], shapes[t], shapes[t + 1], _fixed(block_shapes.get(t)))
    out: List[Tuple[Cut, float]] = []

    def block_from(t: int, m0: int, state: int, spent: float, perturbed: bool) -> Optional[Tuple[int, float]]:
        """Adds the candidates inside residual stage ``t`` from main position ``m0``; returns the
        state and cost after the block (Δ through main, shortcut and post), None if Δ cannot pass."""
        block, sh = chain[t], block_shapes[t]
        layers = list(block.main)
        post = model.copies(block.post, sh.total, shapes[t + 1]) + costs.elementwise * k * _numel(sh.total)
        # the shortcut's copies: in the perturbed block its cached output serves every copy
        short = 0.0 if perturbed else model.materialise(shapes[t]) + model.copies(block.shortcut, shapes[t], sh.total)
        main_state = state
        for m in range(m0, len(layers) + 1):
            if m > m0 or perturbed:  # m0 == 0 of an entered block is the stage-input cut
                rest = sum((model.copies(layers[i], sh.main[i], sh.main[i + 1]) for i in range(m, len(layers))), 0.0)
                out.append((Cut(t, m), spent + model.materialise(sh.main[m]) + rest + short + post + suffix[t + 1]))
            if m == len(layers):
                break
            step = model.delta(layers[m], sh.main[m], sh.main[m + 1], main_state)
            if step is None:
                return None
            main_state, cost = step
            spent += cost
        if not perturbed:  # Δ of the shortcut, then the (dense) sum of the two
            if isinstance(block.shortcut, nn.Identity):
                through: Optional[Tuple[int, float]] = (state, 0.0)
            else:
                through = model.delta(block.shortcut, shapes[t], sh.total, state)
            if through is None:
                return None
            spent += through[1] + 3 * costs.elementwise * k * _numel(sh.total)
            main_state = DENSE
        step = model.delta(block.post, sh.total, shapes[t + 1], main_state)
        return None if step is None else (step[0], spent + step[1])

    def start_block(shape: Sequence[int]) -> int:
        return _numel(shape[2:]) if len(shape) > 2 else 1

    stage = chain[s]
    parts = name.split(".")
    if _is_residual(stage):
        if not (len(parts) == 3 and parts[0] == "main" and parts[1].isdigit()):
            return [(Cut(s + 1), 0.0)]  # the whole block runs on K copies of its parameter
        t0 = int(parts[1])
        if not starts_delta(list(stage.main)[t0], parts[2]):
            return [(Cut(s, t0 + 1), 0.0)]  # the layer runs on K copies of its parameter
        after = block_from(s, t0 + 1, start_block(block_shapes[s].main[t0 + 1]), 0.0, perturbed=True)
    elif starts_delta(stage, name):
        after = (start_block(shapes[s + 1]), 0.0)
    else:
        return [(Cut(s + 1), 0.0)]  # the stage runs on K copies of its parameter
    for t in range(s + 1, n):
        if after is None:
            return out
        state, spent = after
        out.append((Cut(t), spent + model.materialise(shapes[t]) + suffix[t]))
        if _is_residual(chain[t]):
            after = block_from(t, 0, state, spent, perturbed=False)
        else:
            step = model.delta(chain[t], shapes[t], shapes[t + 1], state)
            after = None if step is None else (step[0], spent + step[1])
    if after is None:
        return out
    spent = after[1]
    end = spent + costs.call + costs.delta_elementwise * k * _numel(shapes[n])
    if not closed_form:
        end += model.materialise(shapes[n]) + costs.call * k
    out.append((Cut(n), end))
    return out


def _fixed(shapes: Optional[BlockShapes]) -> Optional[Callable[[Any], BlockShapes]]:
    return None if shapes is None else (lambda m: shapes)


def choose_cut(candidates: Sequence[Tuple[Cut, float]]) -> Cut:
    """The cheapest candidate (the earliest among equals)."""
    best = min(range(len(candidates)), key=lambda i: (candidates[i][1], i))
    return candidates[best][0]
