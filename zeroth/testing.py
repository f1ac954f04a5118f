"""Conformance checks of evaluators against the perturb–evaluate–restore reference.

:data:`ZOO` is a collection of small models, losses and targets of the kinds users bring (shared
and tied weights, odd targets, random forwards, normalisation layers, attention, recurrent
layers, every convolution and pooling flavour, parametrizations, data-dependent forwards). For
each case, :func:`check` computes a CGE (forward and central) and an RGE gradient with every
evaluator and compares it with :class:`~zeroth.engine.SequentialEvaluator`'s, in float64. A fast path
must either agree (``exact``) or decline (``declined``: ``supports`` says no, or it raised
:class:`~zeroth.engine.rules.Unsupported`/another error with parameters and buffers restored);
:class:`~zeroth.engine.AutoEvaluator` must always agree and reports the path it took.

``python -m bench.conformance`` prints the table; ``tests/engine/test_conformance.py`` asserts
it against the expected-support table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import AutoEvaluator, BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator
from .estimators import CGE, RGE, Estimator
from .objective import Objective
from .optim import estimate_gradient


# -- building blocks ----------------------------------------------------------------------
class FunctionalDropout(nn.Module):
    """``F.dropout`` called in forward (no Dropout module to switch off)."""

    def __init__(self, p: float = 0.2):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """``F.dropout(x, p)`` in train mode, ``x`` in eval mode."""
        return F.dropout(x, self.p, self.training)


class GaussianNoise(nn.Module):
    """Noise injection: ``x + σ·ε`` in train mode."""

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = sigma

    def forward(self, x: Tensor) -> Tensor:
        """``x + σ·ε`` with ``ε ~ N(0, I)`` from torch's global RNG (train mode), else ``x``."""
        return x + self.sigma * torch.randn_like(x) if self.training else x


class StochasticDepth(nn.Module):
    """``x + f(x)``, the branch dropped with probability ``p`` in train mode (one draw per batch)."""

    def __init__(self, width: int, p: float = 0.5):
        super().__init__()
        self.f = nn.Linear(width, width)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (branch dropped) or ``x + tanh(f(x))``; ``x`` is ``(B, width)``."""
        if self.training and bool(torch.rand(()) < self.p):
            return x
        return x + torch.tanh(self.f(x))


class ItemBranch(nn.Module):
    """A forward that calls ``.item()`` and branches on the data."""

    def __init__(self, width: int):
        super().__init__()
        self.f = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """``relu(f(x))`` if the mean of ``f(x)`` is positive, else ``tanh(f(x))``."""
        h = self.f(x)
        return torch.relu(h) if h.mean().item() > 0 else torch.tanh(h)


class Attention(nn.Module):
    """Self-attention over a short sequence: ``(B, L·E)`` -> ``(B, L·E)``."""

    def __init__(self, length: int = 3, embed: int = 4, heads: int = 2):
        super().__init__()
        self.length, self.embed = length, embed
        self.mha = nn.MultiheadAttention(embed, heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention of the ``L`` tokens of each row: ``(B, L·E)`` -> ``(B, L·E)``."""
        s = x.reshape(x.shape[0], self.length, self.embed)  # (B, L, E)
        out, _ = self.mha(s, s, s, need_weights=False)
        return out.reshape(x.shape[0], -1)


class Recurrent(nn.Module):
    """An LSTM or GRU over a short sequence, last hidden state: ``(B, L·I)`` -> ``(B, H)``."""

    def __init__(self, cell: str = "lstm", length: int = 3, inputs: int = 4, hidden: int = 5):
        super().__init__()
        self.length, self.inputs = length, inputs
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(inputs, hidden, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        """The last hidden state ``(B, H)`` for ``(B, L·I)`` inputs."""
        out, _ = self.rnn(x.reshape(x.shape[0], self.length, self.inputs))  # (B, L, H)
        return out[:, -1]


class TiedLM(nn.Module):
    """Embedding → tanh → LM head whose weight *is* the embedding's (tied), mean over positions."""

    def __init__(self, vocab: int = 7, dim: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        """Mean logits over positions ``(B, vocab)`` for int64 ``tokens`` of shape ``(B, L)``."""
        return self.head(torch.tanh(self.embed(tokens))).mean(1)  # (B, vocab)


class DoubledLinear(nn.Linear):
    """A Linear subclass that overrides forward (a fast path must not treat it as a Linear)."""

    def forward(self, x: Tensor) -> Tensor:
        """``2 · (x Wᵀ + b)``."""
        return 2.0 * super().forward(x)


def _tied_pair() -> nn.Module:
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    b.weight = a.weight
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), a, nn.Tanh(), b, nn.Linear(6, 3))


