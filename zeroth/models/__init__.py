"""Reference networks for tests, examples and benchmarks (torchvision is not used)."""
from .digits import DigitsCNN, DigitsMLP

__all__ = ["DigitsCNN", "DigitsMLP"]
