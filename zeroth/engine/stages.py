"""A model seen as a chain of stages, and running stages on stacked perturbed copies.

``stages(model)`` flattens nested ``nn.Sequential`` containers (or uses a model's own
``zo_stages()``) into the list of modules applied one after the other. A stage must treat
batch rows independently (so K perturbed copies can run as one batch of K·B rows) —
BatchNorm in train mode is the exception, handled by giving each copy its own batch
statistics (``run_copies``).

Layout of copies: on a CPU the cached pass of an image model runs channels-last
(:func:`fast_layout`), and K copies ``(K, B, C, H, W)`` of an activation are laid out like it,
each copy channels-last (:func:`copies_layout`): oneDNN's convolutions take NHWC without
reordering, and BatchNorm's channels-last kernel is faster too (one thread, ResNet-20 stage 1,
batch 256: a 16→16 3×3 convolution 117 ms NCHW vs 32 ms NHWC; BatchNorm 22 ms vs 9 ms). The
copies then repeat the cached pass's arithmetic exactly (an unperturbed copy reproduces the
cached logits bit for bit), so rounding cancels in their loss differences as it does between
two forwards of the perturb–evaluate–restore loop; a copy in another layout than the cached
pass would add the whole network's rounding noise to each difference.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def stages(model: nn.Module, containers: Optional[List[nn.Module]] = None) -> Optional[List[nn.Module]]:
    """The model's stages in order, or None when it does not declare a chain.

    ``containers``, when given, receives every module whose forward the chain stands in for: the
    model and each nested ``nn.Sequential`` it flattens (:func:`~.rules.chain_support` checks them).
    """
    declared = getattr(model, "zo_stages", None)
    if callable(declared):
        out = list(declared())
    elif isinstance(model, nn.Sequential):
        out = []
        for child in model:
            sub = stages(child, containers) if isinstance(child, nn.Sequential) else None
            out.extend(sub if sub is not None else [child])
    else:
        return None
    if containers is not None:
        containers.append(model)
    return out


def owns(modules, params) -> bool:
    """True when every tensor of ``params`` is a parameter of one of ``modules``."""
    owned = {id(p) for m in modules for p in m.parameters()}
    return all(id(p) in owned for p in params)


def residual_parts(block: nn.Module) -> Tuple[nn.Sequential, nn.Module, nn.Module]:
    """``(main, shortcut, post)`` of a residual block (``zo_residual``: ``forward(x) == post(main(x) + shortcut(x))``).

    For a block the caller has found residual (:func:`~.delta.is_residual`: ``main`` is an
    ``nn.Sequential``); ``shortcut`` and ``post`` are modules by the ``zo_residual`` contract.
    """
    return cast(nn.Sequential, block.main), cast(nn.Module, block.shortcut), cast(nn.Module, block.post)


def forward_cached(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` that never overwrites ``x`` (a cached activation): a module containing an
    in-place layer (``nn.ReLU(inplace=True)``, ...) gets a copy of its input."""
    if any(getattr(m, "inplace", False) for m in module.modules()):
        x = x.clone()
    return module(x)


def uses_batch_statistics(bn: nn.Module) -> bool:
    """True when BatchNorm ``bn``'s forward normalises with the batch's statistics, by torch's own rule
    (``_BatchNorm.forward``): in train mode, and in eval mode when it has no running buffers. In eval mode
    ``track_running_stats`` does not decide it: a module with buffers uses them even when the flag was set
    False after construction, and one built without buffers uses the batch's even when it was set True."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def has_batch_statistics(module: nn.Module) -> bool:
    """True when a forward of ``module`` uses batch statistics (a BatchNorm, see :func:`uses_batch_statistics`)."""
    return any(isinstance(m, _BN) and uses_batch_statistics(m) for m in module.modules())


@contextlib.contextmanager
def frozen_batchnorm_buffers(module: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm uses batch statistics but does not update running buffers."""
    changed = [m for m in module.modules() if isinstance(m, _BN) and m.training and m.track_running_stats]
    for m in changed:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


def copies_layout(a: Tensor) -> torch.memory_format:
    """The memory layout of K copies made from base activation ``a: (B, ...)``: ``a``'s own, so the
    copies repeat the base pass's arithmetic bit for bit (channels-last when ``a`` is)."""
    if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def fast_layout(x: Tensor) -> torch.memory_format:
    """The layout the cached pass (hence the copies) runs in for model input ``x``: channels-last for
    images ``(B, C, H, W)`` with ``C > 1`` on a CPU (one channel is both layouts at once, and the
    convolutions that follow keep the default), else ``x``'s own."""
    if x.dim() == 4 and x.device.type == "cpu" and x.shape[1] > 1:
        return torch.channels_last
    return copies_layout(x)


def empty_copies(a: Tensor, k: int) -> Tensor:
    """Uninitialised ``(K, *a.shape)`` copies of ``a``'s dtype/device, each in :func:`copies_layout`."""
    flat = torch.empty(
        (k * a.shape[0],) + tuple(a.shape[1:]), dtype=a.dtype, device=a.device, memory_format=copies_layout(a)
    )
    return flat.view((k,) + tuple(a.shape))


def _per_copy_channels_last(x: Tensor) -> bool:
    """True when ``x: (K, B, C, H, W)`` holds each copy channels-last and contiguous."""
    return x.dim() == 5 and x[0].is_contiguous(memory_format=torch.channels_last) and not x[0].is_contiguous()


