"""Solver-in-the-loop PDE correction with a numpy solver as a black box (DeepZero's PDE task).

A coarse, first-order finite-volume solver for the viscous Burgers equation
``u_t + (u²/2)_x = ν u_xx`` (periodic, 16 cells by default, one explicit step per Δt) is
cheap but diffusive. A small periodic CNN corrects its state after every step::

    s_k     = coarse_step(u_k)          # numpy, no autodiff: the black box
    u_{k+1} = s_k + net(s_k)            # the learned correction

and is trained to match a fine-grid reference (the same scheme on 256 cells with RK2 substeps):

* **no solver in the loop** — one-step supervised learning on precomputed pairs
  ``(coarse_step(ũ_t), ũ_{t+1} − coarse_step(ũ_t))``;
* **solver in the loop, ZO** — unrolled for ``unroll`` steps through ``BlackBox(coarse_step)``
  whose backward is a coordinate-wise (CGE) ZO estimate: the network sees its own errors
  feed back through the solver, without the solver having a gradient;
* **solver in the loop, FO** (reference) — the same, with the solver re-run in torch so
  autograd differentiates it (what a differentiable solver would give).

Prints a table of the mean absolute error against the reference on unseen initial
conditions and saves a plot (error over time, and one final state).

    python examples/pde_correction.py            # ≈ 1–3 min on 2 CPU cores
    python examples/pde_correction.py --quick    # seconds; used by the tests
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np
import torch
from torch import nn

from zeroth import CGE
from zeroth.blackbox import BlackBox, from_numpy


@dataclass
class Config:
    nu: float = 0.02  # viscosity
    coarse: int = 16  # cells of the coarse solver
    factor: int = 16  # fine cells per coarse cell (reference: 256 cells)
    dt: float = 0.1  # coarse time step
    substeps: int = 16  # fine RK2 steps per coarse step
    steps: int = 24  # time steps of a trajectory (t_end = steps · dt = 2.4)
    train_ics: int = 24  # training initial conditions
    test_ics: int = 16  # unseen initial conditions for the table
    unroll: int = 8  # steps unrolled through the solver
    iters_supervised: int = 500  # the same number of optimizer steps for both trainings
    iters_unrolled: int = 500
    batch: int = 32
    lr: float = 3e-3
    mu: float = 1e-4  # CGE perturbation of the solver input
    seed: int = 0


# -- the solvers (one code path for numpy and torch arrays) -----------------------------------
def rusanov_rhs(u, dx: float, nu: float, xp):
    """Finite-volume right-hand side: Rusanov flux for u²/2 plus central diffusion (periodic)."""
    up = xp.roll(u, -1, -1)
    speed = xp.maximum(abs(u), abs(up))
    flux = 0.25 * (u * u + up * up) - 0.5 * speed * (up - u)  # at i + 1/2
    advection = -(flux - xp.roll(flux, 1, -1)) / dx
    diffusion = nu * (up - 2 * u + xp.roll(u, 1, -1)) / dx**2
    return advection + diffusion


def coarse_step(u, cfg: Config, xp=np):
    """One forward-Euler step of the coarse solver (the black box when xp is numpy)."""
    dx = 2 * math.pi / cfg.coarse
    return u + cfg.dt * rusanov_rhs(u, dx, cfg.nu, xp)


def fine_step(u: np.ndarray, cfg: Config) -> np.ndarray:
    """One coarse Δt of the reference: ``substeps`` RK2 steps on the fine grid."""
    dx, h = 2 * math.pi / (cfg.coarse * cfg.factor), cfg.dt / cfg.substeps
    for _ in range(cfg.substeps):
        k1 = rusanov_rhs(u, dx, cfg.nu, np)
        k2 = rusanov_rhs(u + h * k1, dx, cfg.nu, np)
        u = u + 0.5 * h * (k1 + k2)
    return u


def initial_conditions(n: int, cfg: Config, rng: np.random.Generator) -> np.ndarray:
    """Random smooth periodic states: an offset plus three sine modes, on the fine grid."""
    x = np.linspace(0, 2 * math.pi, cfg.coarse * cfg.factor, endpoint=False)
    k = np.arange(1, 4)
    amp = rng.uniform(-1, 1, (n, 3)) / k
    phase = rng.uniform(0, 2 * math.pi, (n, 3))
    offset = rng.uniform(-0.5, 0.5, (n, 1))
    return offset + (amp[:, :, None] * np.sin(k[None, :, None] * x + phase[:, :, None])).sum(1)


def reference(n: int, cfg: Config, rng: np.random.Generator) -> np.ndarray:
    """Fine trajectories sampled at the coarse nodes: ``(n, steps + 1, coarse)``."""
    u = initial_conditions(n, cfg, rng)
    frames = [u[:, :: cfg.factor]]
    for _ in range(cfg.steps):
        u = fine_step(u, cfg)
        frames.append(u[:, :: cfg.factor])
    return np.stack(frames, 1)


# -- the correction network ----------------------------------------------------------------------
class Corrector(nn.Module):
    """A small periodic CNN: state (B, N) -> additive correction (B, N)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2, padding_mode="circular"),
            nn.GELU(),
            nn.Conv1d(width, width, 5, padding=2, padding_mode="circular"),
            nn.GELU(),
            nn.Conv1d(width, 1, 5, padding=2, padding_mode="circular"),
        )

    def forward(self, s):  # (B, N)
        return 0.1 * self.net(s.unsqueeze(1)).squeeze(1)


