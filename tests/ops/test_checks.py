"""Argument checks of zeroth.ops: the compiled ops (zeroth_checks.h) and the PyTorch references
(zeroth/ops/_checks.py) refuse the same bad inputs with the same exception type and message,
before reading memory; the activation kinds agree between Python and the C++ header."""

import re

import pytest
import torch

from zeroth import ops
from zeroth.ops import _checks, reference
from zeroth.ops._build import source_dir

from .conftest import compiled

LONG = torch.long
F64 = torch.float64


def _none():
    return torch.empty(0, dtype=LONG)


def _empty():
    return torch.empty(0, dtype=F64)


def t(*shape, dtype=F64):
    return torch.randn(*shape, dtype=torch.float64).to(dtype)


def idx(*values, dtype=LONG):
    return torch.tensor(values, dtype=dtype)


# (case id, op name, arguments, exception type, a piece of the message)
BAD = [
    # activation_difference(a, delta, kind, slope)
    (
        "act-delta-shape",
        "activation_difference",
        lambda: (t(3, 4), t(2, 5), 0, 0.0),
        ValueError,
        "delta must be (K, *a.shape)",
    ),
    (
        "act-delta-flat-copies",
        "activation_difference",
        lambda: (t(3, 4), t(2, 12), 0, 0.0),
        ValueError,
        "delta must be (K, *a.shape)",
    ),
    (
        "act-kind-high",
        "activation_difference",
        lambda: (t(3), t(2, 3), 6, 0.0),
        ValueError,
        "unknown activation kind 6",
    ),
    (
        "act-kind-negative",
        "activation_difference",
        lambda: (t(3), t(2, 3), -1, 0.0),
        ValueError,
        "unknown activation kind -1",
    ),
    (
        "act-int-a",
        "activation_difference",
        lambda: (idx(1, 2), t(2, 2), 0, 0.0),
        TypeError,
        "a must be torch.float32 or torch.float64 (got torch.int64)",
    ),
    (
        "act-mixed-dtypes",
        "activation_difference",
        lambda: (t(3), t(2, 3, dtype=torch.float32), 0, 0.0),
        TypeError,
        "delta must have the dtype of a (torch.float64; got torch.float32)",
    ),
    # activation_difference_confined(a, channels, delta, kind, slope)
    (
        "conf-channel-high",
        "activation_difference_confined",
        lambda: (t(2, 3, 4), idx(5), t(1, 2, 4), 0, 0.0),
        IndexError,
        "channels out of range: entries must lie in [0, 3), got [5, 5]",
    ),
    (
        "conf-channel-negative",
        "activation_difference_confined",
        lambda: (t(2, 3, 4), idx(0, -1), t(2, 2, 4), 2, 0.0),
        IndexError,
        "channels out of range",
    ),
    (
        "conf-float-channels",
        "activation_difference_confined",
        lambda: (t(2, 3, 4), torch.tensor([1.0], dtype=F64), t(1, 2, 4), 0, 0.0),
        TypeError,
        "channels must be an integer tensor (got torch.float64)",
    ),
    (
        "conf-bool-channels",
        "activation_difference_confined",
        lambda: (t(2, 3, 4), torch.tensor([True]), t(1, 2, 4), 0, 0.0),
        TypeError,
        "channels must be an integer tensor (got torch.bool)",
    ),
    (
        "conf-count",
        "activation_difference_confined",
        lambda: (t(2, 3, 4), idx(0, 1), t(3, 2, 4), 0, 0.0),
        ValueError,
        "delta must be (K, B, S) with K = len(channels)",
    ),
    (
        "conf-a-2d",
        "activation_difference_confined",
        lambda: (t(2, 3), idx(0), t(1, 2, 4), 0, 0.0),
        ValueError,
        "a must be (B, C, S) (got 2 dimensions)",
    ),
    # batchnorm_difference(a, delta, channels, weight, bias, eps)
    (
        "bn-weight-length",
        "batchnorm_difference",
        lambda: (t(4, 3, 5), t(2, 4, 3, 5), _none(), t(2), _empty(), 1e-5),
        ValueError,
        "weight must be (C,) with C = 3 or empty (got [2])",
    ),
    (
        "bn-bias-length",
        "batchnorm_difference",
        lambda: (t(4, 3, 5), t(2, 4, 3, 5), _none(), _empty(), t(4), 1e-5),
        ValueError,
        "bias must be (C,) with C = 3 or empty (got [4])",
    ),
    (
        "bn-channel-high",
        "batchnorm_difference",
        lambda: (t(4, 3, 5), t(1, 4, 5), idx(3), t(3), _empty(), 1e-5),
        IndexError,
        "channels out of range: entries must lie in [0, 3), got [3, 3]",
    ),
    (
        "bn-dense-shape",
        "batchnorm_difference",
        lambda: (t(4, 3, 5), t(2, 4, 2, 5), _none(), t(3), _empty(), 1e-5),
        ValueError,
        "dense delta must be (K, B, C, S)",
    ),
    (
        "bn-confined-shape",
        "batchnorm_difference",
        lambda: (t(4, 3, 5), t(2, 4, 5), idx(0), t(3), _empty(), 1e-5),
        ValueError,
        "confined delta must be (K, B, S) with K = len(channels)",
    ),
    # cross_entropy_difference(logits, targets, delta, channels)
    (
        "ce-target-high",
        "cross_entropy_difference",
        lambda: (t(2, 3), idx(0, 7), t(1, 2, 3), _none()),
        IndexError,
        "targets out of range: entries must lie in [0, 3), got [0, 7]",
    ),
    (
        "ce-ignore-index",
        "cross_entropy_difference",
        lambda: (t(2, 3), idx(-100, 1), t(1, 2, 3), _none()),
        IndexError,
        "ignore_index and probability targets are not supported",
    ),
    (
        "ce-ignore-index-confined",
        "cross_entropy_difference",
        lambda: (t(2, 3), idx(2, -100), t(2, 2), idx(0, 2)),
        IndexError,
        "targets out of range",
    ),
    (
        "ce-probability-targets",
        "cross_entropy_difference",
        lambda: (t(2, 3), torch.softmax(t(2, 3), 1), t(1, 2, 3), _none()),
        TypeError,
        "targets must be an integer tensor (got torch.float64)",
    ),
    (
        "ce-targets-2d",
        "cross_entropy_difference",
        lambda: (t(2, 3), idx(0, 1).reshape(2, 1), t(1, 2, 3), _none()),
        ValueError,
        "targets must be (B,) class indices with B = 2 (got [2, 1])",
    ),
    (
        "ce-targets-short",
        "cross_entropy_difference",
        lambda: (t(3, 3), idx(0, 1), t(1, 3, 3), _none()),
        ValueError,
        "targets must be (B,) class indices with B = 3",
    ),
    (
        "ce-channel-high",
        "cross_entropy_difference",
        lambda: (t(2, 3), idx(0, 1), t(1, 2), idx(3)),
        IndexError,
        "channels out of range: entries must lie in [0, 3), got [3, 3]",
    ),
    (
        "ce-delta-shape",
        "cross_entropy_difference",
        lambda: (t(2, 3), idx(0, 1), t(1, 2, 4), _none()),
        ValueError,
        "delta must be (K, B, C)",
    ),
    (
        "ce-int-logits",
        "cross_entropy_difference",
        lambda: (idx(1, 2).reshape(1, 2), idx(0), t(1, 1, 2), _none()),
        TypeError,
        "logits must be torch.float32 or torch.float64 (got torch.int64)",
    ),
    # head_cross_entropy_difference(x, logits, targets, mu, with_bias)
    (
        "head-target-high",
        "head_cross_entropy_difference",
        lambda: (t(2, 4), t(2, 3), idx(3, 0), 1e-3, True),
        IndexError,
        "targets out of range: entries must lie in [0, 3), got [0, 3]",
    ),
    (
        "head-ignore-index",
        "head_cross_entropy_difference",
        lambda: (t(2, 4), t(2, 3), idx(-100, 0), 1e-3, False),
        IndexError,
        "ignore_index",
    ),
    (
        "head-rows",
        "head_cross_entropy_difference",
        lambda: (t(3, 4), t(2, 3), idx(0, 1), 1e-3, True),
        ValueError,
        "x and logits must have one row per sample",
    ),
    # conv_weight_patches(x, c, i, j, out_h, out_w, sh, sw, ph, pw, dh, dw)
    (
        "conv-unequal-lengths",
        "conv_weight_patches",
        lambda: (t(1, 2, 4, 4), idx(0, 1), idx(0), idx(0, 0), 4, 4, 1, 1, 1, 1, 1, 1),
        ValueError,
        "c, i and j must have equal lengths (got 2, 1, 2)",
    ),
    (
        "conv-channel-high",
        "conv_weight_patches",
        lambda: (t(1, 2, 4, 4), idx(2), idx(0), idx(0), 4, 4, 1, 1, 1, 1, 1, 1),
        IndexError,
        "c out of range: entries must lie in [0, 2), got [2, 2]",
    ),
    (
        "conv-row-offset",
        "conv_weight_patches",
        lambda: (t(1, 2, 4, 4), idx(0), idx(3), idx(0), 4, 4, 1, 1, 1, 1, 1, 1),
        IndexError,
        "i out of range: entries must lie in [0, 3), got [3, 3] (kernel row offsets",
    ),
    (
        "conv-negative-column",
        "conv_weight_patches",
        lambda: (t(1, 2, 4, 4), idx(0), idx(0), idx(-1), 4, 4, 1, 1, 1, 1, 1, 1),
        IndexError,
        "j out of range",
    ),
    (
        "conv-stride-zero",
        "conv_weight_patches",
        lambda: (t(1, 2, 4, 4), idx(0), idx(0), idx(0), 4, 4, 0, 1, 1, 1, 1, 1),
        ValueError,
        "strides and dilations must be >= 1",
    ),
    (
        "conv-float-offsets",
        "conv_weight_patches",
        lambda: (t(1, 2, 4, 4), idx(0), torch.zeros(1), idx(0), 4, 4, 1, 1, 1, 1, 1, 1),
        TypeError,
        "i must be an integer tensor (got torch.float32)",
    ),
    # scatter_scaled_add(grad, indices, coeffs, scale)
    (
        "scatter-index-high",
        "scatter_scaled_add",
        lambda: (torch.zeros(4, dtype=F64), idx(4), t(1), 1.0),
        IndexError,
        "indices out of range: entries must lie in [0, 4), got [4, 4]",
    ),
    (
        "scatter-index-negative",
        "scatter_scaled_add",
        lambda: (torch.zeros(4, dtype=F64), idx(-1), t(1), 1.0),
        IndexError,
        "indices out of range",
    ),
    (
        "scatter-lengths",
        "scatter_scaled_add",
        lambda: (torch.zeros(4, dtype=F64), idx(0, 1), t(1), 1.0),
        ValueError,
        "one coefficient per index",
    ),
    (
        "scatter-2d-grad",
        "scatter_scaled_add",
        lambda: (torch.zeros(2, 2, dtype=F64), idx(0), t(1), 1.0),
        ValueError,
        "grad must be flat (1-D) and contiguous",
    ),
    (
        "scatter-strided-grad",
        "scatter_scaled_add",
        lambda: (torch.zeros(8, dtype=F64)[::2], idx(0), t(1), 1.0),
        ValueError,
        "grad must be flat (1-D) and contiguous",
    ),
]


