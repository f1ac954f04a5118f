"""Argument checks shared by the recipe's modules: a ``ValueError`` that names the argument."""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional


def positive(
    name: str, value: Any, *, integer: bool = False, upper: Optional[float] = None, allow_zero: bool = False
) -> Any:
    """``value`` as an int/float after checking it is finite, ``> 0`` (``>= 0``) and ``< upper``."""
    kind = numbers.Integral if integer else numbers.Real
    ok = (
        not isinstance(value, bool)
        and isinstance(value, kind)
        and math.isfinite(value)
        # >= 0 / > 0 written with numbers.Real's own < and <= (value is finite here)
        and (not value < 0 if allow_zero else not value <= 0)
        and (upper is None or value < upper)
    )
    if not ok:
        what = "an integer" if integer else "a number"
        bound = f" and < {upper}" if upper is not None else ""
        raise ValueError(
            f"Invalid {name} value: {value!r} ({name} must be {what} {'>=' if allow_zero else '>'} 0{bound})"
        )
    return int(value) if integer else float(value)
