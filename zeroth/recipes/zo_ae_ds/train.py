"""The three trainings of ZO-AE-DS: the owner's classifier (stand-in), the AE, the denoiser.

``train_denoiser`` is the recipe's core. With ``mode="zo"`` the classifier is reachable only
through a :class:`~zeroth.blackbox.BlackBox` around ``f∘Dec`` (``through_ae=True``, ZO-AE-DS:
the estimate runs over the ``d_z`` latent coordinates) or around ``f`` alone
(``through_ae=False``, ZO-DS: over the pixels); the denoiser (and encoder) get ordinary
autograd gradients behind the black box's ZO vector–Jacobian product. With ``mode="fo"`` the
classifier is white-box (the FO-DS / FO-AE-DS reference rows). The loss is the cross-entropy
of the classifier on ``D(x + δ)`` (through the AE or not) against the classifier's own
prediction on the clean ``x`` (Salman et al.'s "classification" objective, as in the paper).

Every loop shows a tqdm bar (``progress=False`` silences it), writes a checkpoint after
each epoch when given a path (atomically: a file is always a complete epoch) and, with
``resume=True``, continues from it; the batch order and the noise come from one seeded
generator saved in the checkpoint, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._optional import require
from ...blackbox import BlackBox, batched
from ...blackbox.program import check_count
from ...data import batches
from ...estimators import CGE
from ._checks import positive
from .queries import QueryCounter

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class TrainLog:
    """What one training did: per-epoch mean loss, steps, wall time and classifier queries.

    Attributes:
        losses: mean training loss of each epoch.
        steps: optimiser steps taken.
        seconds: wall time of the epochs (resuming not included).
        queries_per_step: images sent to the classifier by the last step.
        queries: all images sent to the classifier (pseudo-labels included).
    """

    losses: List[float] = field(default_factory=list)  # mean training loss of each epoch
    steps: int = 0
    seconds: float = 0.0  # wall time of the epochs (not of resuming)
    queries_per_step: int = 0  # images sent to the classifier by the last step
    queries: int = 0  # all images sent (pseudo-labels included)

    @property
    def epochs(self) -> int:
        """Epochs completed."""
        return len(self.losses)


class _Stateful:
    """Adapter giving ``state_dict``/``load_state_dict`` to a getter/setter pair."""

    def __init__(self, get: Callable[[], Any], set: Callable[[Any], object]):
        """Keep the two functions."""
        self.state_dict, self.load_state_dict = get, set


def _generator_state(g: torch.Generator) -> _Stateful:
    """A generator as a checkpointable object."""
    return _Stateful(g.get_state, g.set_state)


@contextlib.contextmanager
def _frozen(*modules: Optional[nn.Module]) -> Iterator[None]:
    """Parameters of ``modules`` with ``requires_grad=False`` inside the block, restored after."""
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _modes(train: List[Any], evaluate: List[Any]) -> Iterator[None]:
    """``train`` modules in train mode, ``evaluate`` ones in eval mode; the old modes restored after."""
    mods = [m for m in train + evaluate if isinstance(m, nn.Module)]
    old = [m.training for m in mods]
    for m in mods:
        m.train(any(m is t for t in train))
    try:
        yield
    finally:
        for m, flag in zip(mods, old):
            m.train(flag)


def _check_images(name: str, x: Any) -> Tensor:
    """``x`` as a floating ``(N, C, H, W)`` tensor, or a ValueError naming it."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        got = f"shape {tuple(x.shape)} dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor of images (N, C, H, W), got {got}")
    return x


def _fit(
    step: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    stateful: Dict[str, Any],
    log: TrainLog,
    counter: Optional[QueryCounter],
    epochs: int,
    batch_size: int,
    seed: int,
    checkpoint: Optional[PathLike],
    resume: bool,
    progress: bool,
    desc: str,
) -> TrainLog:
    """Epochs of ``step(xb, yb) -> loss`` over shuffled batches, with progress, checkpoints and resume."""
    epochs = check_count("epochs", epochs, 0)
    batch_size = check_count("batch_size", batch_size, 1)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path (checkpoint=...)")
    generator = torch.Generator().manual_seed(int(seed))
    stateful = dict(stateful, generator=_generator_state(generator))
    if counter is not None:
        stateful["counter"] = _Stateful(counter.get_extra_state, counter.set_extra_state)
    if resume and checkpoint is not None and os.path.exists(checkpoint):  # resume implies a checkpoint (above)
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for name, obj in stateful.items():
            obj.load_state_dict(saved[name])
        for key, value in saved["log"].items():
            setattr(log, key, value)
    steps_per_epoch = max(1, x.shape[0] // batch_size)
    tqdm = require("tqdm", "science").tqdm if progress else None
    bar = (
        tqdm(total=epochs * steps_per_epoch, initial=log.epochs * steps_per_epoch, desc=desc, leave=False)
        if tqdm
        else None
    )
    for _ in range(log.epochs, epochs):
        start, total, n = time.perf_counter(), 0.0, 0
        for xb, yb in batches(x, y, batch_size, generator):
            before = counter.queries if counter is not None else 0
            total += float(step(xb, yb))
            n += 1
            if counter is not None:
                log.queries_per_step = counter.queries - before
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total / n:.4f}")
        log.losses.append(total / max(n, 1))
        log.steps += n
        log.seconds += time.perf_counter() - start
        if counter is not None:
            log.queries = counter.queries
        if checkpoint is not None:
            state = {name: obj.state_dict() for name, obj in stateful.items()}
            state["log"] = dataclasses.asdict(log)
            tmp = f"{os.fspath(checkpoint)}.tmp"
            torch.save(state, tmp)
            os.replace(tmp, checkpoint)
    if bar is not None:
        bar.close()
    return log


