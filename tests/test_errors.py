"""``zeroth.errors.add_note``: PEP 678 notes on every supported Python (3.10 has no ``BaseException.add_note``).

zeroth declares ``python_requires >= 3.10``; calling ``err.add_note(...)`` there raises
``AttributeError`` in place of the error being reported (the black-box and Ray failure paths
did that). ``add_note`` writes ``__notes__`` itself, so the same code runs on every version.
"""

from __future__ import annotations

import ast
import pathlib
import sys
import traceback

import pytest

import zeroth
from zeroth.errors import add_note

ROOT = pathlib.Path(zeroth.__file__).parent


def test_add_note_appends_in_order_and_creates_the_list():
    err = ValueError("boom")
    assert not hasattr(err, "__notes__")
    add_note(err, "first")
    add_note(err, "second")
    assert err.__notes__ == ["first", "second"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="BaseException.add_note exists from 3.11 on")
def test_add_note_matches_the_builtin():
    ours, theirs = RuntimeError("x"), RuntimeError("x")
    for note in ("a", "b"):
        add_note(ours, note)
        theirs.add_note(note)
    assert ours.__notes__ == theirs.__notes__
    assert traceback.format_exception(ours) == traceback.format_exception(theirs)  # notes printed the same way
    for bad in (1, None):
        with pytest.raises(TypeError):
            RuntimeError().add_note(bad)
        with pytest.raises(TypeError):
            add_note(RuntimeError(), bad)


def test_add_note_refuses_what_the_builtin_refuses():
    with pytest.raises(TypeError, match="note must be a str"):
        add_note(ValueError(), 3)
    err = ValueError()
    err.__notes__ = ("not", "a list")
    with pytest.raises(TypeError, match="not a list"):
        add_note(err, "x")


def test_add_note_keeps_notes_added_by_other_code():
    err = KeyError("k")
    err.__notes__ = ["from elsewhere"]
    add_note(err, "zeroth")
    assert err.__notes__ == ["from elsewhere", "zeroth"]


def _calls_add_note(path: pathlib.Path) -> list:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_note"
    ]


def test_no_module_calls_the_3_11_only_method():
    """``err.add_note(...)`` fails on Python 3.10: zeroth's code calls ``zeroth.errors.add_note(err, ...)``."""
    offenders = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        lines = _calls_add_note(path)
        if lines:
            offenders[rel] = lines
    assert not offenders, (
        f"BaseException.add_note does not exist on Python 3.10; use zeroth.errors.add_note: {offenders}"
    )


def test_the_scan_finds_a_method_call(tmp_path):
    """The scan above is not vacuous: it finds ``err.add_note(...)`` and ignores ``add_note(err, ...)``."""
    (tmp_path / "m.py").write_text("def f(err):\n    err.add_note('x')\n    add_note(err, 'y')\n")
    assert _calls_add_note(tmp_path / "m.py") == [2]