def _same_twice() -> nn.Module:
    lin = nn.Linear(4, 4)
    return nn.Sequential(lin, nn.Tanh(), lin)


def _small_resnet() -> nn.Module:
    from .models.resnet import basic_block

    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        basic_block(4, 4, 1),
        basic_block(4, 6, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def _spectral() -> nn.Module:
    return nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(6, 5)), nn.Tanh(), nn.Linear(5, 3))


def _weight_norm() -> nn.Module:
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(6, 5)), nn.Tanh(), nn.Linear(5, 3))


def _frozen() -> nn.Module:
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    m[0].weight.requires_grad_(False)
    return m


def _channels_last() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 3)
    ).to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; torch's overloads omit it


# -- targets --------------------------------------------------------------------------------
def class_indices(b: int, c: int, g: torch.Generator) -> Tensor:
    """``(b,)`` int64 class labels in ``[0, c)`` drawn from ``g``."""
    return torch.randint(0, c, (b,), generator=g)


def with_ignored(b: int, c: int, g: torch.Generator) -> Tensor:
    """Class labels with every third one set to ``-100`` (cross-entropy's default ``ignore_index``)."""
    t = class_indices(b, c, g)
    t[::3] = -100
    return t


def probabilities(b: int, c: int, g: torch.Generator) -> Tensor:
    """``(b, c)`` float64 class probabilities (softmax of Gaussian logits): soft targets."""
    return torch.softmax(torch.randn(b, c, generator=g, dtype=torch.float64), dim=1)


def one_hot(b: int, c: int, g: torch.Generator) -> Tensor:
    """``(b, c)`` float64 one-hot rows of random classes (regression-style targets)."""
    return F.one_hot(class_indices(b, c, g), c).to(torch.float64)


# -- the zoo --------------------------------------------------------------------------------
@dataclass
class Case:
    """A model (built in float64), its loss, an input shape and a target maker.

    ``input``: the shape of one input row, or ``("tokens", L, vocab)`` for integer tokens.
    ``classes``: the model's output width (targets are made for it). ``train``: the mode.
    ``per_tensor``: coordinates sampled per parameter tensor (None: all of them); 8 of a Linear(5, 3)
    head's 15 weights is over half, so the closed-form head table runs, as in a full gradient.
    ``targets``: ``targets(batch, classes, generator) -> Tensor``, e.g. :func:`class_indices`.
    """

    make: Callable[[], nn.Module]
    loss: Any
    input: Tuple[Any, ...]
    classes: int = 3
    targets: Callable[[int, int, torch.Generator], Tensor] = class_indices
    train: bool = True
    per_tensor: Optional[int] = 8


def _seq(*layers: nn.Module) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(*layers)


def _mlp(*middle: nn.Module, width: int = 5, classes: int = 3) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(nn.Linear(6, width), *middle, nn.Linear(width, classes))


def _conv(*layers: nn.Module, flat: int, classes: int = 3) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, classes))


CE = F.cross_entropy

