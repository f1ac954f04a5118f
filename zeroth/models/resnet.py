"""CIFAR ResNet-20 (He et al. 2016, option-A shortcuts): 269 722 parameters, written here.

Declared as a chain of stages (``zo_stages``) — stem conv / BN / ReLU, nine residual
blocks, pooling, flatten, classifier — so feature-reuse evaluators can cache the input of
each stage. Each block is a :class:`Residual`: ``post(main(x) + shortcut(x))``.

References:
    K. He, X. Zhang, S. Ren and J. Sun, "Deep residual learning for image recognition",
    CVPR 2016, arXiv:1512.03385 (§4.2: the CIFAR-10 ResNet-20, option A shortcuts).
"""

from __future__ import annotations

from typing import List

import torch.nn.functional as F
from torch import Tensor, nn


class Residual(nn.Module):
    """``post(main(x) + shortcut(x))``; rows are independent (batch statistics aside).

    ``zo_residual`` tells difference propagation it may push a change through ``main`` and
    ``shortcut`` separately and add them.

    Args:
        main: the block's main branch.
        shortcut: the skip branch (``nn.Identity`` or :class:`PadShortcut`).
        post: applied to the sum (ReLU).
    """

    zo_rowwise = True
    zo_residual = True

    def __init__(self, main: nn.Sequential, shortcut: nn.Module, post: nn.Module):
        super().__init__()
        self.main = main
        self.shortcut = shortcut
        self.post = post

    def forward(self, x: Tensor) -> Tensor:
        """``post(main(x) + shortcut(x))``; ``x`` is ``(B, C, H, W)``."""
        return self.post(self.main(x) + self.shortcut(x))


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels (parameter-free, linear).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (≥ ``in_channels``; the extra ones are zero,
            split between the front and the back).
        stride: spatial subsampling factor.
    """

    zo_rowwise = True
    zo_linear = True

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, out_channels, ⌈H/s⌉, ⌈W/s⌉)``: every ``s``-th pixel, zero channels added."""
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C, H/s, W/s)
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))  # (B, C + extra, H/s, W/s)


def basic_block(in_channels: int, out_channels: int, stride: int) -> Residual:
    """Conv3×3 → BN → ReLU → Conv3×3 → BN, plus the shortcut, then ReLU."""
    main = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )
    if stride == 1 and in_channels == out_channels:
        shortcut: nn.Module = nn.Identity()
    else:
        shortcut = PadShortcut(in_channels, out_channels, stride)
    return Residual(main, shortcut, nn.ReLU())


class ResNet20(nn.Module):
    """ResNet-20 for 32×32 images: input ``(B, 3, 32, 32)`` -> logits ``(B, num_classes)``.

    Stem (3×3 conv, BN, ReLU), three stages of ``blocks_per_stage`` basic blocks at widths
    ``w, 2w, 4w`` (the 2nd and 3rd start with stride 2), global average pooling and a linear
    classifier; convolutions get Kaiming-normal (fan-out) initialisation.

    Args:
        num_classes: output logits (default 10).
        width: channels of the first stage ``w`` (default 16).
        blocks_per_stage: basic blocks per stage (default 3: ResNet-20, ``6n + 2`` layers).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, blocks_per_stage: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: List[nn.Module] = []
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width)):  # 32×32, 16×16, 8×8
            for b in range(blocks_per_stage):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(basic_block(cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # (B, 4w, 1, 1)
        self.flatten = nn.Flatten()  # (B, 4w)
        self.fc = nn.Linear(cin, num_classes)  # (B, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def zo_stages(self) -> List[nn.Module]:
        """The chain of stages a feature-reuse evaluator may cache between."""
        return [*self.stem, *self.blocks, self.pool, self.flatten, self.fc]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, 3, H, W)`` (the stages in order)."""
        for stage in self.zo_stages():
            x = stage(x)
        return x


def resnet20(num_classes: int = 10) -> ResNet20:
    """The CIFAR-10 ResNet-20 (269 722 parameters for 10 classes)."""
    return ResNet20(num_classes=num_classes)