def rollout(u0: torch.Tensor, steps: int, solver: Callable, net: nn.Module = None) -> torch.Tensor:
    """``(B, steps + 1, N)`` states of the (corrected) coarse solver from ``u0``."""
    states = [u0]
    u = u0
    for _ in range(steps):
        s = solver(u)
        u = s + net(s) if net is not None else s
        states.append(u)
    return torch.stack(states, 1)


# -- training ------------------------------------------------------------------------------------
def train_supervised(data: torch.Tensor, cfg: Config) -> nn.Module:
    """No solver in the loop: one-step corrections learned from precomputed solver outputs."""
    torch.manual_seed(cfg.seed)
    net = Corrector()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    pairs_in = data[:, :-1].reshape(-1, cfg.coarse)
    solved = torch.from_numpy(coarse_step(pairs_in.numpy(), cfg)).float()
    target = data[:, 1:].reshape(-1, cfg.coarse) - solved
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.iters_supervised):
        idx = torch.randint(0, solved.shape[0], (cfg.batch,), generator=g)
        opt.zero_grad()
        loss = (net(solved[idx]) - target[idx]).pow(2).mean()
        loss.backward()
        opt.step()
    return net


def train_unrolled(data: torch.Tensor, cfg: Config, solver: Callable) -> nn.Module:
    """Solver in the loop: ``unroll`` corrected steps from a reference state, loss on every step."""
    torch.manual_seed(cfg.seed)
    net = Corrector()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    n, length = data.shape[0], data.shape[1] - cfg.unroll
    for _ in range(cfg.iters_unrolled):
        traj = torch.randint(0, n, (cfg.batch,), generator=g)
        start = torch.randint(0, length, (cfg.batch,), generator=g)
        window = torch.stack([data[traj, start + k] for k in range(cfg.unroll + 1)], 1)
        opt.zero_grad()
        pred = rollout(window[:, 0], cfg.unroll, solver, net)
        loss = (pred[:, 1:] - window[:, 1:]).pow(2).mean()
        loss.backward()
        opt.step()
    return net


def black_box_solver(cfg: Config) -> BlackBox:
    """The numpy solver as an autograd node: CGE over the cell values, all points in one call."""
    return BlackBox(
        from_numpy(lambda u: coarse_step(u, cfg), batched=True, name="coarse_burgers"), CGE(mu=cfg.mu), seed=cfg.seed
    )


def torch_solver(cfg: Config) -> Callable:
    return lambda u: coarse_step(u, cfg, xp=torch)


# -- the experiment ------------------------------------------------------------------------------
@dataclass
class Outcome:
    results: Dict[str, Dict[str, float]]  # per method: mae, mae_final, seconds, calls, points
    curves: Dict[str, np.ndarray]  # per method: mean error at each time step
    finals: Dict[str, np.ndarray]  # per method: final state of test trajectory 0
    reference: np.ndarray  # its fine reference


def numpy_solver(cfg: Config) -> Callable:
    """The black box without gradients (used to evaluate every method the same way)."""
    return lambda u: torch.from_numpy(coarse_step(u.double().numpy(), cfg)).to(u.dtype)


