"""``zeroth defend``: the ZO-AE-DS experiment end to end — train, certify, table, plot.

1. The owner's classifier ``f`` is trained first-order on clean images (a stand-in: from
   then on it is only queried, through a :class:`QueryCounter`, one per row).
2. The AE is pretrained on reconstruction; its decoder is frozen.
3. One denoiser per row is trained from the same initialisation, batch order and noise
   (common random numbers, so rows differ only by how the gradient is obtained).
4. Each smoothed model is certified on the same test images with the same noise; the table
   gives certified accuracy (%) at the radii, the share of certified images on which the
   smoothed model abstains, queries per training step and in total, and wall time; a plot
   of certified accuracy against the radius is saved. The FO-AE-DS goal is judged only when
   FO-AE-DS and ``f(Dec(Enc(x)))`` are above chance (:func:`fo_gap_verdict`).

Rows: no defense (``f`` itself: its accuracy at r = 0, no certificate beyond) · randomized
smoothing of ``f`` alone · FO-DS · FO-AE-DS (white-box references) · ZO-DS (RGE over the
pixels, ``q`` = the largest ``q``) · ZO-AE-DS RGE for each ``q`` · ZO-AE-DS CGE.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypedDict

import torch
from torch import nn

from ..._optional import require
from ...data import Split, accuracy, load_digits
from ...estimators import CGE, RGE
from ...models import DigitsCNN, resnet20
from ._checks import positive
from .autoencoder import build_decoder, build_encoder
from .certify import ABSTAIN, Certificate, certified_accuracy, certify_dataset
from .data import CIFAR10_MEAN, CIFAR10_STD, Normalize, load_cifar10
from .denoiser import DnCNN
from .queries import QueryCounter
from .train import TrainLog, train_autoencoder, train_classifier, train_denoiser


@dataclass(frozen=True)
class Preset:
    """A dataset's architecture and budget defaults (every budget can be overridden in the config)."""

    channels: int
    image_size: int
    classifier: Callable[[], nn.Module]
    classifier_name: str
    latent_dim: int  # d_z: coordinates of the ZO estimate in ZO-AE-DS
    ae_width: int  # channels of the AE's first conv (doubled per halving)
    dncnn_depth: int
    dncnn_width: int
    classifier_epochs: int
    ae_epochs: int
    epochs: int  # denoiser epochs per row
    batch_size: int
    n: int  # Monte-Carlo samples of the certificate (N0 = 100 for both)
    num_certify: int  # test images certified, evenly spaced over the test set
    radii: Tuple[float, ...]  # table radii (L2, on [0, 1] pixels)
    max_points: Optional[int]  # images per black-box call (memory bound)


def _cifar_classifier() -> nn.Module:
    """ResNet-20 taking [0, 1] pixels (normalisation inside)."""
    return nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD), resnet20())


PRESETS: Dict[str, Preset] = {
    # 8×8 digits in [0, 1] (mean L2 norm 3.8; half the distance to the nearest other-class
    # training image: median 0.93): radii up to 0.5 = 2σ. With N = 1000, α = 0.001 the
    # largest certifiable radius is σ·Φ⁻¹(0.001^(1/1000)) = 0.62, so 0.75 is out of reach.
    "digits": Preset(
        channels=1,
        image_size=8,
        classifier=DigitsCNN,
        classifier_name="DigitsCNN",
        latent_dim=24,
        ae_width=16,
        dncnn_depth=5,
        dncnn_width=16,
        classifier_epochs=30,
        ae_epochs=150,
        epochs=20,
        batch_size=64,
        n=1000,
        num_certify=450,
        radii=(0.0, 0.125, 0.25, 0.375, 0.5),
        max_points=None,
    ),
    # The paper's CIFAR-10 setting (DnCNN 17/64, d_z = 192, N = 10 000, every 20th test
    # image as in Cohen et al.) with a ResNet-20 owner model; sized for one GPU.
    "cifar10": Preset(
        channels=3,
        image_size=32,
        classifier=_cifar_classifier,
        classifier_name="ResNet-20",
        latent_dim=192,
        ae_width=32,
        dncnn_depth=17,
        dncnn_width=64,
        classifier_epochs=60,
        ae_epochs=100,
        epochs=50,
        batch_size=256,
        n=10_000,
        num_certify=500,
        radii=(0.0, 0.25, 0.5, 0.75),
        max_points=65_536,
    ),
}

