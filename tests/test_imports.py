"""``import zeroth`` is cheap: no optional dependency, no compiler; ``from zeroth import *`` works on
a core install (no scipy). Each check runs in a fresh interpreter, so nothing imported by other
tests can hide an import."""

import subprocess
import sys
import textwrap

OPTIONAL = ("ray", "scipy", "sklearn", "matplotlib", "transformers", "lightning", "pytorch_lightning", "ase")


def run(*code: str) -> subprocess.CompletedProcess:
    source = "\n".join(textwrap.dedent(c) for c in code)
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_import_zeroth_imports_no_optional_package_and_builds_nothing():
    out = run(f"""
        import sys
        import zeroth
        import zeroth.ops
        print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))
        print(zeroth.ops._tried, "torch.utils.cpp_extension" in sys.modules)
    """).stdout.splitlines()
    assert out == ["[]", "False False"]


BLOCK = f"""
    import importlib.abc, sys

    class CoreInstall(importlib.abc.MetaPathFinder):  # the optional packages are not installed
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {OPTIONAL!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, CoreInstall())
"""


def test_star_import_works_without_scipy_and_minimize_names_the_extra():
    out = run(
        BLOCK,
        """
        from zeroth import *
        import zeroth
        assert ZOOptimizer and CGE and Objective and ZerothWarning
        assert set(zeroth.__all__) <= set(globals())
        try:
            zeroth.minimize
        except ImportError as err:
            print(err)
        assert "minimize" in dir(zeroth)
    """,
    ).stdout
    assert "pip install 'zeroth-optim[science]'" in out


def test_warnings_share_the_zeroth_base_class():
    from zeroth import NonFiniteLossWarning, ZerothWarning
    from zeroth.distributed.pool import WorkerFailureWarning
    from zeroth.ops import KernelBuildWarning

    for cls in (NonFiniteLossWarning, KernelBuildWarning, WorkerFailureWarning):
        assert issubclass(cls, ZerothWarning)
    assert issubclass(NonFiniteLossWarning, RuntimeWarning) and issubclass(WorkerFailureWarning, RuntimeWarning)