def _autograd_step(
    opt: torch.optim.Optimizer, loss_of: Callable[[Tensor, Tensor], Tensor]
) -> Callable[[Tensor, Tensor], Tensor]:
    """One optimiser step on ``loss_of(xb, yb)`` by ``backward()`` (a black box inside does its ZO VJP there)."""

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        """Loss, backward, step; the detached loss."""
        loss = loss_of(xb, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    checkpoint: Optional[PathLike] = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainLog:
    """First-order Adam on cross-entropy: the stand-in for the owner's (clean-trained) model.

    Args:
        model: the classifier, ``(B, C, H, W) → logits (B, K)``; trained in place (train mode
            meanwhile, its mode restored after).
        x: ``(N, C, H, W)`` floating images; ``y``: ``(N,)`` int64 labels.
        epochs, batch_size, lr, weight_decay: the training budget and Adam's options.
        seed: seed of the batch order.
        checkpoint / resume: save after each epoch (atomically) / continue from the saved epoch.
        progress: show a tqdm bar (needs the ``science`` extra).

    Returns:
        A :class:`TrainLog`.

    Raises:
        ValueError: ``x`` is not a floating ``(N, C, H, W)`` tensor, or an invalid ``epochs``,
            ``batch_size``, ``lr`` or ``weight_decay``; ``resume=True`` without ``checkpoint``.
    """
    x = _check_images("x", x)
    opt = torch.optim.Adam(
        model.parameters(), lr=positive("lr", lr), weight_decay=positive("weight_decay", weight_decay, allow_zero=True)
    )

    step = _autograd_step(opt, lambda xb, yb: F.cross_entropy(model(xb), yb))
    with _modes([model], []):
        return _fit(
            step,
            x,
            y,
            stateful={"model": model, "optimizer": opt},
            log=TrainLog(),
            counter=None,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            checkpoint=checkpoint,
            resume=resume,
            progress=progress,
            desc="classifier",
        )


def train_autoencoder(
    encoder: nn.Module,
    decoder: nn.Module,
    x: Tensor,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    checkpoint: Optional[PathLike] = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainLog:
    """Adam on the reconstruction MSE ``‖Dec(Enc(x)) − x‖²`` of clean images (the paper's stage a).

    Args:
        encoder, decoder: from :func:`build_encoder` / :func:`build_decoder`; trained in place.
        x: ``(N, C, H, W)`` floating images in [0, 1].
        epochs, batch_size, lr, seed, checkpoint, resume, progress: as for :func:`train_classifier`.

    Returns:
        A :class:`TrainLog`.

    Raises:
        ValueError: ``x`` is not a floating ``(N, C, H, W)`` tensor, or an invalid ``epochs``,
            ``batch_size`` or ``lr``; ``resume=True`` without ``checkpoint``.
    """
    x = _check_images("x", x)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=positive("lr", lr))

    step = _autograd_step(opt, lambda xb, _: F.mse_loss(decoder(encoder(xb)), xb))
    with _modes([encoder, decoder], []):
        return _fit(
            step,
            x,
            x,
            stateful={"encoder": encoder, "decoder": decoder, "optimizer": opt},
            log=TrainLog(),
            counter=None,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            checkpoint=checkpoint,
            resume=resume,
            progress=progress,
            desc="autoencoder",
        )


def pseudo_labels(classifier: QueryCounter, x: Tensor, batch_size: int = 1024) -> Tensor:
    """The classifier's own predictions on clean ``x`` (``N`` queries): the denoiser's targets."""
    with torch.no_grad():
        return torch.cat([classifier(x[i : i + batch_size]).argmax(-1) for i in range(0, x.shape[0], batch_size)])


def _counter_for(classifier: nn.Module, mode: str) -> QueryCounter:
    """The classifier behind a :class:`QueryCounter` (white-box only for ``mode="fo"``)."""
    if not isinstance(classifier, QueryCounter):
        return QueryCounter(classifier, white_box=mode == "fo")
    if mode == "fo" and not classifier.white_box:
        raise ValueError(
            "classifier: mode='fo' differentiates through the classifier; "
            "pass QueryCounter(f, white_box=True) or the bare model"
        )
    if mode == "zo" and classifier.white_box:
        raise ValueError(
            "classifier: mode='zo' must treat the classifier as a black box; "
            "pass QueryCounter(f) (white_box=False) or the bare model"
        )
    return classifier


class OwnerSide(nn.Module):
    """``u ↦ f(Dec(u))`` (or ``f(u)`` without a decoder): everything after the trained part."""

    def __init__(self, classifier: QueryCounter, decoder: Optional[nn.Module] = None):
        """Keep both (the decoder is optional)."""
        super().__init__()
        self.classifier, self.decoder = classifier, decoder

    def forward(self, u: Tensor) -> Tensor:
        """``f(Dec(u))`` or ``f(u)``."""
        return self.classifier(u if self.decoder is None else self.decoder(u))


def classifier_head(
    classifier: QueryCounter,
    *,
    mode: str,
    decoder: Optional[nn.Module] = None,
    estimator: Any = None,
    seed: int = 0,
    max_points: Optional[int] = None,
) -> nn.Module:
    """``f∘Dec`` (or ``f``) as the denoiser's loss sees it: white-box (``"fo"``) or a ZO black box.

    With ``mode="zo"`` it is a :class:`BlackBox` (rowwise, batched: a step's forward and all
    its perturbations go to the classifier in as few calls as ``max_points`` allows) with
    ``estimator`` (default ``CGE(mu=5e-3)``); its input is the latent ``z`` when a decoder is
    given, else the image.

    Args:
        classifier: the counted classifier ``f``.
        mode: ``"fo"`` or ``"zo"``.
        decoder: the frozen decoder (None: the head is ``f`` alone).
        estimator: for ``mode="zo"``: an estimator or name (μ absolute, in the units of ``z``
            or of [0, 1] pixels).
        seed: seed of the black box's generator.
        max_points: at most this many points per classifier call.

    Returns:
        An :class:`OwnerSide` (``"fo"``) or a :class:`~zeroth.blackbox.BlackBox` (any other mode).
    """
    side = OwnerSide(classifier, decoder)
    if mode == "fo":
        return side
    program = batched(side, max_points=max_points, name="f∘Dec" if decoder is not None else "f")
    return BlackBox(program, CGE(mu=5e-3) if estimator is None else estimator, seed=seed)


def denoised_loss(
    denoiser: nn.Module,
    head: Callable[[Tensor], Tensor],
    x: Tensor,
    targets: Tensor,
    noise: Tensor,
    encoder: Optional[nn.Module] = None,
) -> Tensor:
    """``CE(head(Enc(D(x + noise))), targets)``: the training loss of (ZO-/FO-)(AE-)DS."""
    u = denoiser(x + noise)  # (B, C, H, W)
    if encoder is not None:
        u = encoder(u)  # (B, d_z, 1, 1)
    return F.cross_entropy(head(u), targets)  # head: f∘Dec or f, logits (B, K)


def train_denoiser(
    denoiser: nn.Module,
    classifier: nn.Module,
    x: Tensor,
    *,
    sigma: float,
    mode: str = "zo",
    estimator: Any = None,
    through_ae: bool = True,
    encoder: Optional[nn.Module] = None,
    decoder: Optional[nn.Module] = None,
    train_encoder: bool = True,
    targets: Optional[Tensor] = None,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    max_points: Optional[int] = None,
    checkpoint: Optional[PathLike] = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainLog:
    """Train the denoiser (and the encoder) for denoised smoothing of ``classifier`` at noise ``sigma``.

    Args:
        classifier: the bare model or a :class:`QueryCounter` around it; every query goes
            through the counter (the log's ``queries_per_step`` / ``queries`` read it).
        mode: ``"zo"`` (the classifier is a black box: a :class:`BlackBox` around ``f∘Dec``
            or ``f``, estimated by ``estimator``) or ``"fo"`` (white-box autograd, reference).
        estimator: ``CGE(...)``, ``RGE(...)`` or a name, for ``mode="zo"`` (default
            ``CGE(mu=5e-3)``, forward differences: ``d + 1`` queries per image).
        through_ae: ZO-AE-DS / FO-AE-DS (needs ``encoder`` and the pretrained ``decoder``;
            the decoder stays frozen, the encoder trains unless ``train_encoder=False``) or
            ZO-DS / FO-DS (no AE).
        targets: the classifier's labels of clean ``x``; queried (``N`` queries) when None.
        max_points: at most this many images per black-box call (memory bound).
        checkpoint / resume: save after each epoch / continue from the saved epoch.

    Noise ``δ ~ N(0, σ²I)`` on [0, 1] pixels, a fresh draw per image and step.

    Returns:
        A :class:`TrainLog`.

    Raises:
        ValueError: an invalid ``mode``, ``sigma``, ``lr``, ``weight_decay``, ``epochs`` or
            ``batch_size``; ``x`` not a floating ``(N, C, H, W)`` tensor; ``through_ae=True``
            without ``encoder``/``decoder`` (or an autoencoder with ``through_ae=False``); an
            ``estimator`` with ``mode="fo"``; ``targets`` without one label per image; a
            ``QueryCounter`` whose ``white_box`` does not match ``mode``; ``resume=True``
            without ``checkpoint``.
        TypeError: ``through_ae`` is not a bool.
        zeroth.blackbox.ProgramError: the black-box classifier failed (``mode="zo"``).

    References:
        Y. Zhang et al., "How to robustify black-box ML models? A zeroth-order optimization
        perspective", ICLR 2022, arXiv:2203.14195.

        H. Salman et al., "Denoised smoothing: a provable defense for pretrained classifiers",
        NeurIPS 2020, arXiv:2003.01908 (the classification objective).
    """
    if mode not in ("fo", "zo"):
        raise ValueError(f"Invalid mode value: {mode!r} (expected 'fo' or 'zo')")
    x = _check_images("x", x)
    sigma = positive("sigma", sigma)
    if not isinstance(through_ae, bool):
        raise TypeError(f"through_ae must be a bool, got {type(through_ae).__name__}")
    if through_ae and (encoder is None or decoder is None):
        raise ValueError("through_ae=True needs encoder= and decoder= (the pretrained autoencoder)")
    if not through_ae and (encoder is not None or decoder is not None):
        raise ValueError("encoder/decoder: through_ae=False trains the denoiser alone; pass no autoencoder")
    if mode == "fo" and estimator is not None:
        raise ValueError("estimator: only mode='zo' uses a gradient estimator")
    if targets is not None and (not isinstance(targets, Tensor) or targets.shape != x.shape[:1]):
        raise ValueError(f"targets must be a tensor of {x.shape[0]} labels (one per image of x)")
    counter = _counter_for(classifier, mode)
    trained = [denoiser] + ([encoder] if through_ae and train_encoder and encoder is not None else [])
    params = [p for m in trained for p in m.parameters()]
    opt = torch.optim.Adam(
        params, lr=positive("lr", lr), weight_decay=positive("weight_decay", weight_decay, allow_zero=True)
    )
    head = classifier_head(counter, mode=mode, decoder=decoder, estimator=estimator, seed=seed, max_points=max_points)
    noise = torch.Generator().manual_seed(int(seed) + 1)

    def loss_of(xb: Tensor, yb: Tensor) -> Tensor:
        """Fresh noise for the batch, then the denoised loss."""
        delta = torch.randn(xb.shape, generator=noise, dtype=xb.dtype).to(xb.device) * sigma
        return denoised_loss(denoiser, head, xb, yb, delta, encoder=encoder)

    step = _autograd_step(opt, loss_of)

    stateful: Dict[str, Any] = {"denoiser": denoiser, "optimizer": opt, "noise": _generator_state(noise)}
    if through_ae:
        stateful["encoder"] = encoder
    if isinstance(head, BlackBox):
        stateful["black_box"] = head
    if targets is None and resume and checkpoint is not None and os.path.exists(checkpoint):
        targets = torch.load(checkpoint, map_location="cpu", weights_only=True)["targets"]  # not queried again
    stateful["targets"] = _Stateful(lambda: targets, lambda _: None)
    log = TrainLog()
    fixed = [counter.classifier, decoder] + ([encoder] if through_ae and not train_encoder else [])
    with _frozen(*fixed), _modes(trained, fixed):
        if targets is None:
            targets = pseudo_labels(counter, x)
            log.queries = counter.queries
        return _fit(
            step,
            x,
            targets.to(x.device),
            stateful=stateful,
            log=log,
            counter=counter,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            checkpoint=checkpoint,
            resume=resume,
            progress=progress,
            desc=f"{mode.upper()}-{'AE-' if through_ae else ''}DS",
        )
