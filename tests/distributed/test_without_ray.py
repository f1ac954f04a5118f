"""zeroth imports without Ray; using the Ray pieces without it says which extra to install."""

import subprocess
import sys
import textwrap

HIDE_RAY = textwrap.dedent("""
    import sys
    sys.modules["ray"] = None  # `import ray` now raises ImportError, as if it were not installed
""")


def run(code):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_zeroth_imports_without_ray_and_names_the_extra():
    out = run(
        HIDE_RAY
        + textwrap.dedent("""
        import torch
        import zeroth, zeroth.distributed
        from zeroth.distributed import RayEvaluator, RayPool
        for make in (lambda: RayEvaluator(), lambda: RayPool(abs),
                     lambda: zeroth.ZOOptimizer([torch.zeros(2, requires_grad=True)], evaluator="ray")):
            try:
                make()
            except ImportError as err:
                print("ImportError:", err)
    """)
    )
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert all("pip install 'zeroth-optim[ray]'" in line for line in lines)


def test_importing_zeroth_does_not_import_ray():
    assert run("import sys, zeroth, zeroth.distributed; print('ray' in sys.modules)").strip() == "False"
