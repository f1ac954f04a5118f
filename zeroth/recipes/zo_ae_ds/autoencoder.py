"""Encoder/decoder builders for a given latent size (the AE of ZO-AE-DS).

The decoder is pretrained with the encoder, frozen and folded into the black box, so the ZO
estimate runs over the latent ``z`` (``latent_dim`` coordinates) instead of the image. As in
the paper's CIFAR-10 AE, the encoder ends in a ReLU (``z ≥ 0``) on a ``latent_dim × 1 × 1``
map, reached by stride-2 convolutions (32 → 16 → 8 → 4 → 1 for CIFAR-10, 8 → 4 → 1 for
digits); the decoder mirrors it with transposed convolutions and ends in a sigmoid (pixels in
[0, 1]).
"""

from __future__ import annotations

from typing import List

from torch import nn

from ...blackbox.program import check_count


def _downsamplings(image_size: int) -> int:
    """How many stride-2 steps take ``image_size`` to 4 (it must be 4·2^k)."""
    size = check_count("image_size", image_size, 4)
    steps = 0
    while size > 4 and size % 2 == 0:
        size //= 2
        steps += 1
    if size != 4:
        raise ValueError(f"Invalid image_size value: {image_size!r} (expected 4·2^k: 4, 8, 16, 32, ...)")
    return steps


def _check(channels, latent_dim, width):
    """The three sizes, validated."""
    return (
        check_count("channels", channels, 1),
        check_count("latent_dim", latent_dim, 1),
        check_count("width", width, 1),
    )


def build_encoder(channels: int, image_size: int, latent_dim: int, width: int = 32) -> nn.Sequential:
    """Image ``(B, channels, S, S)`` → latent ``(B, latent_dim, 1, 1)`` with ``z ≥ 0``.

    conv 3×3 (width) → ReLU, then per halving a 4×4 stride-2 conv doubling the channels →
    ReLU, then a 4×4 valid conv to ``latent_dim`` → ReLU.

    Args:
        channels: image channels.
        image_size: side ``S`` of the square images, ``4·2^k`` (4, 8, 16, 32, ...).
        latent_dim: latent coordinates ``d_z`` (what the ZO estimate runs over).
        width: channels of the first convolution (doubled per halving).

    Raises:
        ValueError: a size is not a positive integer, or ``image_size`` is not ``4·2^k``.
    """
    channels, latent_dim, width = _check(channels, latent_dim, width)
    layers: List[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]  # (B, w, S, S)
    c = width
    for _ in range(_downsamplings(image_size)):
        layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.ReLU(inplace=True)]  # (B, 2c, S/2, S/2)
        c *= 2
    layers += [nn.Conv2d(c, latent_dim, 4), nn.ReLU(inplace=True)]  # (B, d_z, 1, 1)
    return nn.Sequential(*layers)


def build_decoder(channels: int, image_size: int, latent_dim: int, width: int = 32) -> nn.Sequential:
    """Latent ``(B, latent_dim, 1, 1)`` → image ``(B, channels, S, S)`` in (0, 1): the encoder mirrored.

    Arguments as for :func:`build_encoder` (use the same values).

    Raises:
        ValueError: a size is not a positive integer, or ``image_size`` is not ``4·2^k``.
    """
    channels, latent_dim, width = _check(channels, latent_dim, width)
    steps = _downsamplings(image_size)
    c = width * 2**steps
    layers: List[nn.Module] = [nn.ConvTranspose2d(latent_dim, c, 4), nn.ReLU(inplace=True)]  # (B, c, 4, 4)
    for _ in range(steps):
        layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True)]  # (B, c/2, 2s, 2s)
        c //= 2
    layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Sigmoid()]  # (B, C, S, S)
    return nn.Sequential(*layers)