def _raised(fn, args):
    with pytest.raises(Exception) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("case,op,make,exc,message", BAD, ids=[b[0] for b in BAD])
def test_the_reference_refuses_bad_input_with_a_message_naming_the_argument(case, op, make, exc, message):
    err = _raised(getattr(reference, op), make())
    assert type(err) is exc, f"{case}: {type(err).__name__}: {err}"
    assert message in str(err) and str(err).startswith(op + ": ")


@compiled
@pytest.mark.parametrize("case,op,make,exc,message", BAD, ids=[b[0] for b in BAD])
def test_the_compiled_op_refuses_it_exactly_as_the_reference(case, op, make, exc, message):
    args = make()
    snapshot = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    err = _raised(getattr(torch.ops.zeroth, op), args)
    want = _raised(getattr(reference, op), make())
    assert type(err) is type(want) is exc
    assert str(err).splitlines()[0] == str(want)
    for a, b in zip(args, snapshot):  # nothing was written (scatter_scaled_add works in place)
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b)


PUBLIC_BAD = [b for b in BAD if b[0] != "bn-bias-length"]  # the public op has no bias argument (β cancels)


@pytest.mark.parametrize("case,op,make,exc,message", PUBLIC_BAD, ids=[b[0] for b in PUBLIC_BAD])
def test_the_public_op_raises_the_same_whichever_path_runs(case, op, make, exc, message):
    """``zeroth.ops.<op>`` (compiled where built, else reference): the same error either way."""
    args = make()
    public = getattr(ops, op)
    if op == "batchnorm_difference":  # public form: channels None when dense, no bias argument
        a, delta, channels, weight, bias, eps = args
        call = (a, delta, channels if channels.numel() else None, weight if weight.numel() else None, eps)
    elif op == "conv_weight_patches":
        x, c, i, j, oh, ow, sh, sw, ph, pw, dh, dw = args
        call = (x, c, i, j, (oh, ow), (sh, sw), (ph, pw), (dh, dw))
    else:
        call = args
    err = _raised(public, call)
    assert type(err) is exc and message in str(err)
    with ops.reference_only():
        again = _raised(public, call)
    assert type(again) is exc and str(again) == str(err).splitlines()[0]


