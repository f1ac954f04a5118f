"""What the fast evaluators compute exactly: one rule table per layer kind, one rule per loss/target kind.

Every support decision of :class:`~zeroth.engine.FeatureReuseEvaluator` and
:class:`~zeroth.engine.BatchedEvaluator` is made here, from the model, the loss, the targets, the
parameters and the direction set, *before* anything is evaluated. A fast path either computes
what :class:`~zeroth.engine.SequentialEvaluator` (perturb, evaluate, restore) computes, to float
rounding, or declines with a :class:`Support` whose ``reason`` says why; ``evaluator="auto"``
then runs the next evaluator (ultimately SequentialEvaluator).

Layer rules (:data:`LAYER_RULES`, FeatureReuseEvaluator). A stage may take part when its forward treats
batch rows independently (K perturbed copies can then run as one batch of K·B rows; train-mode
BatchNorm is the exception, given per-copy statistics) and is deterministic. Per layer type:

========================  =================  =========================== =====================================
layer                     Δ starts locally   Δ propagates                declined when
========================  =================  =========================== =====================================
Linear                    weight, bias       yes (2-D input)             —
Conv2d                    weight, bias (*)   yes (zeros padding)         —
Conv1d, Conv3d,           —                  no: copies run as a batch   —
ConvTranspose1/2/3d
BatchNorm1/2/3d           weight, bias       yes (train: per-copy stats) —
LayerNorm, GroupNorm      —                  no: copies run as a batch   —
elementwise activations   —                  yes: σ(a + Δ) − σ(a)        —
MaxPool2d, AvgPool2d,     —                  yes                         MaxPool with ``return_indices``
adaptive 2-D pools
1-D/3-D pools, Upsample   —                  no: copies run as a batch   —
Flatten, Unflatten        —                  Flatten(1, -1) yes          they touch dimension 0
Identity, Dropout         —                  yes                         Dropout active (train, p > 0)
Softmax, LogSoftmax       —                  no: copies run as a batch   ``dim`` unset or 0
Embedding                 —                  no: copies run as a batch   —
nn.Sequential/zo_rowwise  (children)         (children)                  a child is declined
zo_residual blocks        main.* like above  yes: main + shortcut, post  a child is declined
========================  =================  =========================== =====================================

(*) groups = 1 and a numeric padding; other Conv2d parameters re-run the stage on K copies.
Any other layer is declined, and so is a known layer whose class overrides ``forward``, a
parametrized layer (``torch.nn.utils.parametrize``: spectral_norm, weight_norm, ...) and any
module with forward hooks (they may change outputs or state). Layers with ``inplace=True`` are
supported: the cached pass never lets them overwrite a cached activation.

Model-level rules (FeatureReuseEvaluator): an :class:`~zeroth.Objective` with a tensor input; CGE
coordinates; every trained parameter owned by exactly one place in the chain (a parameter
used twice — ``nn.Sequential(lin, act, lin)``, tied embeddings — is declined); parameters,
buffers and input in float32 or float64 (the kernels' dtypes).

Loss rules (:func:`cross_entropy_closed_form`): the closed-form cross-entropy difference is
used only for ``F.cross_entropy`` / a default ``nn.CrossEntropyLoss`` on ``(B, C)`` logits with
integer class targets of shape ``(B,)``, all in ``[0, C)``. Class-probability targets,
``ignore_index`` entries, out-of-range classes, label smoothing, class weights and other
reductions take the per-copy path (the loss evaluated on each copy, exact for any loss).

BatchedEvaluator rules (:func:`batched_support`): an Objective with a tensor input, CGE or random
directions, every trained parameter reachable by name in the model, no external program in the
model (a :class:`~zeroth.BlackBox` calls it with concrete arrays, which vmap cannot give: it
would be called, then fail — a cost a simulator should not pay). Random ops in the forward
are allowed (``vmap(randomness="same")`` draws what the unbatched forward draws from the same
RNG state). A forward that changes buffers other than BatchNorm's running statistics, or that
vmap cannot trace (``.item()``, data-dependent branches), is found at run time:
:class:`Unsupported` is raised with everything restored, and ``auto`` moves on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils import parametrize

from .base import YES, Support, Unsupported  # noqa: F401  (re-exported: the rules' vocabulary)


# -- layers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerRule:
    """How FeatureReuseEvaluator treats one layer type.

    Attributes:
        kind: the propagation kind (``"linear"``, ``"conv2d"``, ``"batchnorm"``, ``"elementwise"``,
            ``"pool"``, ``"maxpool"``, ``"flatten"``, ``"identity"``, or ``"copies"``: the K copies
            are materialised and run through the layer as one batch).
        starts: parameter names whose change is built locally as a Δ of the layer's output.
        check: returns a reason when a particular instance is not supported, else None.
    """

    kind: str
    starts: Tuple[str, ...] = ()
    check: Optional[Callable[[nn.Module], Optional[str]]] = None


# A rule's check sees instances of the rule's own type only (:func:`rule_for`), hence the casts below.
def _dropout_check(m: nn.Module) -> Optional[str]:
    p = cast(_DropoutNd, m).p
    if m.training and p > 0:
        return f"{type(m).__name__} is active (train mode, p={p}): its random mask cannot be shared with copies"
    return None


def _flatten_check(m: nn.Module) -> Optional[str]:
    start_dim = cast(nn.Flatten, m).start_dim
    return f"Flatten(start_dim={start_dim}) may merge the batch dimension" if start_dim <= 0 else None


def _batch_dim_check(attr: str) -> Callable[[nn.Module], Optional[str]]:
    def check(m: nn.Module) -> Optional[str]:
        value = getattr(m, attr)
        if value is None or value == 0:
            return f"{type(m).__name__}({attr}={value}) acts across the batch dimension"
        return None

    return check


def _maxpool_check(m: nn.Module) -> Optional[str]:
    return "MaxPool with return_indices=True" if getattr(m, "return_indices", False) else None


_ELEMENTWISE: Tuple[Type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LogSigmoid,
    nn.Tanhshrink,
    nn.Softsign,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Threshold,
    nn.PReLU,
)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

LAYER_RULES: Dict[Type[nn.Module], LayerRule] = {
    **{t: LayerRule("elementwise") for t in _ELEMENTWISE if t is not nn.PReLU},
    nn.PReLU: LayerRule("copies"),  # per-channel slope (a parameter): copies
    nn.Linear: LayerRule("linear", ("weight", "bias")),
    nn.Conv2d: LayerRule("conv2d", ("weight", "bias")),
    nn.Conv1d: LayerRule("copies"),
    nn.Conv3d: LayerRule("copies"),
    nn.ConvTranspose1d: LayerRule("copies"),
    nn.ConvTranspose2d: LayerRule("copies"),
    nn.ConvTranspose3d: LayerRule("copies"),
    nn.BatchNorm1d: LayerRule("batchnorm", ("weight", "bias")),
    nn.BatchNorm2d: LayerRule("batchnorm", ("weight", "bias")),
    nn.BatchNorm3d: LayerRule("batchnorm", ("weight", "bias")),
    nn.LayerNorm: LayerRule("copies"),
    nn.GroupNorm: LayerRule("copies"),
    nn.InstanceNorm1d: LayerRule("copies"),
    nn.InstanceNorm2d: LayerRule("copies"),
    nn.InstanceNorm3d: LayerRule("copies"),
    nn.MaxPool2d: LayerRule("maxpool", check=_maxpool_check),
    nn.AdaptiveMaxPool2d: LayerRule("maxpool", check=_maxpool_check),
    nn.AvgPool2d: LayerRule("pool"),
    nn.AdaptiveAvgPool2d: LayerRule("pool"),
    nn.MaxPool1d: LayerRule("copies", check=_maxpool_check),
    nn.MaxPool3d: LayerRule("copies", check=_maxpool_check),
    nn.AdaptiveMaxPool1d: LayerRule("copies", check=_maxpool_check),
    nn.AvgPool1d: LayerRule("copies"),
    nn.AvgPool3d: LayerRule("copies"),
    nn.AdaptiveAvgPool1d: LayerRule("copies"),
    nn.AdaptiveAvgPool3d: LayerRule("copies"),
    nn.Upsample: LayerRule("copies"),
    nn.Embedding: LayerRule("copies"),  # a first stage: its weight's coordinates re-run it on K copies
    nn.Flatten: LayerRule("flatten", check=_flatten_check),
    nn.Unflatten: LayerRule(
        "copies", check=lambda m: "Unflatten(dim=0) splits the batch dimension" if m.dim == 0 else None
    ),
    nn.Identity: LayerRule("identity"),
    nn.Softmax: LayerRule("copies", check=_batch_dim_check("dim")),
    nn.LogSoftmax: LayerRule("copies", check=_batch_dim_check("dim")),
    **{t: LayerRule("identity", check=_dropout_check) for t in _DROPOUT},
}


def rule_for(module: nn.Module) -> Optional[LayerRule]:
    """The rule of ``module``'s type, or of the known base class whose ``forward`` it uses unchanged."""
    cls = type(module)
    if cls in LAYER_RULES:
        return LAYER_RULES[cls]
    for base in cls.__mro__[1:]:
        if base in LAYER_RULES:
            return LAYER_RULES[base] if cls.forward is base.forward else None
    return None


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or getattr(module, "_backward_hooks", None))


