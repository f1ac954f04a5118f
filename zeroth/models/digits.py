"""Small networks for the 8×8 digits of ``sklearn.datasets.load_digits``."""

from __future__ import annotations

from typing import List

from torch import nn


class DigitsCNN(nn.Sequential):
    """Conv(1→8) → ReLU → Conv(8→16, stride 2) → ReLU → Linear(256→10): 3 818 parameters.

    A plain ``nn.Sequential``, so feature-reuse evaluators can treat each layer as a stage.
    Input ``(B, 1, 8, 8)`` in [0, 1]; output logits ``(B, 10)``.

    Args:
        channels: ``(c1, c2)`` channels of the two convolutions (default ``(8, 16)``).
        num_classes: output logits (default 10).
        batch_norm: a BatchNorm2d after each convolution (default False).
    """

    def __init__(self, channels: tuple = (8, 16), num_classes: int = 10, batch_norm: bool = False):
        c1, c2 = channels
        layers: List[nn.Module] = [nn.Conv2d(1, c1, 3, padding=1)]  # (B, c1, 8, 8)
        if batch_norm:
            layers.append(nn.BatchNorm2d(c1))
        layers += [nn.ReLU(), nn.Conv2d(c1, c2, 3, stride=2, padding=1)]  # (B, c2, 4, 4)
        if batch_norm:
            layers.append(nn.BatchNorm2d(c2))
        layers += [nn.ReLU(), nn.Flatten(), nn.Linear(c2 * 16, num_classes)]  # (B, 10)
        super().__init__(*layers)


class DigitsMLP(nn.Sequential):
    """Linear(64→hidden) → ReLU → Linear(hidden→10); input ``(B, 64)`` or ``(B, 1, 8, 8)``.

    Args:
        hidden: width of the hidden layer (default 32).
        num_classes: output logits (default 10).
    """

    def __init__(self, hidden: int = 32, num_classes: int = 10):
        super().__init__(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