# -- devices and dtypes ---------------------------------------------------------------------------
def test_tensors_on_different_devices_are_refused_naming_both():
    """(A CUDA mix cannot be built on a CPU-only machine: the meta device stands in for it.)"""
    a = torch.randn(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"delta is on meta but a is on cpu \(all tensors must be on one device\)"):
        ops.activation_difference(a, torch.empty(1, 2, 3, dtype=F64, device="meta"), 0)
    with pytest.raises(ValueError, match="targets is on meta but logits is on cpu"):
        ops.cross_entropy_difference(a, torch.empty(2, dtype=LONG, device="meta"), torch.randn(1, 2, 3, dtype=F64))


@compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernels_refuse_half_precision_naming_the_argument_and_the_public_ops_run_the_reference(dtype):
    a, d = t(2, 3, 4, dtype=dtype), 1e-2 * t(2, 2, 3, 4, dtype=dtype)
    with pytest.raises(
        TypeError,
        match=rf"activation_difference: a must be torch.float32 or torch.float64 "
        rf"\(got {re.escape(str(dtype))}\)",
    ):
        torch.ops.zeroth.activation_difference(a, d, int(ops.Activation.GELU), 0.0)
    with pytest.raises(TypeError, match="cross_entropy_difference: logits must be"):
        torch.ops.zeroth.cross_entropy_difference(a[0], idx(0, 1), d[:, 0].to(F64), _none())
    with pytest.raises(TypeError, match="scatter_scaled_add: grad must be"):
        torch.ops.zeroth.scatter_scaled_add(torch.zeros(3, dtype=dtype), idx(1), t(1), 1.0)
    # the public ops take them: computed in float64 by the reference, rounded once
    got = ops.activation_difference(a, d, ops.Activation.GELU)
    assert got.dtype == dtype
    assert torch.equal(got, reference.activation_difference(a, d, ops.Activation.GELU, 0.0))
    logits, y = t(5, 3, dtype=dtype), idx(0, 2, 1, 1, 0)
    dl = 1e-2 * t(4, 5, 3, dtype=dtype)
    assert torch.equal(
        ops.cross_entropy_difference(logits, y, dl), reference.cross_entropy_difference(logits, y, dl, _none())
    )
    g = torch.zeros(3, dtype=dtype)
    ops.scatter_scaled_add(g, idx(1, 1), torch.ones(2, dtype=F64), 0.5)
    assert g.tolist() == [0.0, 1.0, 0.0]