def global_hooks() -> bool:
    """True when global module forward hooks are registered (they may change any output)."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


def _owner(cls: type, attr: str) -> type:
    """The class of ``cls``'s MRO that defines ``attr``."""
    return next(c for c in cls.__mro__ if attr in c.__dict__)


def chain_support(model: nn.Module) -> Support:
    """Whether ``model``'s forward *is* its stage chain (:func:`~.stages.stages`), which
    FeatureReuseEvaluator runs in place of the forward.

    Declined: forward hooks on the model or on a container the chain flattens; an
    ``nn.Sequential`` (at any level the chain flattens) whose class overrides ``forward``; a
    model whose class overrides ``forward`` below the class that declares ``zo_stages`` (a
    subclass adding input normalisation, say). A class that declares both but inconsistently is
    caught at run time: the chain's loss must equal the model's own forward's (to rounding).
    """
    from .stages import stages

    containers: list = []
    stages(model, containers)
    for c in containers:
        name = type(c).__name__
        if _has_hooks(c):
            return Support.no(f"{name} (the model or a container of its stages) has forward hooks")
        if callable(getattr(c, "zo_stages", None)):
            forward, declared = _owner(type(c), "forward"), _owner(type(c), "zo_stages")
            if forward is not declared and issubclass(forward, declared):
                return Support.no(f"{name} overrides forward below {declared.__name__}, which declares zo_stages()")
        elif type(c).forward is not nn.Sequential.forward:
            return Support.no(f"{name} overrides nn.Sequential.forward: its forward is not the chain of its children")
    return YES


