"""Reference networks for tests, examples and benchmarks (torchvision is not used)."""

from .digits import DigitsCNN, DigitsMLP
from .resnet import PadShortcut, Residual, ResNet20, resnet20

__all__ = ["DigitsCNN", "DigitsMLP", "PadShortcut", "ResNet20", "Residual", "resnet20"]
