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


def test_only_the_feature_reuse_hot_path_builds_the_kernels():
    """zo_gradient, a closure step, a black box and the constrained solver never start a compiler."""
    out = run("""
        import numpy as np, torch
        import zeroth
        from zeroth import CGE, BlackBox, ZOOptimizer, from_numpy, zo_gradient
        from zeroth.constrained import minimize

        zo_gradient(lambda x: (x ** 2).sum(), torch.ones(3), CGE())
        model = torch.nn.Linear(3, 1)
        opt = ZOOptimizer(model.parameters(), lr=0.1, estimator=CGE(), seed=0)
        opt.step(lambda: model(torch.ones(2, 3)).pow(2).sum())
        x = torch.ones(1, 2, requires_grad=True)
        BlackBox(from_numpy(lambda v: v ** 2, batched=True), CGE())(x).sum().backward()
        minimize(lambda v: float((v ** 2).sum()), np.ones(2), jac="zo", method="npasa")
        print(zeroth.ops._tried)
    """).stdout.split()
    assert out == ["False"]
