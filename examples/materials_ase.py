"""A network coupled to a physics calculator: fcc lattice constants from composition, few labels.

Knowledge source: ASE's EMT potential (effective-medium theory for Al, Cu, Ag, Au, Ni, Pd, Pt),
called as a black box — no gradient, no change to its code. Task: predict the equilibrium
lattice constant ``a`` of fcc metals and ordered binary alloys (4-atom cubic cells A₄, A₃B,
A₂B₂, AB₃) from the composition vector. "Truth" is the calculator's own equilibrium (the
minimum of its energy over ``a``, found by a scalar minimisation) — the calculator is the
knowledge, so this is the quantity it can teach.

Only a few structures are labelled. Two networks with the same architecture, initialisation
and number of steps:

* **data only** — mean-squared error on the labelled structures;
* **coupled (ZO)** — the same loss plus the calculator's energy per atom at the predicted
  lattice constant, on the unlabelled training structures:
  ``loss = MSE(a_pred, a_label) + λ · mean E_EMT(structure, a_pred)``.
  ``E_EMT`` is ``BlackBox(from_numpy(energy, batched=True), CGE(mu))``: the energy and its
  derivative (from one extra calculator call per structure) feed ``loss.backward()``.

Both are evaluated on held-out compositions that neither saw. Prints a table and saves a plot.

    python examples/materials_ase.py            # ≈ 1–3 min on 2 CPU cores
    python examples/materials_ase.py --quick    # seconds; used by the tests

Needs ASE (``pip install 'zeroth-optim[science]'``).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from zeroth import CGE
from zeroth._optional import require
from zeroth.blackbox import BlackBox, from_numpy

EMT_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
# occupations of the 4 sites of the conventional fcc cell: A4, A3B (L1_2), A2B2 (L1_0), AB3, B4
ORDERINGS = ((0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 1), (0, 1, 1, 1))


@dataclass
class Config:
    metals: Tuple[str, ...] = EMT_METALS
    labelled: int = 8  # structures with a known lattice constant
    unlabelled: int = 40  # training structures seen only through the calculator
    warmup: int = 400  # label-only steps shared by both networks
    steps: int = 150  # then: labels only (data only) vs labels + energy (coupled)
    batch: int = 16  # unlabelled structures per coupled step
    energy_weight: float = 1.0
    lr: float = 1e-2
    mu: float = 1e-4  # Å, CGE step on the lattice constant
    seed: int = 0
    hidden: Tuple[int, ...] = field(default=(32, 32))


class Structures:
    """The candidate structures, one ASE Atoms (with its own EMT calculator) each."""

    def __init__(self, metals: Sequence[str]):
        ase_build = require("ase.build", "science")
        emt = require("ase.calculators.emt", "science")
        self.metals = tuple(metals)
        self.names: List[str] = []
        self.atoms = []
        comps = []
        pairs = [(a, a) for a in metals] + list(itertools.combinations(metals, 2))
        for a, b in pairs:
            for order in ORDERINGS[:1] if a == b else ORDERINGS[1:]:
                species = [a if s == 0 else b for s in order]
                atoms = ase_build.bulk(a, "fcc", a=4.0, cubic=True)
                atoms.set_chemical_symbols(species)
                atoms.calc = emt.EMT()
                self.atoms.append(atoms)
                counts = {m: species.count(m) for m in set(species)}
                self.names.append(
                    a if a == b else "".join(f"{m}{counts[m] if counts[m] > 1 else ''}" for m in sorted(counts))
                )
                comps.append([species.count(m) / 4 for m in metals])
        self.composition = torch.tensor(comps, dtype=torch.float32)  # (S, len(metals))

    def __len__(self) -> int:
        return len(self.atoms)

    def energy(self, a: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Energy per atom (eV) of structures ``index`` at cubic lattice constants ``a`` (Å): the black box."""
        out = np.empty((len(index), 1))
        for k, (ak, i) in enumerate(zip(a.reshape(-1), index.reshape(-1))):
            atoms = self.atoms[int(i)]
            atoms.set_cell(np.eye(3) * float(ak), scale_atoms=True)
            out[k, 0] = atoms.get_potential_energy() / len(atoms)
        return out

    def equilibrium(self, i: int) -> Tuple[float, int]:
        """The calculator's equilibrium lattice constant of structure ``i`` and the calls it took."""
        optimize = require("scipy.optimize", "science")
        calls = [0]

        def e(a):
            calls[0] += 1
            return float(self.energy(np.array([a]), np.array([i]))[0, 0])

        res = optimize.minimize_scalar(e, bounds=(3.3, 4.5), method="bounded", options={"xatol": 1e-5})
        return float(res.x), calls[0]


class LatticeNet(nn.Module):
    """Composition (fractions of each metal) -> lattice constant in Å."""

    def __init__(self, n_in: int, hidden: Sequence[int], offset: float):
        super().__init__()
        layers, width = [], n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.body = nn.Sequential(*layers, nn.Linear(width, 1))
        self.offset = offset

    def forward(self, comp):  # (B, n_in) -> (B, 1)
        return self.offset + 0.3 * self.body(comp)


