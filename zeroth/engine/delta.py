r"""Difference propagation: push only the *change* of K perturbed copies through a stage.

The unperturbed pass caches every stage input ``a_t`` and output ``a_{t+1}``. A coordinate
of a Linear/Conv weight changes one output channel, so its copy differs from the base by a
``Delta`` that is often confined to one channel. Through the following stages:

* linear ops (Linear, Conv without bias, average pooling, eval-mode BatchNorm) act on Δ alone,
  and a Δ confined to input channel ``c`` only needs that channel's slice of the weight:
  ``Δout = W[:, c] ⊛ Δ_c``;
* nonlinear elementwise ops form ``σ(a + Δ) − σ(a)`` from the cached ``a`` (exact finite
  difference, not a linearisation), staying confined to the same channel;
* train-mode BatchNorm recomputes each copy's batch statistics (only the changed channel's);
* max pooling takes ``pool(a + Δ) − pool(a)``.

Any other module "materialises" the copies (``a + Δ``) and the rest runs on full copies.
Shapes: dense ``values`` are ``(K, B, C, *spatial)``; confined ones ``(K, B, *spatial)``
with ``channels: (K,)`` naming the channel (dim 1 of the activation) of each copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stages import ELEMENTWISE, run_copies

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Delta:
    """Difference of K copies from the base activation; ``channels`` set when confined."""

    values: Tensor
    channels: Optional[Tensor] = None

    @property
    def k(self) -> int:
        return self.values.shape[0]

    def dense(self, like: Tensor) -> Tensor:
        """``(K, B, C, ...)`` differences; ``like`` is the base activation ``(B, C, ...)``.

        A confined copy occupies one block of ``values[k, 0].numel()`` consecutive entries of
        each row (one channel, or after a Flatten that channel's features).
        """
        if self.channels is None:
            return self.values
        k, b = self.values.shape[:2]
        block = self.values[0, 0].numel()
        out = self.values.new_zeros((k, b, like[0].numel() // block, block))
        out[torch.arange(k, device=out.device), :, self.channels] = self.values.reshape(k, b, block)
        return out.reshape((k,) + tuple(like.shape))

    def same_layout(self, a: Tensor) -> bool:
        """True when confined values are whole channels of ``a`` (not a block of flattened features)."""
        return self.channels is None or tuple(self.values.shape[2:]) == tuple(a.shape[2:])


def gather_channels(a: Tensor, channels: Tensor, block_shape=None) -> Tensor:
    """``a[:, c_k]`` for every copy: ``(B, C, ...)`` -> ``(K, B, ...)`` (blocks of ``block_shape``)."""
    if block_shape is None:
        return a.transpose(0, 1)[channels]
    block = 1
    for s in block_shape:
        block *= s
    b = a.shape[0]
    return a.reshape(b, -1, block).transpose(0, 1)[channels].reshape((channels.numel(), b) + tuple(block_shape))


def propagate(module: nn.Module, a_in: Tensor, a_out: Tensor, delta: Delta) -> Optional[Delta]:
    """The Delta after ``module`` (base input ``a_in``, base output ``a_out``), or None if unsupported."""
    if isinstance(module, (nn.Identity,)) or (isinstance(module, nn.Dropout) and (not module.training or module.p == 0)):
        return delta
    if isinstance(module, ELEMENTWISE):
        if delta.channels is None:
            return Delta(module(a_in.unsqueeze(0) + delta.values) - a_out.unsqueeze(0))
        blk = delta.values.shape[2:]
        a_c = gather_channels(a_in, delta.channels, blk)
        return Delta(module(a_c + delta.values) - gather_channels(a_out, delta.channels, blk), delta.channels)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            return None
        if delta.channels is None:
            return Delta(delta.values.reshape(delta.k, a_in.shape[0], -1))
        return Delta(delta.values.reshape(delta.k, a_in.shape[0], -1), delta.channels)
    if isinstance(module, nn.Linear):
        return _linear(module, a_in, delta)
    if isinstance(module, nn.Conv2d):
        return _conv2d(module, a_in, delta)
    if not delta.same_layout(a_in):  # a block of flattened features: continue densely
        delta = Delta(delta.dense(a_in))
    if isinstance(module, _BN):
        return _batchnorm(module, a_in, a_out, delta)
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _per_channel(module, delta)  # linear: pool(Δ)
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        if getattr(module, "return_indices", False):
            return None
        if delta.channels is None:
            full = a_in.unsqueeze(0) + delta.values
            return Delta(run_copies(module, full) - a_out.unsqueeze(0))
        a_c = gather_channels(a_in, delta.channels)
        pooled = module((a_c + delta.values).flatten(0, 1).unsqueeze(1)).squeeze(1)
        return Delta(pooled.reshape(delta.k, a_in.shape[0], *pooled.shape[1:]) - gather_channels(a_out, delta.channels),
                     delta.channels)
    return None


def _per_channel(module: nn.Module, delta: Delta) -> Delta:
    """A linear op acting on each channel separately, applied to Δ."""
    v = delta.values
    if delta.channels is None:
        out = module(v.flatten(0, 1))
        return Delta(out.reshape(v.shape[0], v.shape[1], *out.shape[1:]))
    out = module(v.flatten(0, 1).unsqueeze(1)).squeeze(1)
    return Delta(out.reshape(v.shape[0], v.shape[1], *out.shape[1:]), delta.channels)


def _linear(module: nn.Linear, a_in: Tensor, delta: Delta) -> Optional[Delta]:
    if a_in.dim() != 2:
        return None
    w = module.weight  # (O, I)
    if delta.channels is None:
        return Delta(delta.values @ w.t())
    k, b = delta.values.shape[:2]
    v = delta.values.reshape(k, b, -1)  # (K, B, block): channel c owns features [c·block, (c+1)·block)
    block = v.shape[2]
    w_c = w.reshape(w.shape[0], -1, block)[:, delta.channels, :]  # (O, K, block)
    return Delta(torch.einsum("kbx,okx->kbo", v, w_c))


def _conv2d(module: nn.Conv2d, a_in: Tensor, delta: Delta) -> Optional[Delta]:
    if module.padding_mode != "zeros":
        return None
    conv = dict(stride=module.stride, padding=module.padding, dilation=module.dilation)
    if delta.channels is None:
        v = delta.values
        out = F.conv2d(v.flatten(0, 1), module.weight, None, groups=module.groups, **conv)
        return Delta(out.reshape(v.shape[0], v.shape[1], *out.shape[1:]))
    if module.groups != 1:
        return None
    k, b = delta.values.shape[:2]
    out = None
    for c in torch.unique(delta.channels).tolist():  # one small conv per changed input channel
        sel = (delta.channels == c).nonzero().reshape(-1)
        part = F.conv2d(delta.values[sel].flatten(0, 1).unsqueeze(1), module.weight[:, c:c + 1], None, **conv)
        if out is None:
            out = part.new_empty((k, b) + tuple(part.shape[1:]))
        out[sel] = part.reshape(sel.numel(), b, *part.shape[1:])
    return Delta(out)


def _batchnorm(module: nn.modules.batchnorm._BatchNorm, a_in: Tensor, a_out: Tensor, delta: Delta) -> Delta:
    uses_batch = module.training or not module.track_running_stats
    weight = module.weight if module.affine else None
    bias = module.bias if module.affine else None
    if not uses_batch:  # eval mode: Δ · γ / sqrt(running_var + eps), per channel
        scale = torch.rsqrt(module.running_var + module.eps)
        if weight is not None:
            scale = scale * weight
        if delta.channels is None:
            shape = (1, 1, -1) + (1,) * (delta.values.dim() - 3)
            return Delta(delta.values * scale.reshape(shape))
        shape = (-1,) + (1,) * (delta.values.dim() - 1)
        return Delta(delta.values * scale[delta.channels].reshape(shape), delta.channels)
    if delta.channels is None:  # (K, B, C, *sp): statistics over B and spatial, per copy and channel
        x = a_in.unsqueeze(0) + delta.values
        dims = (1,) + tuple(range(3, x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + module.eps)
        if weight is not None:
            shape = (1, 1, -1) + (1,) * (x.dim() - 3)
            y = y * weight.reshape(shape) + bias.reshape(shape)
        return Delta(y - a_out.unsqueeze(0))
    x = gather_channels(a_in, delta.channels) + delta.values  # (K, B, *sp)
    dims = tuple(range(1, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + module.eps)
    if weight is not None:
        shape = (-1,) + (1,) * (x.dim() - 1)
        y = y * weight[delta.channels].reshape(shape) + bias[delta.channels].reshape(shape)
    return Delta(y - gather_channels(a_out, delta.channels), delta.channels)
