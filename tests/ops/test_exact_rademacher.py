"""The exact Rademacher ops (``rademacher_involution_``, ``rademacher_sgd_``): each PyTorch reference
equals the slow obvious computation (fractions: is the partner exactly representable?), the
compiled kernels equal the references bitwise in every dtype (a NaN may come back with another
payload), and both refuse bad input with the same exception and message."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from zeroth import ops
from zeroth.ops import reference
from zeroth.ops._checks import EXACT_STEP_EXPONENTS

from .conftest import compiled

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
INT = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}
Z = torch.ops.zeroth


def same_bits(a, b):
    """Bitwise equal, except that a NaN may have another payload."""
    return bool(((a.view(INT[a.dtype]) == b.view(INT[b.dtype])) | (a.isnan() & b.isnan())).all())


def words_for(n, rows, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.empty(rows, -(-n // 64), dtype=torch.int64).random_(generator=g)


def values(dtype, n, seed=0):
    """Random bit patterns (every binade, subnormals, inf, NaN), values near a = 2^-10 on both
    sides of 0, and the special cases."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.empty(n, dtype=INT[dtype]).random_(generator=g).view(dtype)
    near = (torch.randn(n, generator=g, dtype=torch.float64) * 4e-3).to(dtype)
    special = torch.tensor(
        [0.0, -0.0, math.inf, -math.inf, math.nan, 2.0**-9, -(2.0**-9), 2.0**-10, 2.0**-9 - 2.0**-20, 1.0, 300.0],
        dtype=torch.float64,
    ).to(dtype)
    return torch.cat([raw[: n // 2], near[: n - n // 2], special])


# -- the references against the obvious computation ------------------------------------------
def partner_exact(v: float, step: Fraction, dtype) -> bool:
    """Is v + step a value of dtype (computed with fractions)? -0.0 and non-finite values never move."""
    if not math.isfinite(v) or (v == 0.0 and math.copysign(1.0, v) < 0):
        return False
    target = Fraction(v) + step
    t = float(target)
    if Fraction(t) != target:
        return False
    return float(torch.tensor(t, dtype=torch.float64).to(dtype).double()) == t


def sigma(v: float, a: float) -> int:
    return -1 if math.floor(Fraction(v) / Fraction(a)) % 2 else 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_involution_moves_exactly_where_the_partner_exists(dtype):
    a = 2.0**-10
    x = values(dtype, 300, seed=1)
    x = x[torch.isfinite(x) & (x.double().abs() < 1e4)]  # moderate values (huge ones never move either)
    bits = reference.rademacher_bits(words_for(x.numel(), 1, 2)[0], 0, x.numel()).tolist()
    for sign in (1.0, -1.0):
        out = reference.rademacher_involution_(x.clone(), words_for(x.numel(), 1, 2), [sign], a)
        moved = 0
        for k, v in enumerate(x.double().tolist()):
            step = Fraction(sign) * (2 * bits[k] - 1) * sigma(v, a) * Fraction(a)
            want = float(Fraction(v) + step) if partner_exact(v, step, dtype) else v
            got = float(out[k].double())
            assert got == want and math.copysign(1, got) == math.copysign(1, want), (k, v)
            moved += got != v
        assert moved > x.numel() // 4  # the test exercises both outcomes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("antithetic", [True, False])
def test_reference_sgd_is_the_update_from_the_applied_displacement(dtype, antithetic):
    """x·decay + scale·Σ w_k D_k/a formed in the wide dtype and rounded once; below 2a onto the lattice."""
    a, scale, decay, weights = 2.0**-10, -0.37, 0.999, [0.7, -1.3]
    x = values(dtype, 200, seed=3)
    x = x[torch.isfinite(x) & (x.double().abs() < 1e4)]
    n = x.numel()
    words = words_for(n, 2, 4)
    got = reference.rademacher_sgd_(
        x.clone(), torch.empty(0, 0, dtype=torch.int64), [], words, weights, a, scale, decay, antithetic
    )
    wide = np.float32 if dtype == torch.bfloat16 else np.float64
    q = reference.lattice(a, dtype)
    rows = [reference.rademacher_bits(words[k], 0, n).tolist() for k in range(2)]
    for t, v in enumerate(x.double().tolist()):
        total = wide(0.0)
        for k, w in enumerate(weights):
            r = 2 * rows[k][t] - 1
            u = r * sigma(v, a)
            plus = partner_exact(v, Fraction(u) * Fraction(a), dtype)
            minus = partner_exact(v, -Fraction(u) * Fraction(a), dtype)
            d = u * ((plus + minus) / 2 if antithetic else plus)
            total = total + wide(d) * wide(w) if k else wide(d) * wide(w)
        xw = wide(v) * wide(decay) + total * wide(scale)
        want = float(np.round(xw / wide(q)) * wide(q)) if abs(xw) < 2 * a else float(xw)
        want = float(torch.tensor(want, dtype=torch.float64).to(dtype).double())
        assert float(got[t].double()) == want, (t, v)


# -- the compiled kernels against the references ---------------------------------------------
def step_exponents(dtype):
    lo, hi = EXACT_STEP_EXPONENTS[dtype]
    return sorted({lo, hi, -10, -1, max(lo, -30), min(hi, 3)})


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_involution_kernel_equals_the_reference_and_is_an_involution(dtype):
    for n in (1, 63, 64, 65, 4097):
        x = values(dtype, n, seed=n)
        w = words_for(x.numel(), 3, n + 1)
        for k in step_exponents(dtype):
            for signs in ([1.0], [-1.0], [1.0, -1.0], [-1.0, 1.0, 1.0]):
                rows = w[: len(signs)].contiguous()
                got = Z.rademacher_involution_(x.clone(), rows, signs, 2.0**k)
                want = reference.rademacher_involution_(x.clone(), rows, signs, 2.0**k)
                assert same_bits(got, want), (n, k, signs)
                back = Z.rademacher_involution_(got, rows.flip(0).contiguous(), signs[::-1], 2.0**k)
                assert torch.equal(back.view(INT[dtype]), x.view(INT[dtype])), (n, k, signs)  # NaN too


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("antithetic", [True, False])
def test_sgd_kernel_equals_the_reference(dtype, antithetic):
    for n in (1, 65, 3000):
        x = values(dtype, n, seed=n + 7)
        w = words_for(x.numel(), 3, n)
        for k in step_exponents(dtype):
            for undo in (0, 1):
                for dirs, weights in ((0, []), (1, [0.7]), (3, [0.7, -1.3, 1e-3])):
                    for scale, decay in ((-3e-3, 1.0), (5.0, 0.9999)):
                        args = (
                            w[:undo].contiguous(),
                            [-1.0] * undo,
                            w[:dirs].contiguous(),
                            weights,
                            2.0**k,
                            scale,
                            decay,
                            antithetic,
                        )
                        got = Z.rademacher_sgd_(x.clone(), *args)
                        want = reference.rademacher_sgd_(x.clone(), *args)
                        assert same_bits(got, want), (n, k, undo, dirs, scale, decay)


EXPECTED = {torch.float16: "kernel", torch.bfloat16: "kernel", torch.float32: "kernel", torch.float64: "kernel"}
"""What serves the exact ops on CPU where the kernels are built: the kernel, in every dtype."""


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_runs_the_kernel(dtype, monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "rademacher_involution_", lambda *a: calls.append(a) or a[0])
    monkeypatch.setattr(reference, "rademacher_sgd_", lambda *a: calls.append(a) or a[0])
    x, w = values(dtype, 64), words_for(64 + 11, 1, 0)
    ops.rademacher_involution_(x, w, [1.0], 2.0**-10)
    ops.rademacher_sgd_(x, w, [1.0], w, [0.5], 2.0**-10, -1e-3, 1.0, True)
    assert ("reference" if calls else "kernel") == EXPECTED[dtype]
    with ops.reference_only():
        ops.rademacher_involution_(x, w, [1.0], 2.0**-10)
        ops.rademacher_sgd_(x, w, [1.0], w, [0.5], 2.0**-10, -1e-3, 1.0, True)
    assert len(calls) == 2


# -- bad input ---------------------------------------------------------------------------------
def _x(n=10, dtype=torch.float32):
    return torch.zeros(n, dtype=dtype)


def _w(rows=1, cols=1, dtype=torch.int64):
    return torch.zeros(rows, cols, dtype=dtype)


A = 2.0**-10
# (case, op, arguments, exception, a piece of the message)
BAD = [
    (
        "x-int",
        "rademacher_involution_",
        lambda: (_x(dtype=torch.int32), _w(), [1.0], A),
        TypeError,
        "x must be torch.float16, torch.bfloat16, torch.float32 or torch.float64 (got torch.int32)",
    ),
    (
        "x-complex",
        "rademacher_involution_",
        lambda: (_x(dtype=torch.complex64), _w(), [1.0], A),
        TypeError,
        "(got torch.complex64)",
    ),
    (
        "x-2d",
        "rademacher_involution_",
        lambda: (torch.zeros(2, 5), _w(), [1.0], A),
        ValueError,
        "x must be flat (1-D) and contiguous",
    ),
    (
        "x-strided",
        "rademacher_involution_",
        lambda: (torch.zeros(20)[::2], _w(), [1.0], A),
        ValueError,
        "x must be flat (1-D) and contiguous",
    ),
    (
        "words-int32",
        "rademacher_involution_",
        lambda: (_x(), _w(dtype=torch.int32), [1.0], A),
        TypeError,
        "words must be an int64 tensor of packed bits (got torch.int32)",
    ),
    (
        "words-rows",
        "rademacher_involution_",
        lambda: (_x(), _w(rows=2), [1.0], A),
        ValueError,
        "words must be a contiguous (1, W) int64 tensor, one row per sign, with W >= ceil(x.numel() / 64) = 1 "
        "(got [2, 1])",
    ),
    (
        "words-short",
        "rademacher_involution_",
        lambda: (_x(65), _w(cols=1), [1.0], A),
        ValueError,
        "W >= ceil(x.numel() / 64) = 2 (got [1, 1])",
    ),
    (
        "words-1d",
        "rademacher_involution_",
        lambda: (_x(), torch.zeros(1, dtype=torch.int64), [1.0], A),
        ValueError,
        "words must be a contiguous (1, W) int64 tensor",
    ),
    (
        "words-strided",
        "rademacher_involution_",
        lambda: (_x(), _w(cols=4)[:, ::2], [1.0], A),
        ValueError,
        "words must be a contiguous (1, W) int64 tensor",
    ),
    (
        "sign",
        "rademacher_involution_",
        lambda: (_x(), _w(rows=2), [1.0, 0.5], A),
        ValueError,
        "signs must be +1 or -1 (entry 1 is not)",
    ),
    (
        "a-not-power",
        "rademacher_involution_",
        lambda: (_x(), _w(), [1.0], 1e-3),
        ValueError,
        "a must be a power of two 2^k with -127 <= k <= 126 for x of dtype torch.float32",
    ),
    ("a-zero", "rademacher_involution_", lambda: (_x(), _w(), [1.0], 0.0), ValueError, "a must be a power of two"),
    ("a-nan", "rademacher_involution_", lambda: (_x(), _w(), [1.0], math.nan), ValueError, "a must be a power of two"),
    ("a-negative", "rademacher_involution_", lambda: (_x(), _w(), [1.0], -A), ValueError, "a must be a power of two"),
    (
        "a-fp16-large",
        "rademacher_involution_",
        lambda: (_x(dtype=torch.float16), _w(), [1.0], 2.0**15),
        ValueError,
        "2^k with -24 <= k <= 14 for x of dtype torch.float16",
    ),
    (
        "a-bf16-small",
        "rademacher_involution_",
        lambda: (_x(dtype=torch.bfloat16), _w(), [1.0], 2.0**-122),
        ValueError,
        "2^k with -121 <= k <= 126 for x of dtype torch.bfloat16",
    ),
    (
        "a-fp64-small",
        "rademacher_involution_",
        lambda: (_x(dtype=torch.float64), _w(), [1.0], 2.0**-973),
        ValueError,
        "2^k with -972 <= k <= 1022 for x of dtype torch.float64",
    ),
    (
        "sgd-x-int",
        "rademacher_sgd_",
        lambda: (_x(dtype=torch.int64), _w(0, 0), [], _w(), [1.0], A, 1.0, 1.0, True),
        TypeError,
        "rademacher_sgd_: x must be torch.float16",
    ),
    (
        "sgd-undo-rows",
        "rademacher_sgd_",
        lambda: (_x(), _w(0, 0), [1.0], _w(), [1.0], A, 1.0, 1.0, True),
        ValueError,
        "undo_words must be a contiguous (1, W) int64 tensor, one row per undo sign",
    ),
    (
        "sgd-undo-sign",
        "rademacher_sgd_",
        lambda: (_x(), _w(), [2.0], _w(), [1.0], A, 1.0, 1.0, True),
        ValueError,
        "undo_signs must be +1 or -1 (entry 0 is not)",
    ),
    (
        "sgd-weights",
        "rademacher_sgd_",
        lambda: (_x(), _w(0, 0), [], _w(), [1.0, 2.0], A, 1.0, 1.0, True),
        ValueError,
        "words must be a contiguous (2, W) int64 tensor, one row per weight",
    ),
    (
        "sgd-words-dtype",
        "rademacher_sgd_",
        lambda: (_x(), _w(0, 0), [], _w(dtype=torch.float64), [1.0], A, 1.0, 1.0, True),
        TypeError,
        "words must be an int64 tensor",
    ),
    (
        "sgd-a",
        "rademacher_sgd_",
        lambda: (_x(), _w(0, 0), [], _w(), [1.0], 3.0, 1.0, 1.0, True),
        ValueError,
        "rademacher_sgd_: a must be a power of two",
    ),
]


@pytest.mark.parametrize("case,op,make,exc,message", BAD, ids=[b[0] for b in BAD])
def test_reference_refuses_bad_input(case, op, make, exc, message):
    args = make()
    before = args[0].clone()
    with pytest.raises(exc) as err:
        getattr(reference, op)(*args)
    assert message in str(err.value)
    assert torch.equal(args[0], before)  # nothing written


@compiled
@pytest.mark.parametrize("case,op,make,exc,message", BAD, ids=[b[0] for b in BAD])
def test_kernel_refuses_bad_input_as_the_reference_does(case, op, make, exc, message):
    args = make()
    before = args[0].clone()
    with pytest.raises(exc) as err:
        getattr(Z, op)(*args)
    assert message in str(err.value)
    assert torch.equal(args[0], before)


# -- the CUDA twin (a machine with a GPU) -------------------------------------------------------
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or ops.backend() != "cpp+cuda", reason="no GPU with the CUDA kernels built"
)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_equal_the_references(dtype):
    for n in (1, 65, 5000):
        x = values(dtype, n, seed=n).cuda()
        w = words_for(x.numel(), 3, n).cuda()
        for k in step_exponents(dtype):
            a = 2.0**k
            for signs in ([1.0], [1.0, -1.0]):
                rows = w[: len(signs)].contiguous()
                got = Z.rademacher_involution_(x.clone(), rows, signs, a)
                assert same_bits(got, reference.rademacher_involution_(x.clone(), rows, signs, a)), (n, k, signs)
                back = Z.rademacher_involution_(got, rows.flip(0).contiguous(), signs[::-1], a)
                assert torch.equal(back.view(INT[dtype]), x.view(INT[dtype]))
            for antithetic in (True, False):
                args = (w[:1].contiguous(), [-1.0], w[:3].contiguous(), [0.7, -1.3, 1e-3], a, -3e-3, 0.999, antithetic)
                got = Z.rademacher_sgd_(x.clone(), *args)
                assert same_bits(got, reference.rademacher_sgd_(x.clone(), *args)), (n, k, antithetic)


@needs_gpu
def test_cuda_kernels_refuse_bad_input_as_the_references_do():
    for case, op, make, exc, message in BAD:
        if case in ("x-strided", "words-strided"):  # .cuda() would make them contiguous
            continue
        args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in make()]
        with pytest.raises(exc) as err:
            getattr(Z, op)(*args)
        assert message in str(err.value), case
    with pytest.raises(ValueError, match="words is on cpu but x is on cuda:0"):
        Z.rademacher_involution_(torch.zeros(4, device="cuda"), _w(), [1.0], A)
