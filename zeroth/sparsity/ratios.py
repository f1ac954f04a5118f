r"""Layer-wise ratios: how much of each Linear/Conv weight a sparse ZO step estimates.

**A ratio is the fraction of a layer's weights that is KEPT** (selected, estimated, updated
by the ZO gradient) — a number in [0, 1]. A global *sparsity* ``s`` is the fraction that is
pruned, so ratios at sparsity ``s`` satisfy ``Σ_l ratio_l · n_l = (1 − s) · Σ_l n_l`` over
the prunable weights (``n_l`` = number of entries of layer ``l``). Ratios are keyed by the
parameter's qualified name in ``model.named_parameters()`` (``"0.weight"``, ``"fc.weight"``).
Biases and BatchNorm parameters are never prunable and never appear in a ratios mapping.

ZO-GraSP (DeepZero, arXiv:2310.02025) computes them at initialisation from loss values only::

    g₀ = RGE(θ)                 g₁ = RGE(θ + μ·g₀)      (the same q directions for both)
    Hg ≈ (g₁ − g₀) / μ           score = −θ ⊙ Hg
    keep the (1 − s)·N weights of largest |score| over all Linear/Conv weights

and only the resulting per-layer kept fractions are used afterwards (random masks at those
ratios are re-drawn during training, see :mod:`zeroth.sparsity.masks`).

References:
    A. Chen et al., "DeepZero: scaling up zeroth-order optimization for deep model training",
    ICLR 2024, arXiv:2310.02025 (ZO-GraSP, its settings q = 192, μ = 5e-3, 25 samples per class).

    C. Wang, G. Zhang and R. Grosse, "Picking winning tickets before training by preserving
    gradient flow", ICLR 2020, arXiv:2002.07376 (GraSP, the first-order score −θ ⊙ Hg).
"""

from __future__ import annotations

import json
import numbers
import os
import secrets
import shutil
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from ..engine import SequentialEvaluator
from ..estimators import RGE, draw_seed
from ..optim import estimate_gradient

FORMAT = "zeroth.sparsity.ratios/1"
MEANING = "fraction of each layer's weights that is kept (selected)"


