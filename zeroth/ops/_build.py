"""Find, build (JIT, cached) and load the compiled kernels of ``zeroth/csrc/``.

The C++/CUDA sources ship inside the package (``zeroth/csrc/``, in the wheel and the sdist).
The extension builds with ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja) the
first time an op is used, into a cache folder keyed by a hash of the sources, the flags and
the torch they compile against (:func:`build_directory`), so it always matches the torch
that is running: a wheel built ahead of time
would be tied to one torch's C++ ABI. CUDA sources join the build only where the running
torch has CUDA and ``nvcc`` is found. Anything missing -> the pure-PyTorch reference, with
one :class:`KernelBuildWarning`.

To build ahead of time (a container image, a cluster's shared cache), run
``python -m zeroth.ops`` once, with the same ``ZEROTH_BUILD_DIR`` the jobs will see.
The cache is ``$ZEROTH_BUILD_DIR``, else ``$XDG_CACHE_HOME/zeroth/ops``, else
``~/.cache/zeroth/ops``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import torch

from ..errors import ZerothWarning

MODES = ("auto", "cpp", "python")


class KernelBuildWarning(ZerothWarning):
    """The compiled kernels could not be built or loaded; the PyTorch reference runs instead."""


def mode() -> str:
    """``ZEROTH_OPS``: ``auto`` (default: compiled if it builds), ``cpp`` (must build), ``python``."""
    value = os.environ.get("ZEROTH_OPS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"Invalid ZEROTH_OPS value: {value!r} (expected one of {', '.join(MODES)})")
    return value


def source_dir() -> Optional[Path]:
    """The package's ``zeroth/csrc/`` (any install: wheel, sdist, editable), or None if absent."""
    candidate = Path(__file__).resolve().parent.parent / "csrc"
    return candidate if (candidate / "zeroth_ops.cpp").is_file() else None


def cuda_buildable() -> bool:
    """True when the running torch has CUDA and nvcc is available (a GPU is not required)."""
    if torch.version.cuda is None:
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None and (Path(CUDA_HOME) / "bin" / "nvcc").exists()


def sources(root: Path, with_cuda: bool) -> List[Path]:
    files = [root / "zeroth_ops.cpp", root / "zeroth_exact_cpu.cpp"]
    if with_cuda:
        files += sorted((root / "cuda").glob("*.cu"))
    return files


CFLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off"]
"""No trapping math: branches of a select may be computed speculatively, so loops such as
the piecewise-linear activation difference vectorise instead of mispredicting on signs
(IEEE results, NaN and inf are unchanged; only floating-point exception flags are). No
floating-point contraction: a product is rounded before it is added, as the PyTorch
references round it (one op at a time), so the exact Rademacher kernels agree with them
bitwise on targets with fused multiply-add too (x86-64's baseline has none: nothing changes
there)."""


def build_directory(root: Path, files: List[Path]) -> Path:
    """The cache folder of one build: named by a hash of what the compiled library depends on.

    That is the sources' contents (every file compiled and every header), the flags, and the
    torch and Python the library is compiled against: their version and where their headers
    are (the compile commands name those paths, so two torch installs of one version would
    otherwise keep rebuilding over each other). Where zeroth itself is installed does not
    matter (the sources are staged into the folder, :func:`stage_sources`).
    """
    torch_dir = Path(torch.__file__).resolve().parent
    key = [torch.__version__, str(torch_dir), sysconfig.get_paths()["include"], " ".join(CFLAGS)]
    digest = hashlib.sha256("\n".join(key).encode())
    for f in sorted(files + sorted(root.glob("*.h")) + sorted((root / "cuda").glob("*.cuh"))):
        digest.update(f.read_bytes())
    return cache_root() / digest.hexdigest()[:16]


def cache_root() -> Path:
    """``$ZEROTH_BUILD_DIR``, else ``$XDG_CACHE_HOME/zeroth/ops``, else ``~/.cache/zeroth/ops``."""
    if os.environ.get("ZEROTH_BUILD_DIR"):
        return Path(os.environ["ZEROTH_BUILD_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "zeroth" / "ops"


def stage_sources(root: Path, build: Path) -> Path:
    """A copy of ``root`` inside ``build`` (whose name is the sources' hash), built from there.

    The build files record absolute source paths, so building from the install location would
    rebuild whenever the same sources are seen from another place (a checkout, a venv, a CI
    clone) and those builds would keep replacing each other in the shared cache folder. The
    copy is made once, atomically (a rename), and is the same for every install of the same
    sources and torch.
    """
    staged = build / "src"
    if (staged / "zeroth_ops.cpp").is_file():
        return staged
    tmp = Path(tempfile.mkdtemp(dir=build, prefix="src."))
    try:
        shutil.copytree(root, tmp, dirs_exist_ok=True)
        try:
            os.rename(tmp, staged)
        except OSError:  # another process staged the same sources first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return staged


def load() -> Optional[str]:
    """Build/load the kernels; return ``"cpp"`` or ``"cpp+cuda"``, or None (reference only)."""
    chosen = mode()
    if chosen == "python":
        return None
    try:
        root = source_dir()
        if root is None:
            raise RuntimeError("the zeroth/csrc/ sources are missing from this install (reinstall zeroth-optim)")
        with_cuda = cuda_buildable()
        files = sources(root, with_cuda)
        build = build_directory(root, files)
        build.mkdir(parents=True, exist_ok=True)
        staged = stage_sources(root, build)
        from torch.utils.cpp_extension import load as cpp_load

        cpp_load(
            name="zeroth_ops_" + build.name,
            sources=[str(staged / f.relative_to(root)) for f in files],
            build_directory=str(build),
            extra_include_paths=[str(staged)],
            extra_cflags=CFLAGS,
            extra_cuda_cflags=["-O3"],
            is_python_module=False,
            verbose=os.environ.get("ZEROTH_OPS_VERBOSE") == "1",
        )
        return "cpp+cuda" if with_cuda else "cpp"
    except Exception as exc:  # noqa: BLE001 - any build failure means: run the reference
        if chosen == "cpp":
            raise RuntimeError(f"ZEROTH_OPS=cpp but the kernels did not build: {exc}") from exc
        warnings.warn(
            f"zeroth.ops: compiled kernels unavailable ({type(exc).__name__}: {exc}); "
            "using the PyTorch reference implementation",
            KernelBuildWarning,
            stacklevel=3,
        )
        return None
