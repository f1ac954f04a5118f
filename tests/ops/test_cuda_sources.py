"""The CUDA kernels: compiled with nvcc wherever it exists (even beside a CPU-only torch; slow:
about two minutes on 2 cores), and, on a machine with a GPU, equal to the PyTorch references
and refusing bad input as the CPU ops do."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from zeroth import ops
from zeroth.ops import reference
from zeroth.ops._build import source_dir

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None or source_dir() is None, reason="nvcc or zeroth/csrc/ not available")
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or ops.backend() != "cpp+cuda", reason="no GPU with the CUDA kernels built"
)


def _nvcc(source: Path, out: Path, *includes: str) -> None:
    cmd = [NVCC, "-std=c++17", "-c", str(source), "-o", str(out), "-I", str(source_dir())]
    for inc in includes:
        cmd += ["-isystem", inc]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert out.stat().st_size > 0


@pytest.mark.slow
@needs_nvcc
def test_cuda_kernels_compile_without_torch(tmp_path):
    _nvcc(source_dir() / "cuda" / "kernels.cu", tmp_path / "kernels.o")


@pytest.mark.slow
@needs_nvcc
def test_cuda_bindings_compile_against_the_running_torch(tmp_path):
    include = Path(torch.__file__).parent / "include"
    extra = []
    if not (include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # a CPU-only wheel ships the c10/cuda headers but not this build-generated one
        stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
        stub.mkdir(parents=True)
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
        extra.append(str(tmp_path / "stub"))
    _nvcc(
        source_dir() / "cuda" / "zeroth_ops_cuda.cu",
        tmp_path / "bindings.o",
        *extra,
        str(include),
        str(include / "torch" / "csrc" / "api" / "include"),
    )


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_kernels_equal_the_references(dtype):
    dev = "cuda"
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    a = torch.randn(6, 3, 10, dtype=dtype, device=dev)
    d = 1e-2 * torch.randn(4, 6, 3, 10, dtype=dtype, device=dev)
    ch = torch.tensor([2, 0, 2, 1], device=dev)
    dc = d[:, :, 0].contiguous()
    none = torch.empty(0, dtype=torch.long, device=dev)
    w = torch.rand(3, dtype=dtype, device=dev) + 0.5
    empty = torch.empty(0, dtype=dtype, device=dev)
    z = torch.ops.zeroth
    for kind in range(len(ops.ACTIVATIONS)):
        torch.testing.assert_close(
            z.activation_difference(a, d, kind, 0.1), reference.activation_difference(a, d, kind, 0.1), **tol
        )
        torch.testing.assert_close(
            z.activation_difference_confined(a, ch, dc, kind, 0.1),
            reference.activation_difference_confined(a, ch, dc, kind, 0.1),
            **tol,
        )
    torch.testing.assert_close(
        z.batchnorm_difference(a, d, none, w, empty, 1e-5),
        reference.batchnorm_difference(a, d, none, w, empty, 1e-5),
        **tol,
    )
    torch.testing.assert_close(
        z.batchnorm_difference(a, dc, ch, w, empty, 1e-5),
        reference.batchnorm_difference(a, dc, ch, w, empty, 1e-5),
        **tol,
    )
    logits = torch.randn(9, 5, dtype=dtype, device=dev)
    y = torch.randint(0, 5, (9,), device=dev)
    dl = 1e-2 * torch.randn(3, 9, 5, dtype=dtype, device=dev)
    exact = dict(rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(
        z.cross_entropy_difference(logits, y, dl, none),
        reference.cross_entropy_difference(logits, y, dl, none),
        **exact,
    )
    c3 = torch.tensor([4, 0, 1], device=dev)
    torch.testing.assert_close(
        z.cross_entropy_difference(logits, y, dl[:, :, 0], c3),
        reference.cross_entropy_difference(logits, y, dl[:, :, 0], c3),
        **exact,
    )
    x = torch.randn(9, 7, dtype=dtype, device=dev)
    torch.testing.assert_close(
        z.head_cross_entropy_difference(x, logits, y, 1e-3, True),
        reference.head_cross_entropy_difference(x, logits, y, 1e-3, True),
        **exact,
    )
    img = torch.randn(2, 3, 9, 8, dtype=dtype, device=dev)
    c, i, j = (torch.randint(0, n, (11,), device=dev) for n in (3, 3, 3))
    args = (5, 4, 2, 2, 1, 1, 1, 1)
    torch.testing.assert_close(
        z.conv_weight_patches(img, c, i, j, *args), reference.conv_weight_patches(img, c, i, j, *args), rtol=0, atol=0
    )
    g = torch.randn(30, dtype=dtype, device=dev)
    idx = torch.tensor([3, 7, 3, 29], device=dev)
    coeffs = torch.randn(4, dtype=torch.float64, device=dev)
    torch.testing.assert_close(
        z.scatter_scaled_add(g.clone(), idx, coeffs, 0.5),
        reference.scatter_scaled_add(g.clone(), idx, coeffs, 0.5),
        **tol,
    )


@needs_gpu
def test_cuda_ops_refuse_bad_input_as_the_references_do():
    from .test_checks import BAD

    for case, op, make, exc, message in BAD:
        if case == "scatter-strided-grad":  # .cuda() would make it contiguous: built on the device below
            continue
        args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in make()]
        with pytest.raises(exc) as err:
            getattr(torch.ops.zeroth, op)(*args)
        assert message in str(err.value), case
    strided = torch.zeros(8, dtype=torch.float64, device="cuda")[::2]
    with pytest.raises(ValueError, match="grad must be flat"):
        torch.ops.zeroth.scatter_scaled_add(
            strided, torch.tensor([0], device="cuda"), torch.ones(1, dtype=torch.float64, device="cuda"), 1.0
        )
    cpu, gpu = torch.randn(2, 3, dtype=torch.float64), torch.randn(1, 2, 3, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match="delta is on cuda:0 but a is on cpu"):
        torch.ops.zeroth.activation_difference(cpu, gpu, 0, 0.0)