def forward_copies(modules: Sequence[nn.Module], x: Tensor, owned: bool = True) -> Tensor:
    """``modules`` applied in turn to copies ``x: (K, B, ...)``, as :func:`run_copies` stage by stage.

    Intermediate results are fresh tensors, so ReLU/LeakyReLU and train-mode BatchNorm run in
    place on them and a residual block adds its shortcut in place, saving an allocation (and,
    for ReLU and the sum, a pass) each; ``x`` itself is written only when ``owned`` (the caller
    gives it away).
    """
    for m in modules:
        if not owned and any(getattr(sub, "inplace", False) for sub in m.modules()):
            x, owned = x.clone(), True  # an in-place layer must not overwrite the caller's tensor
        if owned and type(m) in (nn.ReLU, nn.LeakyReLU):
            slope = m.negative_slope if isinstance(m, nn.LeakyReLU) else 0.0
            x = x.relu_() if slope == 0.0 else torch.nn.functional.leaky_relu_(x, slope)
            continue
        if owned and isinstance(m, _BN) and uses_batch_statistics(m):
            x = batchnorm_copies(m, x, inplace=True)
            continue
        if getattr(m, "zo_residual", False) and isinstance(getattr(m, "main", None), nn.Sequential):
            layers, shortcut, post = residual_parts(m)
            main = forward_copies(list(layers), x, owned=False)
            short = run_copies(shortcut, x)
            if _fresh(main, x) and _fresh(main, short) and main.shape == short.shape:
                total = main.add_(short)
            else:
                total = main + short
            x = forward_copies([post], total, owned=True)
        else:
            out = run_copies(m, x)
            owned = owned or _fresh(out, x)
            x = out
    return x


def _fresh(out: Tensor, x: Tensor) -> bool:
    """True when ``out`` does not share memory with ``x``."""
    return out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


def run_copies(module: nn.Module, x: Tensor) -> Tensor:
    """``module`` applied to each of K copies ``x: (K, B, ...)`` -> ``(K, B, ...)``.

    Without batch statistics the copies run as one batch of K·B rows. With them each copy gets
    its own statistics (buffers are left untouched): a train-mode BatchNorm runs once with the
    copies folded into its channels (:func:`batchnorm_copies`); ``nn.Sequential`` and residual
    blocks (``zo_residual``) recurse into their parts; anything else goes through
    ``torch.func.vmap`` (measured on ResNet-20: vmap's BatchNorm cost a third of a copy's time).
    """
    k, b = x.shape[:2]
    if not has_batch_statistics(module):
        out = module(x.reshape(k * b, *x.shape[2:]))
        return out.reshape(k, b, *out.shape[1:])
    if isinstance(module, _BN):
        return batchnorm_copies(module, x)
    if isinstance(module, nn.Sequential):
        for m in module:
            x = run_copies(m, x)
        return x
    if getattr(module, "zo_residual", False) and isinstance(getattr(module, "main", None), nn.Sequential):
        layers, shortcut, post = residual_parts(module)
        return run_copies(post, run_copies(layers, x) + run_copies(shortcut, x))
    with frozen_batchnorm_buffers(module):
        return torch.func.vmap(module)(x)


def batchnorm_copies(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, inplace: bool = False) -> Tensor:
    """Train-mode BatchNorm of each copy of ``x: (K, B, C, ...)`` with its own batch statistics.

    Copies laid out channels-last (:func:`copies_layout`) are normalised one by one, each by
    BatchNorm's channels-last kernel into its slice of one output — into ``x`` itself when
    ``inplace`` (and the kernel is seen to allow it, :func:`_batchnorm_in_place_is_exact`).
    Otherwise the copies become K·C channels of one batch, ``(B, K·C, ...)``, normalised by one
    call with the affine parameters repeated K times. Running statistics are not touched.
    """
    k, b, c = x.shape[:3]
    if _per_copy_channels_last(x) and not torch.is_grad_enabled():  # (out= takes no autograd)
        out = x if inplace and _batchnorm_in_place_is_exact() else torch.empty_like(x)  # the same per-copy layout
        stats = x.new_empty((2, c))
        for i in range(k):
            torch.ops.aten.native_batch_norm.out(
                x[i],
                bn.weight,
                bn.bias,
                None,
                None,
                True,
                0.0,
                bn.eps,
                out=out[i],
                save_mean=stats[0],
                save_invstd=stats[1],
            )
        return out
    rest = x.shape[3:]
    folded = x.transpose(0, 1).reshape(b, k * c, *rest)
    weight = bn.weight.repeat(k) if bn.weight is not None else None
    bias = bn.bias.repeat(k) if bn.bias is not None else None
    out = torch.nn.functional.batch_norm(folded, None, None, weight, bias, True, 0.0, bn.eps)
    return out.reshape(b, k, c, *rest).transpose(0, 1)


_IN_PLACE: Dict[str, bool] = {}


def _batchnorm_in_place_is_exact() -> bool:
    """Whether BatchNorm's channels-last CPU kernel gives bitwise the same result written over its
    input (it gathers the statistics first, then transforms element by element). Checked once per
    process on a small tensor, so a kernel that ever reads after writing is never used in place."""
    if "cpu" not in _IN_PLACE:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(6, 20, 7, 9, generator=g).contiguous(memory_format=torch.channels_last)
        w, bias = torch.rand(20, generator=g) + 0.5, torch.randn(20, generator=g)
        want = torch.nn.functional.batch_norm(x, None, None, w, bias, True, 0.0, 1e-5)
        got = x.clone()
        stats = got.new_empty((2, 20))
        with torch.no_grad():
            torch.ops.aten.native_batch_norm.out(
                got, w, bias, None, None, True, 0.0, 1e-5, out=got, save_mean=stats[0], save_invstd=stats[1]
            )
        _IN_PLACE["cpu"] = bool(torch.equal(got, want))
    return _IN_PLACE["cpu"]
