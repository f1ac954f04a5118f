"""The black-box examples: their pieces against known answers, and a short run of each script."""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest
import torch

from zeroth._optional import available

from ..conftest import cosine

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# -- PDE correction ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pde():
    return load("pde_correction")


def test_pde_numpy_and_torch_solvers_agree_and_the_fine_reference_conserves_mass(pde):
    cfg = pde.Config()
    u = pde.initial_conditions(3, cfg, np.random.default_rng(0))[:, :: cfg.factor]
    a = pde.coarse_step(u, cfg)
    b = pde.coarse_step(torch.from_numpy(u), cfg, xp=torch).numpy()
    assert np.allclose(a, b, atol=1e-12)
    fine = pde.initial_conditions(2, cfg, np.random.default_rng(1))
    assert np.allclose(pde.fine_step(fine, cfg).mean(1), fine.mean(1), atol=1e-12)  # conservative scheme


def test_pde_zo_gradient_through_the_unrolled_solver_matches_autograd(pde):
    cfg = pde.Config(unroll=3)
    rng = np.random.default_rng(0)
    data = torch.from_numpy(pde.reference(4, cfg, rng)[:, : cfg.unroll + 1]).double()
    torch.manual_seed(0)
    net = pde.Corrector().double()

    def grads(solver):
        net.zero_grad()
        pred = pde.rollout(data[:, 0], cfg.unroll, solver, net)
        (pred[:, 1:] - data[:, 1:]).pow(2).mean().backward()
        return [p.grad.clone() for p in net.parameters()]

    bb = pde.black_box_solver(cfg)
    zo, fo = grads(bb), grads(pde.torch_solver(cfg))
    assert cosine(zo, fo) > 0.9999
    assert bb.counts()["calls"] == cfg.unroll  # each unrolled step: all 33 points of all rows in one call


def test_pde_example_runs_in_quick_mode(pde, tmp_path, capsys):
    out = pde.main(["--quick", "--out", str(tmp_path / "pde.png")])
    printed = capsys.readouterr().out
    assert os.path.getsize(tmp_path / "pde.png") > 0
    for name, r in out.results.items():
        assert name in printed and math.isfinite(r["mae"])
    zo = out.results["solver in the loop, ZO (CGE)"]
    # quick mode: 15 iterations x 3 unrolled steps, batch 8, 16 cells; the first step's input is data
    # (no gradient needed: forward points only), the next two need forward + 16 coordinate points per row
    assert zo["calls"] == 15 * 3 and zo["points"] == 15 * (8 + 2 * 8 * 17)
    assert out.results["uncorrected coarse solver"]["mae"] > 0


# -- materials with ASE -----------------------------------------------------------------------------
needs_ase = pytest.mark.skipif(not available("ase"), reason="needs ASE: pip install 'zeroth-optim[science]'")


@pytest.fixture(scope="module")
def materials():
    return load("materials_ase")


@needs_ase
def test_emt_energy_gradient_through_the_black_box_points_to_the_equilibrium(materials):
    from zeroth import CGE
    from zeroth.blackbox import BlackBox, from_numpy

    s = materials.Structures(("Cu", "Ni"))
    cu = s.names.index("Cu")
    a_star, calls = s.equilibrium(cu)
    assert 3.55 < a_star < 3.65 and calls > 0  # EMT's copper is close to the experimental 3.61 Å
    bb = BlackBox(from_numpy(s.energy, batched=True), CGE(mu=1e-4))
    a = torch.tensor([[a_star - 0.1], [a_star], [a_star + 0.1]], requires_grad=True)
    bb(a, torch.full((3,), cu)).sum().backward()
    slope = a.grad.reshape(-1)
    assert slope[0] < -0.1 and slope[2] > 0.1 and abs(float(slope[1])) < 1e-2
    assert bb.counts() == {"calls": 1, "points": 6, "failed_points": 0}


@needs_ase
def test_materials_example_runs_in_quick_mode(materials, tmp_path, capsys):
    out = materials.main(["--quick", "--out", str(tmp_path / "materials.png")])
    printed = capsys.readouterr().out
    assert os.path.getsize(tmp_path / "materials.png") > 0
    assert set(out.results) == {"data only (labels)", "coupled to EMT (ZO)"}
    for name, r in out.results.items():
        assert name in printed and math.isfinite(r["mae"]) and r["mae"] < 0.5
    assert out.results["coupled to EMT (ZO)"]["calls"] > 0 and out.results["data only (labels)"]["calls"] == 0