@compiled
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_index_dtype_gives_the_long_result(index_dtype):
    z, y = t(6, 4), torch.randint(0, 4, (6,))
    ch, dc = idx(3, 0, 2), 1e-2 * t(3, 6)
    want = reference.cross_entropy_difference(z, y, dc, ch)
    for impl in (torch.ops.zeroth.cross_entropy_difference, reference.cross_entropy_difference):
        got = impl(z, y.to(index_dtype), dc, ch.to(index_dtype))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-16)
    a = t(2, 4, 5)
    d = 1e-2 * t(3, 2, 5)
    want = reference.activation_difference_confined(a, ch, d, 3, 0.0)
    for impl in (torch.ops.zeroth.activation_difference_confined, reference.activation_difference_confined):
        torch.testing.assert_close(impl(a, ch.to(index_dtype), d, 3, 0.0), want, rtol=1e-12, atol=1e-14)


@compiled
def test_conv_offsets_at_the_edge_of_the_window_are_accepted():
    """The largest offset every real Conv2d coordinate uses is in range (stride, dilation, padding)."""
    for h, k, s, p, d in [(7, 3, 1, 1, 1), (7, 3, 2, 0, 1), (9, 3, 1, 0, 3), (8, 5, 3, 2, 1), (5, 1, 1, 0, 1)]:
        conv = torch.nn.Conv2d(2, 1, k, stride=s, padding=p, dilation=d)
        x = t(1, 2, h, h, dtype=torch.float32)
        out = conv(x)
        c, i, j = idx(1, 0), idx(k - 1, 0), idx(0, k - 1)
        args = (out.shape[2], out.shape[3], s, s, p, p, d, d)
        torch.testing.assert_close(
            torch.ops.zeroth.conv_weight_patches(x, c, i, j, *args),
            reference.conv_weight_patches(x, c, i, j, *args),
            rtol=0,
            atol=0,
        )


# -- one activation enum ---------------------------------------------------------------------------
def test_the_python_activation_kinds_are_the_header_enum():
    header = (source_dir() / "zeroth_math.h").read_text()
    body = re.search(r"enum Activation\s*\{([^}]*)\}", header).group(1)
    entries = {name: int(value) for name, value in re.findall(r"k(\w+)\s*=\s*(\d+)", body)}
    count = entries.pop("NumActivations")
    assert count == len(ops.Activation)
    assert {n.lower(): v for n, v in entries.items()} == {
        k.name.replace("_", "").lower(): int(k) for k in ops.Activation
    }
    assert set(reference.ACTIVATION_FUNCTIONS) == set(ops.Activation)
    assert ops.ACTIVATIONS == tuple(k.name.lower() for k in sorted(ops.Activation))


def test_the_shared_checks_module_matches_the_kernel_dtypes():
    assert _checks.KERNEL_DTYPES == (torch.float32, torch.float64) == ops.KERNEL_DTYPES
