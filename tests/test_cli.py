"""The command line: ``zeroth info`` and a tiny ``zeroth demo``."""

import subprocess
import sys

import pytest

import zeroth
from zeroth import ops
from zeroth.cli import main


def test_info_lists_versions_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "zeroth-optim" in out and "torch" in out and "estimators: cge, rge, spsa" in out
    assert "ops backend:" in out


def test_info_extras_line_names_every_optional_package_with_its_version(capsys):
    import importlib.metadata

    assert main(["info"]) == 0
    extras = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("extras: "))
    listed = dict(item.split("=", 1) for item in extras.removeprefix("extras: ").split(", "))
    for module, dist in [
        ("scipy", "scipy"),
        ("ray", "ray"),
        ("daqp", "daqp"),
        ("clarabel", "clarabel"),
        ("piqp", "piqp"),
        ("cyipopt", "cyipopt"),
        ("transformers", "transformers"),
        ("accelerate", "accelerate"),
        ("lightning", "lightning"),
    ]:
        try:
            expected = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            expected = "no"
        assert listed[module] == expected, (module, extras)


@pytest.mark.parametrize("ray_installed", [True, False])
def test_info_marks_the_ray_evaluator_when_ray_is_missing(capsys, monkeypatch, ray_installed):
    from zeroth import _optional

    real = _optional.available
    monkeypatch.setattr(_optional, "available", lambda m: ray_installed if m == "ray" else real(m))
    assert main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    evaluators = next(line for line in out if line.startswith("evaluators: ")).removeprefix("evaluators: ").split(", ")
    assert ("ray" if ray_installed else "ray (needs ray)") in evaluators
    assert {"auto", "batched", "feature_reuse", "sequential"} <= set(evaluators)
    assert (", ray=no" in next(line for line in out if line.startswith("extras: "))) is not ray_installed


def test_module_entry_point_prints_what_the_command_prints(capsys):
    """``python -m zeroth info`` is the ``zeroth`` command: the same report, line for line."""
    out = subprocess.run([sys.executable, "-m", "zeroth", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert main(["info"]) == 0
    assert out.stdout.splitlines() == capsys.readouterr().out.splitlines()
    assert out.stdout.splitlines()[0] == f"zeroth {zeroth.__version__} (distribution zeroth-optim)"
    bad = subprocess.run([sys.executable, "-m", "zeroth", "train"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid choice: 'train'" in bad.stderr


def test_ops_module_builds_and_reports_the_backend():
    out = subprocess.run([sys.executable, "-m", "zeroth.ops"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"zeroth.ops backend: {ops.backend()} (cache: ")


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    with pytest.raises(SystemExit):
        main(["demo", "--estimator", "newton"])


def test_demo_prints_table_and_saves_plot(tmp_path, capsys, monkeypatch):
    import zeroth.demo as demo

    monkeypatch.setattr(demo, "load_digits", _small_digits(demo.load_digits))
    out_png = tmp_path / "demo.png"
    assert main(["demo", "--epochs", "1", "--estimator", "spsa", "--quiet", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "ZO SPSA + Adam" in out and "first-order Adam" in out and "test acc" in out
    assert out_png.exists() and out_png.stat().st_size > 1000


def _small_digits(load):
    def small(**kw):
        s = load(**kw)
        return type(s)(s.x_train[:256], s.y_train[:256], s.x_test, s.y_test)

    return small
