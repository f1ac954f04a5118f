"""Test problems for :func:`zeroth.constrained.minimize`: Hock–Schittkowski and larger polyhedral ones.

``all_problems()`` lists every :class:`Problem`; ``get(name)`` returns one by name.
"""

from ._base import Problem
from .hs import HS_PROBLEMS
from .polyhedral import polyhedral_problems

__all__ = ["Problem", "HS_PROBLEMS", "all_problems", "get", "polyhedral_problems"]


def all_problems():
    """Every problem: the HS collection followed by the polyhedral ones (n ≥ 100)."""
    return list(HS_PROBLEMS) + polyhedral_problems()


def get(name: str) -> Problem:
    """The problem called ``name`` (e.g. ``"hs071"``); KeyError names the unknown one."""
    for p in all_problems():
        if p.name == name:
            return p
    raise KeyError(f"unknown problem {name!r}")