ZOO: Dict[str, Case] = {
    "mlp": Case(_mlp(nn.ReLU()), CE, (6,), per_tensor=None),
    "mlp_inplace_relu": Case(_mlp(nn.ReLU(inplace=True)), CE, (6,)),
    "shared_module_twice": Case(_same_twice, CE, (4,), classes=4),
    "tied_two_modules": Case(_tied_pair, CE, (12,)),
    "tied_lm_head": Case(TiedLM, CE, ("tokens", 3, 7), classes=7),
    "ce_probability_targets": Case(_mlp(nn.Tanh()), CE, (6,), targets=probabilities, per_tensor=None),
    "ce_ignore_index": Case(_mlp(nn.Tanh()), CE, (6,), targets=with_ignored),
    "ce_label_smoothing": Case(_mlp(nn.Tanh()), nn.CrossEntropyLoss(label_smoothing=0.1), (6,)),
    "ce_class_weights": Case(
        _mlp(nn.Tanh()), nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)), (6,)
    ),
    "ce_sum": Case(_mlp(nn.Tanh()), nn.CrossEntropyLoss(reduction="sum"), (6,)),
    "mse": Case(_mlp(nn.GELU()), F.mse_loss, (6,), targets=one_hot),
    "l1": Case(_mlp(nn.SiLU()), F.l1_loss, (6,), targets=one_hot),
    "bce_with_logits": Case(_mlp(nn.ELU()), F.binary_cross_entropy_with_logits, (6,), targets=one_hot),
    "nll_log_softmax": Case(
        lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.LogSoftmax(dim=1)), F.nll_loss, (6,)
    ),
    "functional_dropout": Case(_mlp(FunctionalDropout(0.3)), CE, (6,)),
    "noise_injection": Case(_mlp(GaussianNoise(0.1)), CE, (6,)),
    "rrelu": Case(_mlp(nn.RReLU()), CE, (6,)),
    "stochastic_depth": Case(lambda: nn.Sequential(nn.Linear(6, 5), StochasticDepth(5), nn.Linear(5, 3)), CE, (6,)),
    "dropout_module_train": Case(_mlp(nn.ReLU(), nn.Dropout(0.3)), CE, (6,)),
    "layernorm": Case(_mlp(nn.LayerNorm(5), nn.ReLU()), CE, (6,)),
    "groupnorm": Case(_conv(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), flat=16), CE, (2, 4, 4)),
    "instancenorm": Case(
        _conv(nn.Conv2d(2, 4, 3), nn.InstanceNorm2d(4, affine=True), nn.ReLU(), flat=16), CE, (2, 4, 4)
    ),
    "batchnorm_train": Case(_conv(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), flat=16), CE, (2, 4, 4)),
    "batchnorm_eval": Case(
        _conv(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), flat=16), CE, (2, 4, 4), train=False
    ),
    "batchnorm1d_mlp": Case(_mlp(nn.BatchNorm1d(5), nn.SiLU()), nn.CrossEntropyLoss(), (6,)),
    "multihead_attention": Case(lambda: nn.Sequential(Attention(), nn.Linear(12, 3)), CE, (12,)),
    "transformer_encoder_layer": Case(
        lambda: nn.Sequential(
            nn.Unflatten(1, (3, 4)),
            nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0, batch_first=True),
            nn.Flatten(),
            nn.Linear(12, 3),
        ),
        CE,
        (12,),
    ),
    "embedding": Case(lambda: nn.Sequential(nn.Embedding(7, 3), nn.Flatten(), nn.Linear(9, 3)), CE, ("tokens", 3, 7)),
    "lstm": Case(lambda: nn.Sequential(Recurrent("lstm"), nn.Linear(5, 3)), CE, (12,)),
    "gru": Case(lambda: nn.Sequential(Recurrent("gru"), nn.Linear(5, 3)), CE, (12,)),
    "conv1d": Case(_conv(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.MaxPool1d(2), flat=6), CE, (2, 6)),
    "conv3d": Case(_conv(nn.Conv3d(1, 2, 2), nn.ReLU(), flat=16), CE, (1, 3, 3, 3)),
    "conv_transpose2d": Case(_conv(nn.ConvTranspose2d(2, 2, 2, stride=2), nn.ReLU(), flat=32), CE, (2, 2, 2)),
    "grouped_conv": Case(_conv(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), flat=16), CE, (4, 4, 4)),
    "depthwise_conv": Case(
        _conv(nn.Conv2d(3, 3, 3, groups=3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1), flat=32), CE, (3, 4, 4)
    ),
    "dilated_conv": Case(_conv(nn.Conv2d(2, 3, 3, dilation=2, padding=2), nn.ReLU(), flat=48), CE, (2, 4, 4)),
    "pooling_variants": Case(
        _conv(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 1),
            nn.AvgPool2d(2, stride=1),
            nn.AdaptiveMaxPool2d(2),
            flat=16,
        ),
        CE,
        (2, 6, 6),
    ),
    "upsample": Case(
        _conv(
            nn.Conv2d(2, 2, 3, padding=1), nn.Upsample(scale_factor=2), nn.ReLU(), nn.Conv2d(2, 1, 3, stride=2), flat=9
        ),
        CE,
        (2, 4, 4),
    ),
    "channels_last": Case(_channels_last, CE, (2, 4, 4)),
    "frozen_parameters": Case(_frozen, CE, (6,)),
    "spectral_norm": Case(_spectral, CE, (6,)),
    "weight_norm": Case(_weight_norm, CE, (6,)),
    "softmax_over_batch": Case(_mlp(nn.Softmax(dim=0)), CE, (6,)),
    "overridden_forward": Case(lambda: nn.Sequential(DoubledLinear(6, 5), nn.Tanh(), nn.Linear(5, 3)), CE, (6,)),
    "item_in_forward": Case(lambda: nn.Sequential(ItemBranch(6), nn.Linear(6, 3)), CE, (6,)),
    "residual_blocks": Case(_small_resnet, CE, (2, 6, 6)),
}
"""The conformance zoo: name -> :class:`Case`."""