def prunable_weights(model: nn.Module) -> Dict[str, nn.Parameter]:
    """The weights of ``model``'s Linear and Conv layers that require grad, by qualified name.

    These are the only tensors pruning may thin out; biases and normalisation parameters
    are always estimated in full. A weight shared by several modules appears once, under its
    first name in ``named_parameters()``.

    Args:
        model: the module.

    Returns:
        ``{qualified name: parameter}`` of every ``nn.Linear``/``nn.Conv*d`` (transposed
        included) weight with ``requires_grad=True``, in ``model.modules()`` order.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = {id(p): n for n, p in model.named_parameters()}  # first name of shared tensors
    out: Dict[str, nn.Parameter] = {}
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and isinstance(w, nn.Parameter):
            if w.requires_grad and id(w) in names:
                out[names[id(w)]] = w
    return out


def _check_sparsity(sparsity: Any) -> float:
    # 0 <= sparsity < 1 written with numbers.Real's own < (a NaN fails sparsity < 1.0)
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, numbers.Real)
        or not (sparsity < 1.0 and not sparsity < 0.0)
    ):
        raise ValueError(f"Invalid sparsity value: {sparsity!r} (expected a number with 0 <= sparsity < 1)")
    return float(sparsity)


def check_ratios(ratios: Any, argument: str = "ratios") -> Dict[str, float]:
    """``ratios`` as a ``{name: kept fraction}`` dict of floats, each in [0, 1].

    Args:
        ratios: a mapping from parameter name to kept fraction.
        argument: the argument's name in error messages.

    Raises:
        TypeError: ``ratios`` is not a mapping, or a key is not a string.
        ValueError: a value is not a number in [0, 1].
    """
    if not isinstance(ratios, Mapping):
        raise TypeError(
            f"{argument} must be a mapping from parameter name to kept fraction, got {type(ratios).__name__}"
        )
    out = {}
    for name, r in ratios.items():
        if not isinstance(name, str):
            raise TypeError(f"{argument}: keys must be parameter names (str), got {name!r}")
        # 0 <= r <= 1 written with numbers.Real's own <= and < (a NaN fails r <= 1.0)
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not (r <= 1.0 and not r < 0.0):
            raise ValueError(f"{argument}[{name!r}]: invalid kept fraction {r!r} (expected 0 <= ratio <= 1)")
        out[name] = float(r)
    return out


def uniform_ratios(model: nn.Module, sparsity: float) -> Dict[str, float]:
    """The same kept fraction ``1 − sparsity`` for every Linear/Conv weight (the baseline).

    Raises:
        ValueError: ``sparsity`` is not a number in [0, 1).
        TypeError: ``model`` is not an ``nn.Module``.
    """
    sparsity = _check_sparsity(sparsity)
    return {name: 1.0 - sparsity for name in prunable_weights(model)}


def kept_fraction(ratios: Mapping[str, float], model: nn.Module) -> float:
    """Global kept fraction ``Σ ratio_l n_l / Σ n_l`` of ``ratios`` over the weights they name.

    Args:
        ratios: ``{name: kept fraction}``.
        model: the module the names refer to.

    Returns:
        A float in [0, 1] (0.0 for an empty mapping).

    Raises:
        ValueError: a name is not a parameter of ``model``, or a ratio is outside [0, 1].
        TypeError: ``ratios`` is not a mapping of names.
    """
    ratios = check_ratios(ratios)
    weights = dict(model.named_parameters())
    missing = sorted(set(ratios) - set(weights))
    if missing:
        raise ValueError(f"ratios: names not found in the model: {', '.join(missing)}")
    total = sum(weights[n].numel() for n in ratios)
    return sum(r * weights[n].numel() for n, r in ratios.items()) / max(total, 1)


def ratios_from_scores(scores: Mapping[str, Tensor], sparsity: float) -> Dict[str, float]:
    """Global unstructured pruning: keep the ``(1 − sparsity)`` share of entries of largest
    ``|score|`` across all layers, and return each layer's kept fraction.

    Ties are broken by position (a stable sort), so the result is deterministic.

    Args:
        scores: ``{weight name: score tensor}`` (any shapes), e.g. from :func:`grasp_scores`.
        sparsity: the global fraction pruned, in [0, 1).

    Returns:
        ``{weight name: kept fraction}`` with ``Σ ratio_l n_l = N − round(sparsity · N)``.

    Raises:
        ValueError: ``sparsity`` is not in [0, 1), ``scores`` is empty, or a score is NaN/inf.
    """
    sparsity = _check_sparsity(sparsity)
    if not scores:
        raise ValueError("scores: no layers to prune (the model has no Linear/Conv weights)")
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).abs().double().cpu() for n in names])
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("scores: contain NaN or inf (the loss was not finite near θ)")
    sizes = [scores[n].numel() for n in names]
    keep = flat.numel() - int(round(sparsity * flat.numel()))
    order = torch.sort(flat, descending=True, stable=True).indices[:keep]
    layer_of = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes))
    counts = torch.bincount(layer_of[order], minlength=len(names)).tolist()
    return {n: c / s for n, c, s in zip(names, counts, sizes)}


def grasp_scores(
    model: nn.Module,
    objective: Callable[[], Any],
    *,
    q: int = 192,
    mu: float = 5e-3,
    generator: Optional[torch.Generator] = None,
    dist: str = "gaussian",
) -> Dict[str, Tensor]:
    """ZO-GraSP scores ``−θ ⊙ Hg`` of every Linear/Conv weight, from loss values only.

    ``g₀`` and ``g₁`` are RGE estimates (``q`` directions, smoothing ``mu``) over all trainable
    parameters of ``model``, taken with the *same* directions so that their difference is a
    finite-difference Hessian-vector product and not the difference of two independent
    noises. The model (parameters and buffers) is left exactly as it was. Evaluated with the
    :class:`~zeroth.engine.SequentialEvaluator` evaluator; costs ``2(q + 1)`` loss evaluations.

    Args:
        model: the module whose weights are scored.
        objective: returns the scalar loss of ``model`` on the scoring batch (e.g. an
            :class:`~zeroth.Objective` on :func:`balanced_batch`).
        q: RGE directions (DeepZero: 192).
        mu: smoothing radius of the RGE and finite-difference step of the Hessian-vector
            product, absolute (DeepZero: 5e-3).
        generator: source of the directions (None: a fresh generator seeded from torch's global RNG).
        dist: RGE direction distribution (``"gaussian"``, ``"sphere"``, ``"rademacher"``).

    Returns:
        ``{weight name: −θ ⊙ Hg}``, each shaped like its weight.

    Raises:
        ValueError: ``model`` has no Linear/Conv weight, invalid ``q``/``mu``/``dist``.
        zeroth.errors.EvaluationError: a loss was NaN or infinite.
    """
    weights = prunable_weights(model)
    if not weights:
        raise ValueError("model: has no Linear/Conv weights to score")
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    estimator = RGE(q=q, mu=mu, dist=dist)
    evaluator = SequentialEvaluator()
    if generator is None:
        generator = torch.Generator().manual_seed(draw_seed(None))
    start = generator.get_state()
    saved = [p.detach().clone() for p in params]
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        _, g0, _ = estimate_gradient(objective, params, estimator, evaluator, generator=generator)
        generator.set_state(start)  # g₁ reuses g₀'s directions
        with torch.no_grad():
            for p, g in zip(params, g0):
                p.add_(g, alpha=mu)
        _, g1, _ = estimate_gradient(objective, params, estimator, evaluator, generator=generator)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
            for b, s in zip(model.buffers(), buffers):
                b.copy_(s)
    hg = {id(p): (b - a) / mu for p, a, b in zip(params, g0, g1)}
    return {name: -(w.detach() * hg[id(w)]) for name, w in weights.items()}


def grasp_ratios(
    model: nn.Module,
    objective: Callable[[], Any],
    sparsity: float = 0.9,
    q: int = 192,
    mu: float = 5e-3,
    *,
    generator: Optional[torch.Generator] = None,
    dist: str = "gaussian",
) -> Dict[str, float]:
    """ZO-GraSP layer-wise **kept fractions** ``{weight name: ratio}`` at global ``sparsity``.

    ``objective`` is the loss on a small class-balanced batch (DeepZero: 25 samples per
    class, see :func:`balanced_batch`), typically an :class:`~zeroth.Objective`. Costs
    ``2(q + 1)`` loss evaluations; deterministic given ``generator``. :func:`grasp_scores`
    then :func:`ratios_from_scores`.

    Args:
        model: the module to prune (its Linear/Conv weights, :func:`prunable_weights`).
        objective: returns the scalar loss on the scoring batch.
        sparsity: global fraction of those weights pruned, in [0, 1) (default 0.9).
        q: RGE directions (default 192, DeepZero's).
        mu: absolute smoothing/finite-difference step (default 5e-3, DeepZero's).
        generator: source of the directions (None: seeded from torch's global RNG).
        dist: RGE direction distribution (default ``"gaussian"``).

    Returns:
        ``{weight name: kept fraction}``, for :class:`~zeroth.sparsity.DynamicMask`.

    Raises:
        ValueError: invalid ``sparsity``, ``q``, ``mu`` or ``dist``, no prunable weight, or
            non-finite scores.
        zeroth.errors.EvaluationError: a loss was NaN or infinite.

    References:
        A. Chen et al., "DeepZero", ICLR 2024, arXiv:2310.02025 (ZO-GraSP).
    """
    sparsity = _check_sparsity(sparsity)
    scores = grasp_scores(model, objective, q=q, mu=mu, generator=generator, dist=dist)
    return ratios_from_scores(scores, sparsity)


def balanced_batch(
    inputs: Tensor, targets: Tensor, per_class: int = 25, generator: Optional[torch.Generator] = None
) -> Tuple[Tensor, Tensor]:
    """``per_class`` random samples of every class (the batch ZO-GraSP scores on).

    Args:
        inputs: ``(N, ...)`` samples.
        targets: ``(N,)`` integer class labels.
        per_class: samples drawn (without replacement) from each class present (DeepZero: 25).
        generator: source of the draws (None: torch's global RNG).

    Returns:
        ``(inputs[sel], targets[sel])`` with ``per_class · #classes`` rows, grouped by class
        in ascending class order.

    Raises:
        ValueError: ``per_class`` is not an integer ≥ 1, or a class has fewer samples.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
        raise ValueError(f"Invalid per_class value: {per_class!r} (expected an integer >= 1)")
    picks = []
    for c in torch.unique(targets).tolist():
        idx = (targets == c).nonzero().reshape(-1)
        if idx.numel() < per_class:
            raise ValueError(f"per_class: class {c} has only {idx.numel()} samples, {per_class} requested")
        perm = torch.randperm(idx.numel(), generator=generator)[:per_class].to(idx.device)
        picks.append(idx[perm])
    sel = torch.cat(picks)
    return inputs[sel], targets[sel]


def save_ratios(path: os.PathLike[str] | str, ratios: Mapping[str, float], **meta: Any) -> None:
    """Write ``ratios`` (plus JSON-serialisable ``meta``, e.g. sparsity, q, mu) to a small JSON file.

    The file holds ``{"format": "zeroth.sparsity.ratios/1", "meaning": ..., "ratios": ..., "meta": ...}``.
    It is written to a temporary file in the same folder and moved into place with
    :func:`os.replace`, so ``path`` holds either its old content or the whole new file; on any
    failure nothing is left behind.

    Raises:
        TypeError: ``ratios`` is not a mapping of names, or ``meta`` is not JSON-serialisable.
        ValueError: a ratio is outside [0, 1].
        OSError: the file cannot be written.
    """
    ratios = check_ratios(ratios)
    doc = {"format": FORMAT, "meaning": MEANING, "ratios": ratios, "meta": meta}
    text = json.dumps(doc, indent=1, sort_keys=False) + "\n"  # an unserialisable meta fails here, before any file
    target = os.fspath(path)
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: a fresh file of our own; mode 0o666 less the umask, as open(path, "w") would create it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if os.path.exists(target):
            shutil.copymode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_ratios(path: os.PathLike[str] | str) -> Dict[str, float]:
    """Read ratios written by :func:`save_ratios`.

    Returns:
        ``{name: kept fraction}`` (``meta`` is not returned).

    Raises:
        ValueError: the file is not JSON or not a ratios file (the message names ``path``),
            or a ratio is outside [0, 1].
        TypeError: its ratios are not a mapping of names.
        OSError: the file cannot be read (e.g. ``FileNotFoundError``).
    """
    with open(path, encoding="utf-8") as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"path: {os.fspath(path)!r} is not a ratios file ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"path: {os.fspath(path)!r} is not a ratios file (format {FORMAT!r} expected)")
    return check_ratios(doc.get("ratios"), argument=f"ratios in {os.fspath(path)!r}")
