"""Optional dependencies: imported only where a feature needs them, with an error naming the extra."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from types import ModuleType
from typing import Optional

EXTRAS = {
    "scipy": ("scipy", "science"),
    "sklearn": ("scikit-learn", "science"),
    "matplotlib": ("matplotlib", "science"),
    "tqdm": ("tqdm", "science"),
    "ase": ("ase", "science"),
    "ray": ("ray", "ray"),
    "pytest_benchmark": ("pytest-benchmark", "bench"),
}
"""Import name -> (distribution, the zeroth-optim extra that installs it)."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise ImportError saying ``pip install 'zeroth-optim[extra]'``.

    Raises:
        ImportError: ``module`` is not installed (or fails to import); the message names the extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is needed for this feature: pip install 'zeroth-optim[{extra}]'") from err


def available(module: str) -> bool:
    """Whether ``module`` is installed, found without importing it (importing ray or scipy takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken entry in sys.modules
        return False


def version(module: str) -> Optional[str]:
    """The installed version of ``module``'s distribution (from its metadata, no import), or None."""
    dist = EXTRAS.get(module, (module, ""))[0]
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