def build(name: str, batch: int = 5, seed: int = 0, dtype: torch.dtype = torch.float64):
    """``(model, objective, params, masks)`` for zoo case ``name``: model in ``dtype``, fixed seed.

    Seeds torch's global RNG with ``seed`` (the model's initialisation) and draws inputs,
    targets and masks from a generator seeded with ``seed + 1``.

    Args:
        name: a key of :data:`ZOO`.
        batch: rows of the input batch.
        seed: the seed.
        dtype: dtype of the model and of floating inputs/targets.

    Returns:
        The model, its :class:`~zeroth.Objective` on the batch, its trainable parameters, and
        per parameter ``per_tensor`` random flat indices (or None).

    Raises:
        KeyError: ``name`` is not a case of the zoo.
    """
    case = ZOO[name]
    torch.manual_seed(seed)
    model = case.make().to(dtype)
    model.train(case.train)
    g = torch.Generator().manual_seed(seed + 1)
    if case.input[0] == "tokens":
        x = torch.randint(0, case.input[2], (batch, case.input[1]), generator=g)
    else:
        x = torch.rand((batch,) + tuple(case.input), generator=g, dtype=torch.float64).to(dtype)
        if name == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    y = case.targets(batch, case.classes, g)
    if y.is_floating_point():
        y = y.to(dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    masks = None
    if case.per_tensor is not None:
        masks = [torch.randperm(p.numel(), generator=g)[: case.per_tensor] for p in params]
    return model, Objective(model, case.loss, x, y), params, masks


ESTIMATORS: Dict[str, Callable[[], Estimator]] = {
    "cge_forward": lambda: CGE(mu=1e-4),
    "cge_central": lambda: CGE(mu=1e-4, scheme="central"),
    "rge": lambda: RGE(q=3, mu=1e-4),
}
"""The estimators every case is checked with (float64: μ = 1e-4 keeps rounding far below 1e-6)."""


@dataclass
class Outcome:
    """What one evaluator did on one case.

    Attributes:
        status: ``"exact"`` (agrees with SequentialEvaluator to 1e-6), ``"declined"`` (``supports`` said
            no, or it raised with parameters and buffers intact) or ``"WRONG"`` (disagrees: a bug).
        error: the largest gradient difference from SequentialEvaluator relative to SequentialEvaluator's largest entry.
        path: the evaluator that produced the result (for AutoEvaluator, the one it chose).
        reason: why a fast path declined.
    """

    status: str
    error: float = 0.0
    path: str = ""
    reason: str = ""


def _snapshot(model: nn.Module) -> List[Tensor]:
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def _unchanged(model: nn.Module, snap: List[Tensor]) -> bool:
    now = list(model.parameters()) + list(model.buffers())
    return all(torch.equal(a, b) for a, b in zip(now, snap))


def check(name: str, estimator: str) -> Dict[str, Outcome]:
    """Every evaluator on case ``name`` with estimator ``estimator`` (a key of :data:`ESTIMATORS`).

    Each evaluator starts from the same parameters, buffers and RNG state as the reference run.
    Seeds torch's global RNG (via :func:`build`) and leaves it as the last run left it.

    Returns:
        ``{"FeatureReuseEvaluator": Outcome, "BatchedEvaluator": Outcome, "auto": Outcome}``.

    Raises:
        AssertionError: an evaluator raised and left a parameter or buffer changed.
        KeyError: an unknown case or estimator name.
    """
    model, obj, params, masks = build(name)
    start = _snapshot(model)
    rng = torch.get_rng_state()

    def run(ev):
        for t, v in zip(list(model.parameters()) + list(model.buffers()), start):
            with torch.no_grad():
                t.copy_(v)
        torch.set_rng_state(rng)
        return estimate_gradient(
            obj, params, ESTIMATORS[estimator](), ev, masks=masks, generator=torch.Generator().manual_seed(7)
        )

    _, ref, _ = run(SequentialEvaluator())
    scale = max(float(g.abs().max()) for g in ref) or 1.0
    out: Dict[str, Outcome] = {}
    for label, ev in (
        ("FeatureReuseEvaluator", FeatureReuseEvaluator()),
        ("BatchedEvaluator", BatchedEvaluator(chunk_size=4)),
        ("auto", AutoEvaluator()),
    ):
        support = ev.supports(obj, ESTIMATORS[estimator]().directions(params, masks=masks), params)
        if label != "auto" and not support:
            out[label] = Outcome("declined", reason=support.reason)
            continue
        try:
            _, got, _ = run(ev)
        except Exception as err:  # noqa: BLE001 - a fast path may decline by raising; state must be intact
            assert _unchanged(model, start), f"{label} changed parameters or buffers of {name} when it failed"
            out[label] = Outcome("declined", reason=f"{type(err).__name__}: {err}"[:200])
            continue
        rel_err = max(float((a - b).abs().max()) for a, b in zip(got, ref)) / scale
        path = type(ev.last).__name__ if isinstance(ev, AutoEvaluator) else label
        out[label] = Outcome("exact" if rel_err <= 1e-6 else "WRONG", rel_err, path)
    return out