@dataclass
class Outcome:
    results: Dict[str, Dict[str, float]]
    names: List[str]
    truth: np.ndarray  # test structures' equilibrium lattice constants
    predictions: Dict[str, np.ndarray]
    label_calls: int  # calculator calls spent computing the labels/truth


def split(n: int, cfg: Config) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    if cfg.labelled + cfg.unlabelled >= n:
        raise ValueError(f"labelled + unlabelled must leave test structures: {cfg.labelled} + {cfg.unlabelled} >= {n}")
    return (
        perm[: cfg.labelled],
        perm[cfg.labelled : cfg.labelled + cfg.unlabelled],
        perm[cfg.labelled + cfg.unlabelled :],
    )


def run(cfg: Config) -> Outcome:
    structures = Structures(cfg.metals)
    truth, label_calls = [], 0
    for i in range(len(structures)):
        a, c = structures.equilibrium(i)
        truth.append(a)
        label_calls += c
    truth_t = torch.tensor(truth, dtype=torch.float32).unsqueeze(1)
    lab, unl, test = split(len(structures), cfg)
    comp = structures.composition

    torch.manual_seed(cfg.seed)
    base = LatticeNet(comp.shape[1], cfg.hidden, offset=float(truth_t[lab].mean()))
    opt = torch.optim.Adam(base.parameters(), lr=cfg.lr)
    for _ in range(cfg.warmup):  # shared label-only phase
        opt.zero_grad()
        (base(comp[lab]) - truth_t[lab]).pow(2).mean().backward()
        opt.step()

    results, preds = {}, {}
    energy = BlackBox(from_numpy(structures.energy, batched=True, name="ASE EMT"), CGE(mu=cfg.mu), seed=cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    for name, coupled in (("data only (labels)", False), ("coupled to EMT (ZO)", True)):
        net = LatticeNet(comp.shape[1], cfg.hidden, base.offset)
        net.load_state_dict(base.state_dict())
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        start = time.perf_counter()
        for _ in range(cfg.steps):
            opt.zero_grad()
            loss = (net(comp[lab]) - truth_t[lab]).pow(2).mean()
            if coupled:
                idx = unl[torch.randperm(len(unl), generator=g)[: cfg.batch]]
                loss = loss + cfg.energy_weight * energy(net(comp[idx]), idx).mean()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            pred = net(comp[test])
        err = (pred - truth_t[test]).abs()
        results[name] = {
            "mae": float(err.mean()),
            "max": float(err.max()),
            "rel": float((err / truth_t[test]).mean() * 100),
            "seconds": seconds,
            "calls": energy.num_calls if coupled else 0,
            "points": energy.num_points if coupled else 0,
        }
        preds[name] = pred.squeeze(1).numpy()
    return Outcome(
        results, [structures.names[int(i)] for i in test], truth_t[test].squeeze(1).numpy(), preds, label_calls
    )


def table(out: Outcome, cfg: Config) -> str:
    n_test = len(out.names)
    lines = [
        f"fcc lattice constants from composition: {cfg.labelled} labelled, {cfg.unlabelled} unlabelled, "
        f"{n_test} test structures (truth: EMT equilibrium, {out.label_calls} calculator calls to compute)",
        f"{'method':<24} {'test MAE (Å)':>13} {'max err (Å)':>12} {'rel. err %':>11} {'train s':>8} "
        f"{'EMT calls':>10} {'query points':>13}",
    ]
    for name, r in out.results.items():
        lines.append(
            f"{name:<24} {r['mae']:>13.4f} {r['max']:>12.4f} {r['rel']:>11.2f} {r['seconds']:>8.1f} "
            f"{r['calls']:>10} {r['points']:>13}"
        )
    return "\n".join(lines)


def plot(path: str, out: Outcome) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = float(out.truth.min()) - 0.05, float(out.truth.max()) + 0.05
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    for (name, pred), marker in zip(out.predictions.items(), ("o", "s")):
        mae = out.results[name]["mae"]
        ax.scatter(out.truth, pred, marker=marker, label=f"{name}: MAE {mae:.3f} Å", alpha=0.8)
    ax.set(xlabel="EMT equilibrium a (Å)", ylabel="predicted a (Å)", title="held-out fcc metals and alloys")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str] = None) -> Outcome:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="materials_ase.png", help="path of the saved plot")
    parser.add_argument("--quick", action="store_true", help="a few seconds: 4 metals and few steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = Config(seed=args.seed)
    if args.quick:
        cfg = Config(seed=args.seed, metals=("Cu", "Ag", "Ni"), labelled=3, unlabelled=5, warmup=60, steps=10, batch=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and far faster on a busy machine
    try:
        out = run(cfg)
    finally:
        torch.set_num_threads(threads)
    print(table(out, cfg))
    plot(args.out, out)
    print(f"plot saved to {args.out}")
    return out


if __name__ == "__main__":
    main()
