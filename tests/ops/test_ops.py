"""zeroth.ops: each compiled kernel equals its PyTorch reference, and each reference equals
the slow obvious computation (perturb, run the module, subtract)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zeroth import ops
from zeroth.ops import reference

from .conftest import KERNELS_EXPECTED, compiled

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-6, atol=1e-7)}
DTYPES = [torch.float64, torch.float32]
MODULES = [nn.ReLU(), nn.LeakyReLU(0.1), nn.GELU(), nn.SiLU(), nn.Tanh(), nn.Sigmoid()]


def kernel(name):
    return getattr(torch.ops.zeroth, name)


def close(a, b, dtype):
    torch.testing.assert_close(a, b, **TOL[dtype])


# -- references against the obvious computation --------------------------------------------
@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_activation_reference_is_the_finite_difference(module):
    kind, slope = ops.activation_kind(module)
    a = torch.randn(3, 4, 5, dtype=torch.float64)
    d = 1e-3 * torch.randn(6, 3, 4, 5, dtype=torch.float64)
    want = module(a.unsqueeze(0) + d) - module(a).unsqueeze(0)
    torch.testing.assert_close(reference.activation_difference(a, d, kind, slope), want, rtol=1e-9, atol=1e-15)
    ch = torch.tensor([0, 3, 3, 1, 2, 0])
    dc = 1e-3 * torch.randn(6, 3, 5, dtype=torch.float64)
    dense = torch.zeros(6, 3, 4, 5, dtype=torch.float64)
    dense[torch.arange(6), :, ch] = dc
    full = module(a.unsqueeze(0) + dense) - module(a).unsqueeze(0)
    got = reference.activation_difference_confined(a, ch, dc, kind, slope)
    torch.testing.assert_close(got, full[torch.arange(6), :, ch], rtol=1e-9, atol=1e-15)


def test_unsupported_activations_have_no_kind():
    assert ops.activation_kind(nn.GELU(approximate="tanh")) is None
    assert ops.activation_kind(nn.ELU()) is None


def test_batchnorm_reference_matches_per_copy_batch_norm():
    a = torch.randn(8, 3, 5, dtype=torch.float64)
    gamma = torch.rand(3, dtype=torch.float64) + 0.5
    d = 1e-2 * torch.randn(4, 8, 3, 5, dtype=torch.float64)

    def bn(x):
        return F.batch_norm(x, None, None, gamma, torch.zeros(3, dtype=torch.float64), training=True, eps=1e-5)

    want = torch.stack([bn(a + dk) - bn(a) for dk in d])
    torch.testing.assert_close(
        ops.reference.batchnorm_difference(a, d, torch.empty(0, dtype=torch.long), gamma, torch.empty(0), 1e-5),
        want,
        rtol=1e-9,
        atol=1e-14,
    )
    ch = torch.tensor([2, 0, 2, 1])
    dc = d[torch.arange(4), :, ch]
    conf = torch.zeros_like(d)
    conf[torch.arange(4), :, ch] = dc
    want_c = torch.stack([bn(a + dk) - bn(a) for dk in conf])[torch.arange(4), :, ch]
    got = ops.reference.batchnorm_difference(a, dc, ch, gamma, torch.empty(0), 1e-5)
    torch.testing.assert_close(got, want_c, rtol=1e-9, atol=1e-14)


def test_cross_entropy_references_match_direct_losses():
    z = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    d = 1e-2 * torch.randn(3, 7, 5, dtype=torch.float64)
    want = torch.stack([F.cross_entropy(z + dk, y) - F.cross_entropy(z, y) for dk in d])
    torch.testing.assert_close(
        reference.cross_entropy_difference(z, y, d, torch.empty(0, dtype=torch.long)), want, rtol=1e-9, atol=1e-15
    )
    ch = torch.tensor([4, 0, 4])
    dc = d[:, :, 0]
    dense = torch.zeros_like(d)
    dense[torch.arange(3), :, ch] = dc
    want_c = torch.stack([F.cross_entropy(z + dk, y) - F.cross_entropy(z, y) for dk in dense])
    torch.testing.assert_close(reference.cross_entropy_difference(z, y, dc, ch), want_c, rtol=1e-9, atol=1e-15)
    # a huge change neither overflows nor loses the answer
    big = torch.full((1, 7), 80.0, dtype=torch.float64)
    dense = torch.zeros(1, 7, 5, dtype=torch.float64)
    dense[0, :, 2] = 80.0
    want_big = F.cross_entropy(z + dense[0], y) - F.cross_entropy(z, y)
    torch.testing.assert_close(reference.cross_entropy_difference(z, y, big, torch.tensor([2]))[0], want_big)


def test_head_reference_matches_perturbed_linear_layers():
    head = nn.Linear(6, 4).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (9,))
    z = head(x).detach()
    mu = 1e-3
    got = reference.head_cross_entropy_difference(x, z, y, mu, True)
    base = F.cross_entropy(z, y)
    want = torch.empty(4, 7, dtype=torch.float64)
    with torch.no_grad():
        for o in range(4):
            for i in range(7):
                p = head.weight if i < 6 else head.bias
                idx = (o, i) if i < 6 else (o,)
                p[idx] += mu
                want[o, i] = F.cross_entropy(head(x), y) - base
                p[idx] -= mu
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-13)
    bias_only = reference.head_cross_entropy_difference(x[:, :0], z, y, mu, True)  # FeatureReuseEvaluator's bias call
    torch.testing.assert_close(bias_only, want[:, 6:])


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 0, 2), (2, 2, 1)])
def test_conv_patches_reference_is_the_weight_derivative(stride, padding, dilation):
    conv = nn.Conv2d(3, 2, 3, stride=stride, padding=padding, dilation=dilation, bias=False).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    out = conv(x).detach()
    coords = torch.tensor([0, 5, 13, 26, 8])  # flat indices into (c, i, j) of output channel 0
    c, i, j = coords // 9, (coords % 9) // 3, coords % 3
    got = reference.conv_weight_patches(
        x, c, i, j, out.shape[2], out.shape[3], stride, stride, padding, padding, dilation, dilation
    )
    for k in range(coords.numel()):
        with torch.no_grad():
            conv.weight.view(2, -1)[0, coords[k]] += 1.0
            diff = conv(x)[:, 0] - out[:, 0]
            conv.weight.view(2, -1)[0, coords[k]] -= 1.0
        torch.testing.assert_close(got[k], diff, rtol=1e-10, atol=1e-12)


# -- kernels against the references ---------------------------------------------------------
@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("impl", ["kernel", "vectorized"])
def test_piecewise_linear_differences_are_exact_in_fp32(slope, impl):
    """ReLU/LeakyReLU form σ(a + Δ) − σ(a) in fp32 without float64 and without cancellation:
    within a few ulp of Δ of the float64 reference, crossings of 0 and exact zeros included."""
    if impl == "kernel" and not KERNELS_EXPECTED:
        pytest.skip("no C++ compiler, or ZEROTH_OPS=python")
    from zeroth.ops import vectorized

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 50, generator=g) * 1e-2  # many |a| < |Δ|: crossings both ways
    a[0, 0, :5] = 0.0
    d = torch.randn(6, 4, 3, 50, generator=g) * 1e-2
    d[1, 0, 0, :3] = 0.0
    kind = 0 if slope == 0.0 else 1
    fn = (
        (lambda a, d: kernel("activation_difference")(a, d, kind, slope))
        if impl == "kernel"
        else (lambda a, d: vectorized.piecewise_linear_difference(a, d, slope))
    )
    got = fn(a, d)
    want = reference.activation_difference(a.double(), d.double(), kind, slope)
    assert got.dtype == torch.float32
    assert bool(((got.double() - want).abs() <= 4 * torch.finfo(torch.float32).eps * d.double().abs()).all())
    crossing = (a > 0) != (a + d > 0)
    assert int(crossing.sum()) > 100
    d[2, 1, 1, 7] = float("nan")
    assert torch.isnan(fn(a, d)[2, 1, 1, 7])  # a NaN in Δ reaches the loss (and the step's check)
    if impl == "kernel":
        ch = torch.tensor([2, 0, 1, 2, 0, 1])
        dc = d[:, :, 0].clone()
        dc[2, 1, 7] = 0.0
        got = kernel("activation_difference_confined")(a, ch, dc, kind, slope)
        want = reference.activation_difference_confined(a.double(), ch, dc.double(), kind, slope)
        assert bool(((got.double() - want).abs() <= 4 * torch.finfo(torch.float32).eps * dc.double().abs()).all())


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_activation_kernels(module, dtype):
    kind, slope = ops.activation_kind(module)
    a = torch.randn(5, 4, 6, dtype=dtype)
    d = 1e-2 * torch.randn(3, 5, 4, 6, dtype=dtype)
    close(kernel("activation_difference")(a, d, kind, slope), reference.activation_difference(a, d, kind, slope), dtype)
    ch = torch.tensor([3, 1, 3])
    dc = d[:, :, 0]
    close(
        kernel("activation_difference_confined")(a, ch, dc, kind, slope),
        reference.activation_difference_confined(a, ch, dc, kind, slope),
        dtype,
    )


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_kernel(dtype, affine):
    a = torch.randn(6, 3, 10, dtype=dtype)
    w = torch.rand(3, dtype=dtype) + 0.5 if affine else torch.empty(0, dtype=dtype)
    none = torch.empty(0, dtype=dtype)
    d = 1e-2 * torch.randn(4, 6, 3, 10, dtype=dtype)
    nolong = torch.empty(0, dtype=torch.long)
    close(
        kernel("batchnorm_difference")(a, d, nolong, w, none, 1e-5),
        reference.batchnorm_difference(a, d, nolong, w, none, 1e-5),
        dtype,
    )
    ch = torch.tensor([1, 1, 0, 2])
    dc = d[:, :, 0]
    close(
        kernel("batchnorm_difference")(a, dc, ch, w, none, 1e-5),
        reference.batchnorm_difference(a, dc, ch, w, none, 1e-5),
        dtype,
    )


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_kernels(dtype):
    z = torch.randn(11, 6, dtype=dtype)
    y = torch.randint(0, 6, (11,))
    d = 1e-2 * torch.randn(5, 11, 6, dtype=dtype)
    nolong = torch.empty(0, dtype=torch.long)
    ref = dict(rtol=1e-12, atol=1e-16)  # both compute in float64 from the same inputs
    torch.testing.assert_close(
        kernel("cross_entropy_difference")(z, y, d, nolong), reference.cross_entropy_difference(z, y, d, nolong), **ref
    )
    ch = torch.tensor([5, 0, 0, 2, 3])
    dc = torch.cat([d[:4, :, 0], torch.full((1, 11), 50.0, dtype=dtype)])  # one huge change
    torch.testing.assert_close(
        kernel("cross_entropy_difference")(z, y, dc, ch), reference.cross_entropy_difference(z, y, dc, ch), **ref
    )
    x = torch.randn(11, 7, dtype=dtype)
    for bias in (True, False):
        torch.testing.assert_close(
            kernel("head_cross_entropy_difference")(x, z, y, 1e-3, bias),
            reference.head_cross_entropy_difference(x, z, y, 1e-3, bias),
            **ref,
        )


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_patch_and_scatter_kernels(dtype):
    x = torch.randn(3, 4, 9, 8, dtype=dtype)
    k = 17
    c, i, j = torch.randint(0, 4, (k,)), torch.randint(0, 3, (k,)), torch.randint(0, 3, (k,))
    for args in [(9, 8, 1, 1, 1, 1, 1, 1), (5, 4, 2, 2, 1, 1, 1, 1), (5, 4, 1, 1, 0, 0, 2, 2)]:
        torch.testing.assert_close(
            kernel("conv_weight_patches")(x, c, i, j, *args),
            reference.conv_weight_patches(x, c, i, j, *args),
            rtol=0,
            atol=0,
        )
    g = torch.randn(50, dtype=dtype)
    idx = torch.tensor([3, 7, 3, 49, 0])
    coeffs = torch.randn(5, dtype=torch.float64)
    close(
        kernel("scatter_scaled_add")(g.clone(), idx, coeffs, 0.5),
        reference.scatter_scaled_add(g.clone(), idx, coeffs, 0.5),
        dtype,
    )


# -- build / fallback -----------------------------------------------------------------------
def _backend_in_subprocess(env_value):
    env = dict(os.environ, ZEROTH_OPS=env_value)
    out = subprocess.run(
        [sys.executable, "-c", "import zeroth.ops as o; print(o.backend())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out


def test_zeroth_ops_python_forces_the_reference():
    out = _backend_in_subprocess("python")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python"


def test_bad_zeroth_ops_value_names_the_variable():
    out = _backend_in_subprocess("fast")
    assert out.returncode != 0 and "ZEROTH_OPS" in out.stderr


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    from zeroth.ops import _build

    monkeypatch.setattr(_build, "source_dir", lambda: None)
    monkeypatch.setenv("ZEROTH_OPS", "auto")
    with pytest.warns(_build.KernelBuildWarning, match="csrc"):
        assert _build.load() is None
    monkeypatch.setenv("ZEROTH_OPS", "cpp")
    with pytest.raises(RuntimeError, match="ZEROTH_OPS=cpp"):
        _build.load()


def test_backend_reports_the_cpu_kernels_exactly_where_a_compiler_exists():
    assert (ops.backend() in ("cpp", "cpp+cuda")) == KERNELS_EXPECTED


def test_reference_only_switches_the_implementation(monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "scatter_scaled_add", lambda *a: calls.append(a) or a[0])
    g = torch.zeros(3)
    with ops.reference_only():
        ops.scatter_scaled_add(g, torch.tensor([1]), torch.ones(1, dtype=torch.float64), 2.0)
    assert len(calls) == 1
    ops.scatter_scaled_add(g, torch.tensor([1]), torch.ones(1, dtype=torch.float64), 2.0)
    assert len(calls) == (2 if ops.backend() == "python" else 1)


def test_the_build_folder_depends_on_the_sources_not_on_where_they_are_installed(tmp_path, monkeypatch):
    """Two installs of the same sources share one build (staged copy inside it); a changed file does not."""
    import shutil

    from zeroth.ops import _build

    monkeypatch.setenv("ZEROTH_BUILD_DIR", str(tmp_path / "cache"))
    a, b = tmp_path / "a" / "csrc", tmp_path / "b" / "csrc"
    shutil.copytree(_build.source_dir(), a)
    shutil.copytree(_build.source_dir(), b)
    build = _build.build_directory(a, _build.sources(a, False))
    assert build == _build.build_directory(b, _build.sources(b, False))
    build.mkdir(parents=True)
    staged = _build.stage_sources(a, build)
    assert _build.stage_sources(b, build) == staged == build / "src"
    assert (staged / "zeroth_ops.cpp").read_bytes() == (a / "zeroth_ops.cpp").read_bytes()
    assert sorted(p.name for p in build.iterdir()) == ["src"]  # no temporary copy left behind
    (b / "zeroth_math.h").write_text((b / "zeroth_math.h").read_text() + "\n// changed\n")
    assert _build.build_directory(b, _build.sources(b, False)) != build