def run(cfg: Config) -> Outcome:
    rng = np.random.default_rng(cfg.seed)
    train = torch.from_numpy(reference(cfg.train_ics, cfg, rng)).float()
    test = torch.from_numpy(reference(cfg.test_ics, cfg, rng)).float()
    results: Dict[str, Dict[str, float]] = {}
    curves: Dict[str, np.ndarray] = {}
    finals: Dict[str, np.ndarray] = {}
    evaluate_with = numpy_solver(cfg)

    def record(name, net, seconds, calls="-", points="-"):
        with torch.no_grad():
            pred = rollout(test[:, 0], cfg.steps, evaluate_with, net)
        err = (pred - test).abs()
        results[name] = {
            "mae": float(err[:, 1:].mean()),
            "mae_final": float(err[:, -1].mean()),
            "seconds": seconds,
            "calls": calls,
            "points": points,
        }
        curves[name] = err.mean(dim=(0, 2)).numpy()
        finals[name] = pred[0, -1].numpy()

    record("uncorrected coarse solver", None, 0.0)
    t = time.perf_counter()
    net = train_supervised(train, cfg)
    record("no solver in the loop", net, time.perf_counter() - t)
    bb = black_box_solver(cfg)
    t = time.perf_counter()
    net = train_unrolled(train, cfg, bb)
    record("solver in the loop, ZO (CGE)", net, time.perf_counter() - t, bb.num_calls, bb.num_points)
    t = time.perf_counter()
    net = train_unrolled(train, cfg, torch_solver(cfg))
    record("solver in the loop, FO (reference)", net, time.perf_counter() - t)
    return Outcome(results, curves, finals, test[0, -1].numpy())


def table(results: Dict[str, Dict[str, float]], cfg: Config) -> str:
    lines = [
        f"Burgers ν={cfg.nu}, {cfg.coarse} coarse cells vs {cfg.coarse * cfg.factor}-cell reference, "
        f"{cfg.test_ics} unseen initial conditions, {cfg.steps} steps",
        f"{'method':<36} {'MAE (all steps)':>16} {'MAE (final)':>12} {'train s':>8} {'solver calls':>13} "
        f"{'query points':>13}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<36} {r['mae']:>16.4f} {r['mae_final']:>12.4f} {r['seconds']:>8.1f} "
            f"{str(r['calls']):>13} {str(r['points']):>13}"
        )
    return "\n".join(lines)


def plot(path: str, out: Outcome, cfg: Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    t = np.arange(cfg.steps + 1) * cfg.dt
    for name, curve in out.curves.items():
        a.plot(t, curve, "--" if "FO" in name else "-", label=name)  # ZO and FO often coincide
    a.set(xlabel="time", ylabel="mean |u − u_ref|", title="error against the fine reference")
    a.legend(fontsize=8)
    x = np.linspace(0, 2 * math.pi, cfg.coarse, endpoint=False)
    b.plot(x, out.reference, "k", lw=2, label="fine reference")
    for name, u in out.finals.items():
        b.plot(x, u, "--" if "FO" in name else "-", label=name)
    b.set(xlabel="x", ylabel="u", title=f"test trajectory 0 at t = {cfg.steps * cfg.dt:g}")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str] = None) -> Outcome:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pde_correction.png", help="path of the saved plot")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny data and few iterations")
    parser.add_argument(
        "--cells",
        type=int,
        default=16,
        choices=(16, 32, 64),
        help="coarse cells (Δt = 1.6/cells, reference 256 cells, t_end = 2.4)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    grid = dict(coarse=args.cells, factor=256 // args.cells, dt=1.6 / args.cells, substeps=256 // args.cells)
    cfg = Config(seed=args.seed, steps=round(2.4 * args.cells / 1.6), **grid)
    if args.quick:
        cfg = Config(
            seed=args.seed,
            steps=8,
            train_ics=4,
            test_ics=3,
            unroll=3,
            iters_supervised=40,
            iters_unrolled=15,
            batch=8,
            **grid,
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and far faster on a busy machine
    try:
        out = run(cfg)
    finally:
        torch.set_num_threads(threads)
    print(table(out.results, cfg))
    plot(args.out, out, cfg)
    print(f"plot saved to {args.out}")
    return out


if __name__ == "__main__":
    main()
