"""ZO-AE-DS (Zhang et al., ICLR 2022): certified black-box defense of a query-only classifier.

Denoised smoothing where the classifier ``f`` only answers queries: a denoiser ``D`` and an
autoencoder (``Enc``, frozen ``Dec``) go in front of ``f``; ``D`` and ``Enc`` train by autograd
behind a :class:`~zeroth.blackbox.BlackBox` around ``f∘Dec`` whose backward is a ZO estimate
over the small latent ``z`` (CGE or RGE); the defended model ``f∘Dec∘Enc∘D`` is certified by
randomized smoothing (Cohen et al.). ``zeroth defend`` runs the whole comparison.
"""

from .autoencoder import build_decoder, build_encoder
from .certify import (
    ABSTAIN,
    Certificate,
    certified_accuracy,
    certify,
    certify_dataset,
    lower_confidence_bound,
    predict,
    sample_counts,
)
from .data import Normalize, load_cifar10
from .defend import PRESETS, DefendConfig, Report, Row, run
from .denoiser import DnCNN
from .queries import QueryCounter
from .train import (
    OwnerSide,
    TrainLog,
    classifier_head,
    denoised_loss,
    pseudo_labels,
    train_autoencoder,
    train_classifier,
    train_denoiser,
)

__all__ = [
    "ABSTAIN",
    "Certificate",
    "DefendConfig",
    "DnCNN",
    "Normalize",
    "OwnerSide",
    "PRESETS",
    "QueryCounter",
    "Report",
    "Row",
    "TrainLog",
    "build_decoder",
    "build_encoder",
    "certified_accuracy",
    "certify",
    "certify_dataset",
    "classifier_head",
    "denoised_loss",
    "load_cifar10",
    "lower_confidence_bound",
    "predict",
    "pseudo_labels",
    "run",
    "sample_counts",
    "train_autoencoder",
    "train_classifier",
    "train_denoiser",
]
