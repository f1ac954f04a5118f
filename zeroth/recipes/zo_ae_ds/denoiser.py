"""DnCNN-style denoiser (Zhang et al. 2017) with residual output, the identity at initialisation.

Denoised smoothing prepends it to the classifier: it maps a Gaussian-noised image back to
something the (clean-trained) classifier recognises. ZO-AE-DS trains it from scratch rather
than from a pretrained denoiser (better in the paper: 72.23 vs 59.74 % standard accuracy), so
it starts as the identity: the last convolution is zero-initialised and ``D(x) = x − net(x)``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ...blackbox.program import check_count


class DnCNN(nn.Module):
    """``D(x) = x − net(x)``: conv+ReLU, ``depth − 2`` × (conv, BatchNorm, ReLU), conv (zero-init).

    Args:
        channels: image channels (1 for digits, 3 for CIFAR-10).
        depth: number of convolutions (the paper: 17).
        width: feature channels of the hidden convolutions (the paper: 64).
    """

    def __init__(self, channels: int = 1, depth: int = 17, width: int = 64):
        """Build the layers; the last conv starts at zero."""
        super().__init__()
        channels = check_count("channels", channels, 1)
        depth = check_count("depth", depth, 2)
        width = check_count("width", width, 1)
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]  # (B, width, H, W)
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        last = nn.Conv2d(width, channels, 3, padding=1)  # (B, C, H, W)
        nn.init.zeros_(last.weight)  # zero residual: the denoiser starts as the identity
        if last.bias is not None:  # it has one (bias=True)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """The denoised image ``x − net(x)``."""
        return x - self.net(x)
