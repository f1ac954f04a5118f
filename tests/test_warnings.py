"""Every warning class zeroth defines derives from :class:`zeroth.errors.ZerothWarning`.

Two independent walks: one imports every module of the package and inspects the classes it
defines; the other reads every source file's class definitions, so a module that could not be
imported (a missing optional dependency) cannot hide a warning class from the check.
"""

import ast
import importlib
import inspect
import pathlib
import pkgutil
import warnings

import pytest

import zeroth
from zeroth.errors import ZerothWarning

ROOT = pathlib.Path(zeroth.__file__).parent


def zeroth_modules():
    """Every importable module of the package (``__main__`` modules run a CLI, so they are left out)."""
    names = []
    for info in pkgutil.walk_packages(zeroth.__path__, "zeroth."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        names.append(info.name)
    return names


def warning_classes_by_import():
    found, failed = {}, {}
    for name in zeroth_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as err:  # an optional dependency that is not installed
            failed[name] = err
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Warning) and obj.__module__.startswith("zeroth"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found, failed


def warning_classes_by_source():
    """``module.Class`` for every class in zeroth's sources named ``*Warning`` or with a base named ``*Warning``."""
    names = set()
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(("zeroth",) + path.relative_to(ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
            if node.name.endswith("Warning") or any(b.endswith("Warning") for b in bases):
                names.add(f"{module}.{node.name}")
    return names


def test_every_warning_class_zeroth_defines_derives_from_zeroth_warning():
    found, failed = warning_classes_by_import()
    # only a missing optional package may stop a module importing (the source walk covers those)
    assert all(err.name and not err.name.startswith("zeroth") for err in failed.values()), failed
    assert "zeroth.errors.ZerothWarning" in found  # the walk sees the package at all
    bad = sorted(name for name, cls in found.items() if not issubclass(cls, ZerothWarning))
    assert not bad, f"warning classes that do not derive from ZerothWarning: {bad}"


def test_source_walk_finds_no_warning_class_the_import_walk_missed():
    found, _ = warning_classes_by_import()
    in_source = warning_classes_by_source()
    assert "zeroth.blackbox.program.ProgramWarning" in in_source
    assert in_source <= set(found), f"defined but not seen by the import walk: {sorted(in_source - set(found))}"


@pytest.mark.parametrize("category", ["ProgramWarning", "WorkerFailureWarning", "NonFiniteLossWarning"])
def test_runtime_warnings_stay_runtime_warnings_and_one_filter_catches_them(category):
    from zeroth.blackbox.program import ProgramWarning
    from zeroth.distributed.pool import WorkerFailureWarning
    from zeroth.errors import NonFiniteLossWarning

    cls = {
        "ProgramWarning": ProgramWarning,
        "WorkerFailureWarning": WorkerFailureWarning,
        "NonFiniteLossWarning": NonFiniteLossWarning,
    }[category]
    assert issubclass(cls, RuntimeWarning)  # existing RuntimeWarning filters keep working
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZerothWarning)
        with pytest.raises(cls):
            warnings.warn("x", cls, stacklevel=2)


@pytest.mark.parametrize("cause", ["unknown option", "hessp"])
def test_solver_option_warning_is_caught_by_zeroth_and_scipy_filters(cause):
    """``zeroth.constrained`` warns about ignored options as scipy does (``OptimizeWarning``), with a
    class that one ``ZerothWarning`` filter also catches."""
    import numpy as np
    from scipy.optimize import OptimizeWarning

    from zeroth.constrained import SolverOptionWarning, minimize

    assert issubclass(SolverOptionWarning, ZerothWarning) and issubclass(SolverOptionWarning, OptimizeWarning)
    kwargs = {"options": {"no_such_option": 1}} if cause == "unknown option" else {"hessp": lambda x, p: 2 * p}

    def solve():
        return minimize(lambda x: float(x @ x), np.ones(2), jac=lambda x: 2 * x, **kwargs)

    for category in (ZerothWarning, OptimizeWarning, SolverOptionWarning):
        with warnings.catch_warnings():
            warnings.simplefilter("error", category)
            with pytest.raises(SolverOptionWarning, match="no_such_option" if cause == "unknown option" else "hessp"):
                solve()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ZerothWarning)  # one filter silences it; the solve goes on
        assert solve().success