ESTIMATOR_CHOICES = ("cge", "rge", "all")


@dataclass
class DefendConfig:
    """Everything ``zeroth defend`` needs; ``None`` budgets come from the dataset's :class:`Preset`.

    Validated on construction (a ``ValueError`` naming the argument), before any training.

    Attributes:
        dataset: ``"digits"`` or ``"cifar10"`` (a key of :data:`PRESETS`).
        data_dir: folder of the CIFAR-10 python batches (required for ``cifar10``).
        sigma: smoothing noise standard deviation on [0, 1] pixels (the paper's code: 0.25).
        estimator: which ZO-AE-DS rows: ``"cge"``, ``"rge"`` or ``"all"``.
        q: RGE directions per image (default ``(2, d_z/4, d_z)``).
        mu: finite-difference step, absolute, in latent (or pixel) units (the paper's 5e-3).
        lr: Adam learning rate of denoiser and encoder (the paper's 1e-3).
        n0, n, alpha: certification samples and failure probability (Cohen et al.).
        latent_dim, epochs, classifier_epochs, ae_epochs, batch_size, num_certify, radii: budgets
            (None: the preset's).
        seed: seed of everything random.
        device: torch device name.
        out: path of the plot.
        checkpoint_dir: per-stage checkpoints; a rerun resumes from them. The fields that
            determine them (:data:`TRAINING_FIELDS`) are recorded there, and a rerun with other
            values is refused (:func:`check_checkpoint_dir`).
        progress: tqdm bars.

    Raises:
        ValueError: an unknown ``dataset`` or ``estimator``, ``cifar10`` without ``data_dir``, or
            an invalid number (the message names it).
    """

    dataset: str = "digits"
    data_dir: Optional[str] = None  # CIFAR-10 python batches (required for cifar10)
    sigma: float = 0.25  # noise std on [0, 1] pixels (the paper's code; its text says σ²)
    estimator: str = "all"  # ZO-AE-DS rows: "cge", "rge" or "all"
    q: Optional[Sequence[int]] = None  # RGE directions per image (default 2, d_z/4, d_z)
    mu: float = 5e-3  # finite-difference step (the paper's)
    lr: float = 1e-3  # Adam, denoiser and encoder (the paper's)
    n0: int = 100
    alpha: float = 0.001
    latent_dim: Optional[int] = None
    epochs: Optional[int] = None  # denoiser epochs per row
    classifier_epochs: Optional[int] = None
    ae_epochs: Optional[int] = None
    batch_size: Optional[int] = None
    n: Optional[int] = None
    num_certify: Optional[int] = None
    radii: Optional[Sequence[float]] = None
    seed: int = 0
    device: str = "cpu"
    out: str = "zeroth_defend.png"  # the plot
    checkpoint_dir: Optional[str] = None  # per-stage checkpoints; a rerun resumes from them
    progress: bool = True
    preset: Preset = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Validate every argument and fill the preset's defaults."""
        if self.dataset not in PRESETS:
            raise ValueError(f"Invalid dataset value: {self.dataset!r} (expected one of {', '.join(PRESETS)})")
        if self.dataset == "cifar10" and not self.data_dir:
            raise ValueError(
                "data_dir: cifar10 needs --data-dir with the python-pickle batches (nothing is downloaded)"
            )
        if self.estimator not in ESTIMATOR_CHOICES:
            raise ValueError(
                f"Invalid estimator value: {self.estimator!r} (expected one of {', '.join(ESTIMATOR_CHOICES)})"
            )
        self.preset = p = PRESETS[self.dataset]
        self.sigma, self.mu, self.lr = positive("sigma", self.sigma), positive("mu", self.mu), positive("lr", self.lr)
        self.alpha = positive("alpha", self.alpha, upper=0.5)
        self.n0 = positive("n0", self.n0, integer=True)
        d_z = p.latent_dim if self.latent_dim is None else positive("latent_dim", self.latent_dim, integer=True)
        self.latent_dim = d_z
        for name in ("epochs", "classifier_epochs", "ae_epochs", "batch_size", "n", "num_certify"):
            value = getattr(self, name)
            setattr(self, name, getattr(p, name) if value is None else positive(name, value, integer=True))
        qs = (2, max(1, d_z // 4), d_z) if self.q is None else tuple(self.q)
        if not qs:
            raise ValueError("Invalid q value: () (give at least one number of directions)")
        self.q = tuple(sorted(set(positive("q", v, integer=True) for v in qs)))
        radii = p.radii if self.radii is None else tuple(self.radii)
        for r in radii:
            if isinstance(r, bool) or not isinstance(r, numbers.Real) or not r >= 0:
                raise ValueError(f"Invalid radii value: {r!r} (radii must be numbers >= 0)")
        if not radii:
            raise ValueError("Invalid radii value: () (give at least one radius)")
        self.radii = tuple(sorted(float(r) for r in radii))


@dataclass(frozen=True)
class _Budgets:
    """The budgets of a validated :class:`DefendConfig`, none of them None (``__post_init__`` filled them)."""

    q: Tuple[int, ...]
    latent_dim: int
    epochs: int
    classifier_epochs: int
    ae_epochs: int
    batch_size: int
    n: int
    num_certify: int
    radii: Tuple[float, ...]


def _budgets(config: DefendConfig) -> _Budgets:
    """``config``'s budgets as they are now (ValueError if one was set to None after construction)."""
    values = {f.name: getattr(config, f.name) for f in fields(_Budgets)}
    unset = [name for name, value in values.items() if value is None]
    if unset:
        raise ValueError(f"DefendConfig: {', '.join(unset)} set to None after construction (give a value)")
    return _Budgets(**values)


@dataclass
class Row:
    """One line of the table: certified accuracy at the radii and what it cost."""

    name: str
    accuracy: List[float]
    queries_per_step: Optional[int] = None
    train_queries: Optional[int] = None
    train_seconds: Optional[float] = None
    certify_seconds: Optional[float] = None
    certificates: List[Certificate] = field(default_factory=list, repr=False)

    @property
    def abstentions(self) -> Optional[int]:
        """Certified images on which the smoothed model abstained (None: the row certifies nothing)."""
        if not self.certificates:
            return None
        return sum(c.prediction == ABSTAIN for c in self.certificates)

    @property
    def abstention_rate(self) -> Optional[float]:
        """:attr:`abstentions` as a fraction of the certified images (None: the row certifies nothing)."""
        count = self.abstentions
        return None if count is None else count / len(self.certificates)


@dataclass
class Report:
    """What :func:`run` returns: the config, the rows, context lines and the plot's path.

    ``chance`` is the accuracy of guessing (1 / classes) and ``ae_accuracy`` the accuracy of
    ``f(Dec(Enc(x)))`` on the certified images; :func:`goals` uses them to tell whether the
    FO-AE-DS comparison is measurable at this budget.
    """

    config: DefendConfig
    rows: List[Row]
    notes: List[str]
    seconds: float
    plot: Optional[str] = None
    chance: Optional[float] = None
    ae_accuracy: Optional[float] = None

    def row(self, name: str) -> Row:
        """The row called ``name``.

        Raises:
            KeyError: there is no such row (the message lists the rows there are).
        """
        for r in self.rows:
            if r.name == name:
                return r
        known = ", ".join(repr(r.name) for r in self.rows) or "none"
        raise KeyError(f"no row named {name!r}; the rows are: {known}")


def _load(config: DefendConfig) -> Split:
    """The dataset's split, pixels in [0, 1]."""
    if config.dataset == "digits":
        return load_digits()  # one fixed split: seeds vary the training, not the test set
    if not config.data_dir:  # DefendConfig requires it for cifar10
        raise ValueError("data_dir: cifar10 needs --data-dir with the python-pickle batches (nothing is downloaded)")
    return load_cifar10(config.data_dir)


class _Resume(TypedDict, total=False):
    """The ``checkpoint=`` / ``resume=`` arguments of one training stage."""

    checkpoint: str
    resume: bool


CHECKPOINT_CONFIG = "defend_config.json"
"""The file in ``checkpoint_dir`` that records the configuration its checkpoints were trained with."""

TRAINING_FIELDS = (
    "dataset",
    "sigma",
    "estimator",
    "q",
    "mu",
    "lr",
    "latent_dim",
    "epochs",
    "classifier_epochs",
    "ae_epochs",
    "batch_size",
    "seed",
)
"""The :class:`DefendConfig` fields that determine what is trained (and so the checkpoints).

The others only change the certification (``n0``, ``n``, ``alpha``, ``num_certify``, ``radii``),
where the data is read from (``data_dir``), where things run or go (``device``, ``out``,
``checkpoint_dir``) or the bars (``progress``).
"""


def _training_config(config: DefendConfig) -> Dict[str, object]:
    """``config``'s :data:`TRAINING_FIELDS` as JSON values (tuples as lists)."""
    return json.loads(json.dumps({name: getattr(config, name) for name in TRAINING_FIELDS}))


def _flag(name: str) -> str:
    """The command-line flag of a config field."""
    return "--" + name.replace("_", "-")


def check_checkpoint_dir(config: DefendConfig) -> None:
    """Check that ``config.checkpoint_dir`` holds checkpoints of this configuration, and record it.

    A new (or empty) directory gets :data:`CHECKPOINT_CONFIG`, the :data:`TRAINING_FIELDS` of
    ``config``; a directory with one is compared with ``config`` field by field. Nothing else is
    read or written, so a mismatch leaves the directory as it was. Does nothing without a
    ``checkpoint_dir``.

    Raises:
        ValueError: a recorded field differs from ``config`` (the message names each one, both
            values and the directory), the directory holds checkpoints (``*.pt``) but no record,
            or the record is unreadable.
    """
    folder = config.checkpoint_dir
    if folder is None:
        return
    path = os.path.join(folder, CHECKPOINT_CONFIG)
    current = _training_config(config)
    if not os.path.exists(path):
        if os.path.isdir(folder) and any(name.endswith(".pt") for name in os.listdir(folder)):
            raise ValueError(
                f"checkpoint_dir: {folder!r} holds checkpoints but no {CHECKPOINT_CONFIG} recording the "
                "configuration they were trained with, so resuming from them cannot be checked (use a new directory)"
            )
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(current, fh, indent=1)
        os.replace(tmp, path)
        return
    try:
        with open(path) as fh:
            saved = json.load(fh)
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise ValueError(f"checkpoint_dir: {path!r} is not a readable configuration record ({err})") from None
    changed = [
        f"{name} ({_flag(name)}): {saved.get(name, 'not recorded')!r} in the checkpoints, {value!r} now"
        for name, value in current.items()
        if saved.get(name, object()) != value
    ]
    if changed:
        raise ValueError(
            f"checkpoint_dir: the checkpoints in {folder!r} were trained with a different configuration; "
            + "; ".join(changed)
            + " (give the same values to resume, or a new --checkpoint-dir)"
        )


def _checkpoint(config: DefendConfig, name: str) -> _Resume:
    """``checkpoint=`` / ``resume=`` arguments of one stage (nothing without a checkpoint dir)."""
    if config.checkpoint_dir is None:
        return {}
    os.makedirs(config.checkpoint_dir, exist_ok=True)
    return {"checkpoint": os.path.join(config.checkpoint_dir, name + ".pt"), "resume": True}


def _plan(config: DefendConfig) -> List[Tuple[str, dict]]:
    """The trained rows: name and ``train_denoiser`` arguments."""
    qs = _budgets(config).q
    zo_ds_q = max(qs)
    rows = [
        ("FO-DS", dict(mode="fo", through_ae=False)),
        ("FO-AE-DS", dict(mode="fo", through_ae=True)),
        (
            f"ZO-DS RGE q={zo_ds_q}",
            dict(mode="zo", through_ae=False, estimator=RGE(q=zo_ds_q, mu=config.mu, dist="sphere")),
        ),
    ]
    if config.estimator in ("rge", "all"):
        rows += [
            (f"ZO-AE-DS RGE q={q}", dict(mode="zo", through_ae=True, estimator=RGE(q=q, mu=config.mu, dist="sphere")))
            for q in qs
        ]
    if config.estimator in ("cge", "all"):
        rows.append(("ZO-AE-DS CGE", dict(mode="zo", through_ae=True, estimator=CGE(mu=config.mu))))
    return rows


def run(config: DefendConfig) -> Report:
    """Train, certify and tabulate every row of ``config``; prints the table, saves the plot.

    Seeds torch's global RNG (``config.seed``, ``+ 1`` for each denoiser's initialisation).

    Returns:
        The :class:`Report` (its ``plot`` is the saved path).

    Raises:
        FileNotFoundError: ``cifar10`` without the batches in ``config.data_dir``.
        ValueError: ``config.checkpoint_dir`` holds checkpoints of another configuration
            (:func:`check_checkpoint_dir`; checked before anything is trained).
        ImportError: scikit-learn, scipy, tqdm (with ``progress``) or matplotlib missing (the
            ``science`` extra).
    """
    start = time.perf_counter()
    p, device = config.preset, torch.device(config.device)
    budget = _budgets(config)
    check_checkpoint_dir(config)
    data = _load(config)
    data = Split(*(t.to(device) for t in data))
    pick = torch.linspace(0, data.x_test.shape[0] - 1, min(budget.num_certify, data.x_test.shape[0])).round().long()
    xs, ys = data.x_test[pick.to(device)], data.y_test[pick.to(device)]

    torch.manual_seed(config.seed)
    f = p.classifier().to(device)
    train_classifier(
        f,
        data.x_train,
        data.y_train,
        epochs=budget.classifier_epochs,
        batch_size=budget.batch_size,
        seed=config.seed,
        progress=config.progress,
        **_checkpoint(config, "classifier"),
    )
    f.requires_grad_(False).eval()
    encoder = build_encoder(p.channels, p.image_size, budget.latent_dim, p.ae_width).to(device)
    decoder = build_decoder(p.channels, p.image_size, budget.latent_dim, p.ae_width).to(device)
    train_autoencoder(
        encoder,
        decoder,
        data.x_train,
        epochs=budget.ae_epochs,
        batch_size=budget.batch_size,
        seed=config.seed,
        progress=config.progress,
        **_checkpoint(config, "autoencoder"),
    )
    decoder.requires_grad_(False).eval()
    encoder.eval()
    with torch.no_grad():
        recon = torch.cat([decoder(encoder(xs[i : i + 256])) for i in range(0, xs.shape[0], 256)])
    ae_accuracy = accuracy(f, recon, ys)
    notes = [
        f"black-box classifier {p.classifier_name}: "
        f"clean test accuracy {100 * accuracy(f, data.x_test, data.y_test):.1f} %; "
        f"AE (d_z = {budget.latent_dim}): test MSE {float((recon - xs).pow(2).mean()):.4f}, "
        f"f(Dec(Enc(x))) accuracy {100 * ae_accuracy:.1f} %"
    ]

    def certify_row(name: str, model: nn.Module, log: Optional[TrainLog] = None) -> Row:
        """Certify one smoothed model on the shared test images with the shared noise."""
        gen = torch.Generator(device=device).manual_seed(config.seed + 2)  # the same noise for every row
        t = time.perf_counter()
        certs = certify_dataset(
            model,
            xs,
            ys,
            config.sigma,
            config.n0,
            budget.n,
            config.alpha,
            batch=min(budget.n, 1000),
            generator=gen,
            progress=config.progress,
            desc=name,
        )
        row = Row(
            name, certified_accuracy(certs, budget.radii), certify_seconds=time.perf_counter() - t, certificates=certs
        )
        if log is not None:
            row.queries_per_step, row.train_queries, row.train_seconds = log.queries_per_step, log.queries, log.seconds
        return row

    no_defense = accuracy(QueryCounter(f), xs, ys)
    rows = [
        Row("no defense", [no_defense if r == 0 else 0.0 for r in budget.radii]),
        certify_row("RS of f alone", QueryCounter(f)),
    ]
    for name, kwargs in _plan(config):
        torch.manual_seed(config.seed + 1)  # the same initial denoiser for every row
        denoiser = DnCNN(p.channels, p.dncnn_depth, p.dncnn_width).to(device)
        enc = copy.deepcopy(encoder) if kwargs["through_ae"] else None
        counter = QueryCounter(f, white_box=kwargs["mode"] == "fo")
        log = train_denoiser(
            denoiser,
            counter,
            data.x_train,
            sigma=config.sigma,
            encoder=enc,
            decoder=decoder if kwargs["through_ae"] else None,
            epochs=budget.epochs,
            batch_size=budget.batch_size,
            lr=config.lr,
            seed=config.seed,
            max_points=p.max_points if kwargs["mode"] == "zo" else None,
            progress=config.progress,
            **kwargs,
            **_checkpoint(config, name.replace(" ", "_").replace("=", "")),
        )
        stages = [denoiser] + ([enc, decoder] if enc is not None else []) + [QueryCounter(f)]
        rows.append(certify_row(name, nn.Sequential(*stages), log))
    chance = 1 / (int(torch.cat([data.y_train, data.y_test]).max()) + 1)
    report = Report(config, rows, notes, time.perf_counter() - start, chance=chance, ae_accuracy=ae_accuracy)
    print(format_report(report))
    report.plot = plot(report, config.out)
    print(f"plot saved to {report.plot}")
    return report


def _cell(value, fmt: str) -> str:
    """A table cell: formatted, or a dash for not applicable."""
    return "—" if value is None else format(value, fmt)


def format_report(report: Report) -> str:
    """The header, the table (certified accuracy in % per radius), the goal checks and the wall time."""
    c = report.config
    p, budget = c.preset, _budgets(c)
    head = (
        f"ZO-AE-DS certified defense on {c.dataset}: σ = {c.sigma}, d_z = {c.latent_dim}, μ = {c.mu} "
        f"(forward differences, RGE on the unit sphere), DnCNN depth {p.dncnn_depth} / {p.dncnn_width} channels, "
        f"{c.epochs} denoiser epochs (batch {c.batch_size}, Adam lr {c.lr})\n"
        f"certified on {len(report.rows[1].certificates)} test images: N0 = {c.n0}, N = {c.n}, α = {c.alpha} "
        f"({c.n0 + budget.n} queries per image)"
    )
    radii = "".join(f"{'r=' + format(r, 'g'):>8}" for r in budget.radii)
    title = f"{'method':<22}{'queries/step':>13}{'train queries':>15}{'train s':>9}{'cert s':>8}{'abstain':>9}{radii}"
    lines = [head, *report.notes, "", title, "-" * len(title)]
    for r in report.rows:
        acc = "".join(f"{100 * a:>8.1f}" for a in r.accuracy)
        lines.append(
            f"{r.name:<22}{_cell(r.queries_per_step, ','):>13}{_cell(r.train_queries, ','):>15}"
            f"{_cell(r.train_seconds, '.1f'):>9}{_cell(r.certify_seconds, '.1f'):>8}"
            f"{_cell(None if r.abstention_rate is None else 100 * r.abstention_rate, '.1f'):>9}{acc}"
        )
    lines.append("abstain: % of the certified images on which the smoothed model abstains (counted as wrong)")
    lines += ["", *goals(report), f"wall time {report.seconds:.0f} s"]
    return "\n".join(lines)


def goals(report: Report) -> List[str]:
    """The issue's goals, checked on the measured rows (lines of text; nothing is assumed)."""
    names = {r.name: r for r in report.rows}
    budget = _budgets(report.config)
    cge, fo = names.get("ZO-AE-DS CGE"), names.get("FO-AE-DS")
    rge = names.get(f"ZO-AE-DS RGE q={max(budget.q)}")
    zo_ds = names.get(f"ZO-DS RGE q={max(budget.q)}")
    out = []
    if cge and rge and zo_ds:
        bad = [
            f"r={r:g} ({100 * a:.1f} / {100 * b:.1f} / {100 * z:.1f})"
            for r, a, b, z in zip(budget.radii, cge.accuracy, rge.accuracy, zo_ds.accuracy)
            if not a > b > z
        ]
        out.append(
            f"goal  ZO-AE-DS CGE > ZO-AE-DS RGE q={max(budget.q)} > ZO-DS q={max(budget.q)} at every radius: "
            + ("met" if not bad else "missed at " + ", ".join(bad))
        )
    if cge and fo:
        out.append(
            fo_gap_verdict(
                cge.accuracy,
                fo.accuracy,
                budget.radii,
                chance=report.chance,
                ae_accuracy=report.ae_accuracy,
                images=len(fo.certificates) or budget.num_certify,
            )
        )
    return out


def chance_margin(chance: float, images: int) -> float:
    """How far above ``chance`` an accuracy on ``images`` images must be to count as learned.

    Two binomial standard errors of guessing, ``2·sqrt(c(1 − c)/m)``, and at least 5 points.
    """
    return max(0.05, 2 * math.sqrt(chance * (1 - chance) / max(images, 1)))


def fo_gap_verdict(
    zo: Sequence[float],
    fo: Sequence[float],
    radii: Sequence[float],
    *,
    chance: Optional[float],
    ae_accuracy: Optional[float] = None,
    images: int = 1,
    points: float = 2.0,
) -> str:
    """The goal "ZO-AE-DS CGE within ``points`` of FO-AE-DS at every radius", as a line of text.

    "met" / "missed" only when the comparison means something: when the FO-AE-DS reference at
    the smallest radius, or ``f(Dec(Enc(x)))``, is at most ``chance`` + :func:`chance_margin`,
    both rows can tie at chance, so the line says the goal is not measurable at this budget.

    Args:
        zo, fo: certified accuracy (fractions in [0, 1]) of ZO-AE-DS CGE and FO-AE-DS at ``radii``.
        radii: the L2 radii, ascending.
        chance: the accuracy of guessing (1 / classes); None skips the check.
        ae_accuracy: the accuracy of the classifier through the autoencoder; None skips it.
        images: the certified images (sets the margin).
        points: the allowed shortfall, in percentage points.

    Returns:
        One line: ``... met (...)``, ``... missed (...)`` or ``... not measurable at this budget (...)``.
    """
    gaps = [100 * (b - a) for a, b in zip(zo, fo)]
    worst = max(range(len(gaps)), key=lambda i: gaps[i])
    head = f"goal  ZO-AE-DS CGE within {points:g} points of FO-AE-DS at every radius: "
    if chance is not None:
        floor = chance + chance_margin(chance, images)
        low = [
            f"{what} {100 * value:.1f} %"
            for what, value in ((f"FO-AE-DS at r={radii[0]:g}", fo[0]), ("f(Dec(Enc(x)))", ae_accuracy))
            if value is not None and value <= floor
        ]
        if low:
            return (
                head
                + "not measurable at this budget ("
                + ", ".join(low)
                + f": not above chance {100 * chance:.0f} % + {100 * (floor - chance):.1f} points; "
                "train longer: more --classifier-epochs, --ae-epochs, --epochs)"
            )
    return (
        head
        + ("met" if gaps[worst] <= points + 1e-9 else "missed")  # 1e-9: 100·(0.52 − 0.50) > 2 in floats
        + f" (largest shortfall {gaps[worst]:.1f} points at r={radii[worst]:g})"
    )


def plot(report: Report, path: str) -> str:
    """Certified accuracy against the L2 radius, one curve per row, saved to ``path``."""
    radii = _budgets(report.config).radii
    matplotlib = require("matplotlib", "science")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(max(radii) * 1.25, max((c.radius for r in report.rows for c in r.certificates), default=0))
    grid = [top * i / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in report.rows:
        if row.certificates:
            ax.plot(grid, [100 * a for a in certified_accuracy(row.certificates, grid)], label=row.name)
        else:
            ax.plot([0], [100 * row.accuracy[0]], "ko", label=row.name)  # no certificate beyond r = 0
    for r in radii:
        ax.axvline(r, color="0.85", lw=0.8, zorder=0)
    ax.set(
        xlabel="L2 radius",
        ylabel="certified accuracy (%)",
        title=f"ZO-AE-DS on {report.config.dataset}, σ = {report.config.sigma}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