def layer_support(module: nn.Module) -> Support:
    """Whether FeatureReuseEvaluator can run ``module`` as a stage (or inside one) exactly."""
    name = type(module).__name__
    if parametrize.is_parametrized(module):
        return Support.no(f"{name} is parametrized (torch.nn.utils.parametrize: spectral_norm, weight_norm, ...)")
    if _has_hooks(module):
        return Support.no(
            f"{name} has forward hooks (e.g. the old spectral_norm/weight_norm), which may change outputs"
        )
    rule = rule_for(module)
    if rule is not None:
        reason = rule.check(module) if rule.check is not None else None
        return Support.no(reason) if reason else YES
    composite = isinstance(module, nn.Sequential) or getattr(module, "zo_rowwise", False)
    if composite:
        for child in module.children():
            sub = layer_support(child)
            if not sub:
                return sub
        if getattr(module, "zo_residual", False) and not isinstance(getattr(module, "main", None), nn.Sequential):
            return Support.no(f"{name} declares zo_residual without an nn.Sequential `main`")
        return YES
    if type(module).forward is not nn.Module.forward and any(isinstance(module, t) for t in LAYER_RULES):
        return Support.no(f"{name} overrides the forward of a known layer")
    return Support.no(f"{name} is not a layer FeatureReuseEvaluator knows (see zeroth.engine.rules.LAYER_RULES)")


def starts_delta(stage: nn.Module, name: str) -> bool:
    """True when FeatureReuseEvaluator builds the change of ``stage``'s parameter ``name`` locally (table)."""
    rule = rule_for(stage)
    return rule is not None and name in rule.starts


