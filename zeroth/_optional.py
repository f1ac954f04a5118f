"""Lazy imports of optional dependencies with an error that names the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ImportError saying ``pip install 'zeroth-optim[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is needed for this feature: pip install 'zeroth-optim[{extra}]'") from err


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