# -- objectives ---------------------------------------------------------------------------
def classic_objective(objective: Any) -> Support:
    """An :class:`~zeroth.Objective` computing ``loss_fn(model(inputs), targets)`` with a tensor input."""
    from ..objective import Objective

    if not isinstance(objective, Objective):
        return Support.no("a plain closure (use zeroth.Objective(model, loss_fn, inputs, targets) for fast paths)")
    if not isinstance(objective.inputs, Tensor):
        return Support.no(f"the Objective's inputs are a {type(objective.inputs).__name__}, not a tensor")
    if not getattr(objective, "standard_form", True):
        return Support.no("the Objective reads its loss from the model output (not loss_fn(model(inputs), targets))")
    return YES


def external_programs(model: nn.Module) -> Sequence[str]:
    """Names of the submodules of ``model`` that call an external program (:class:`~zeroth.BlackBox`)."""
    from ..blackbox import BlackBox

    return [name or type(model).__name__ for name, m in model.named_modules() if isinstance(m, BlackBox)]


def batched_support(objective: Any, dirs: Any = None, params: Optional[Sequence[Tensor]] = None) -> Support:
    """Whether :class:`~zeroth.engine.BatchedEvaluator` computes ``dirs`` of ``params`` on ``objective``
    (the static rules of the module doc; buffer changes and untraceable forwards are found while
    evaluating)."""
    from .stages import owns

    form = classic_objective(objective)
    if not form:
        return form
    if dirs is not None and not callable(getattr(dirs, "perturbed_stack", None)):
        return Support.no(f"{type(dirs).__name__} declares no perturbed_stack")
    programs = external_programs(objective.model)
    if programs:
        return Support.no(f"{', '.join(programs[:3])} calls an external program (a BlackBox), which vmap cannot batch")
    if params is not None and not owns([objective.model], params):
        return Support.no("a trained parameter is not a parameter of the objective's model")
    return YES


# -- parameters ---------------------------------------------------------------------------
FAST_DTYPES = (torch.float32, torch.float64)
"""Parameter/activation dtypes the difference kernels compute in."""


def shared_parameters(modules: Sequence[nn.Module]) -> Dict[int, int]:
    """``id(param) -> number of places`` for parameters registered in more than one place in ``modules``."""
    count: Dict[int, int] = {}
    for m in modules:
        for _, p in m.named_parameters(remove_duplicate=False):
            count[id(p)] = count.get(id(p), 0) + 1
    return {k: v for k, v in count.items() if v > 1}


def dtype_support(model: nn.Module, inputs: Tensor) -> Support:
    """Parameters, floating buffers and input in float32/float64 (the kernels' dtypes)."""
    for what, t in (
        [("input", inputs)]
        + [(n, p) for n, p in model.named_parameters()]
        + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    ):
        if t.is_floating_point() and t.dtype not in FAST_DTYPES:
            return Support.no(f"{what} is {t.dtype}; the difference kernels compute in float32/float64")
    return YES


# -- losses and targets ---------------------------------------------------------------------
def is_plain_cross_entropy(loss_fn: Any) -> bool:
    """True for ``F.cross_entropy`` or an ``nn.CrossEntropyLoss`` with default options."""
    if loss_fn is F.cross_entropy:
        return True
    if type(loss_fn) is nn.CrossEntropyLoss:
        return (
            loss_fn.weight is None
            and loss_fn.reduction == "mean"
            and loss_fn.label_smoothing == 0.0
            and loss_fn.ignore_index == -100
            and not _has_hooks(loss_fn)
        )
    return False


def cross_entropy_closed_form(loss_fn: Any, logits: Tensor, targets: Any) -> Support:
    """Whether ``loss_fn(logits, targets)`` is the mean cross-entropy the closed form computes.

    Needs a plain cross-entropy (:func:`is_plain_cross_entropy`), logits ``(B, C)`` and integer class
    targets ``(B,)`` all in ``[0, C)`` (no ``ignore_index`` entry, no out-of-range class).
    """
    if not is_plain_cross_entropy(loss_fn):
        return Support.no("the loss is not a plain mean cross-entropy")
    if logits.dim() != 2:
        return Support.no(f"logits of shape {tuple(logits.shape)}, not (B, C)")
    if not isinstance(targets, Tensor) or targets.dtype not in (
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
    ):
        return Support.no("targets are not integer class indices (class probabilities?)")
    if targets.shape != logits.shape[:1]:
        return Support.no(f"targets of shape {tuple(targets.shape)} for logits {tuple(logits.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
        return Support.no("targets hold ignore_index entries or classes outside [0, C)")
    return YES
