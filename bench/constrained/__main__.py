"""``python -m bench.constrained [--tables hs scipy scaling] [--problems hs071 ...] [--solvers NPASA ...]
[--slow-large] [--sizes 100 300 1000 3000] [--dense-max-n 1000]``

One run, three tables. (1) ``hs``: the Hock–Schittkowski and polyhedral problems; (2) ``scipy``:
scipy-style problems written from their published definitions (:mod:`.scipy_style`); for both, per
problem and solver, success (|f − f*| ≤ 1e-6·max(1, |f*|) and violation ≤ 1e-6), objective
evaluations, gradient evaluations and time, then per solver the success rate and median counts.
(3) ``scaling``: the convex family of :mod:`.scaling` at n = 100, 300, 1000, 3000 with npasa
(exact gradient and Hessian; and gradient only, BFGS), SLSQP, trust-constr and IPOPT (cyipopt,
where installed; exact Hessian and L-BFGS): time, nfev, njev, success (the solver's own flag,
violation ≤ 1e-6 and f within 1e-6·max(1, |f|) of the best such f of the run), the time ratio
npasa ÷ IPOPT and the per-iteration cost exponent of npasa between consecutive sizes.

Counting is the same for every solver (``runners.Counted`` wraps ``fun`` and ``jac``): nfev is
every call of the objective — line searches, finite differences, zeroth-order estimates and a
final value at the returned point included — and njev every call of the gradient. Constraint
evaluations are not counted for any solver. NPASA and SLSQP get exact gradients, trust-constr
exact gradients and Hessians; NPASA-zo, COBYLA and COBYQA only function values, within the same
budget (``runners.budget``: 300·(n+1) objective evaluations, at most 6 000).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from zeroth.constrained import problems

from . import ipopt, scaling
from .runners import SOLVERS, budget
from .scipy_style import scipy_style_problems

SLOW_ON_LARGE = {"trust-constr", "COBYQA", "COBYLA"}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.constrained", description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="*", default=["hs", "scipy", "scaling"], choices=["hs", "scipy", "scaling"])
    parser.add_argument("--problems", nargs="*", help="HS-table problem names (default: all)")
    parser.add_argument("--solvers", nargs="*", choices=sorted(SOLVERS), help="solvers of the first two tables")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--slow-large", action="store_true",
                        help="also run trust-constr, COBYLA and COBYQA on the n >= 100 problems (hours on 2 cores)")
    parser.add_argument("--sizes", nargs="*", type=int, default=[100, 300, 1000, 3000], help="scaling-table sizes")
    parser.add_argument("--dense-max-n", type=int, default=1000,
                        help="largest n for trust-constr and npasa-bfgs in the scaling table (dense BFGS steps)")
    parser.add_argument("--slsqp-max-n", type=int, default=300,
                        help="largest n for SLSQP in the scaling table (72 s at n = 300 here)")
    args = parser.parse_args(argv)
    solvers = args.solvers or list(SOLVERS)
    if "hs" in args.tables:
        probs = problems.all_problems()
        if args.problems:
            probs = [problems.get(name) for name in args.problems]
        print("== Hock-Schittkowski and polyhedral problems ==")
        _run_table(probs, solvers, args)
        print("nfev = every objective call (line searches, differences, ZO estimates, final value); njev = gradient "
              "calls; constraint calls not counted")
        print("derivative-free budget per problem (NPASA-zo, COBYLA, COBYQA): 300*(n+1) objective evaluations, "
              "at most 6000")
    if "scipy" in args.tables:
        print("\n== scipy-style problems (published definitions; bench/constrained/scipy_style.py) ==")
        _run_table(scipy_style_problems(), [s for s in solvers if s in ("NPASA", "NPASA-zo", "SLSQP", "trust-constr")],
                   args, goals=False)
    if "scaling" in args.tables:
        print("\n== scaling family (bench/constrained/scaling.py) ==")
        _scaling_table(args)


def _run_table(probs, solvers, args, goals=True):
    results = {}
    for p in probs:
        for s in solvers:
            if p.n >= 100 and s in SLOW_ON_LARGE and not args.slow_large:
                continue
            if not args.quiet:
                print(f"  {p.name} {s} ...", file=sys.stderr, flush=True)
            f, x, nfev, njev, t = SOLVERS[s](p)
            results[p.name, s] = (p.solved(f, x), nfev, njev, t)
    _table(probs, solvers, results)
    _summary(probs, solvers, results)
    if goals and not args.slow_large:
        print(f"skipped: {', '.join(sorted(SLOW_ON_LARGE))} on n >= 100 (5 to 40+ min each here; --slow-large runs them)")
    if goals:
        _goals(probs, results)


def _scaling_table(args):
    solvers = ["npasa", "npasa-bfgs", "SLSQP", "trust-constr"]
    if ipopt.available():
        solvers += ["IPOPT", "IPOPT-lbfgs"]
    else:
        print("cyipopt is not installed: no IPOPT column (see bench/constrained/ipopt.py)")
    dense_only = {"npasa-bfgs", "SLSQP", "trust-constr"}
    rows = {}
    for n in args.sizes:
        p = scaling.scaling_problem(n)
        for s in solvers:
            if (s in dense_only and n > args.dense_max_n) or (s == "SLSQP" and n > args.slsqp_max_n):
                continue
            if not args.quiet:
                print(f"  scaling n={n} {s} ...", file=sys.stderr, flush=True)
            rows[n, s] = scaling.run(p, s)
    head = f"{'n':>6s}" + "".join(f"{s:>26s}" for s in solvers)
    print("cell = success(Y/-) time[s] nfev/njev; '.' = not run (--dense-max-n, --slsqp-max-n)")
    print(head)
    print("-" * len(head))
    for n in args.sizes:
        feasible = [r["f"] for (m, _), r in rows.items() if m == n and r["viol"] <= 1e-6 and np.isfinite(r["f"])]
        best = min(feasible) if feasible else np.nan
        line = f"{n:6d}"
        for s in solvers:
            r = rows.get((n, s))
            if r is None:
                line += f"{'.':>26s}"
                continue
            r["ok"] = r["flag"] and r["viol"] <= 1e-6 and abs(r["f"] - best) <= 1e-6 * max(1.0, abs(best))
            cell = f"{'Y' if r['ok'] else '-'} {r['time']:.3f} {r['nfev']}/{r['njev']}"
            line += f"{cell:>26s}"
        print(line)
    print("-" * len(head))
    if "IPOPT" in solvers:
        for n in args.sizes:
            a, b = rows.get((n, "npasa")), rows.get((n, "IPOPT"))
            if a and b:
                print(f"n = {n}: npasa / IPOPT time = {a['time'] / b['time']:.2f} (goal <= 2 for n >= 300); "
                      f"npasa {a['nit']} iterations, {a['time'] / max(1, a['nit']) * 1e3:.1f} ms each")
    sizes = [n for n in args.sizes if (n, "npasa") in rows]
    for n0, n1 in zip(sizes, sizes[1:]):
        a, b = rows[n0, "npasa"], rows[n1, "npasa"]
        k = np.log((b["time"] / max(1, b["nit"])) / (a["time"] / max(1, a["nit"]))) / np.log(n1 / n0)
        print(f"npasa per-iteration time grows like n^{k:.2f} from n = {n0} to {n1} (goal: exponent <= 2)")


def _table(probs, solvers, results):
    cell = 22
    head = f"{'problem':11s}{'n':>4s} {'kind':24s}" + "".join(f"{s:>{cell}s}" for s in solvers)
    print("cell = solved(Y/-) nfev/njev time[s]")
    print(head)
    print("-" * len(head))
    for p in probs:
        row = f"{p.name:11s}{p.n:4d} {p.kind[:24]:24s}"
        for s in solvers:
            if (p.name, s) not in results:
                row += f"{'skipped':>{cell}s}"
                continue
            ok, nfev, njev, t = results[p.name, s]
            row += f"{('Y' if ok else '-') + f' {nfev}/{njev} {t:.2f}':>{cell}s}"
        print(row)
    print("-" * len(head))


def _summary(probs, solvers, results):
    print(f"{'solver':14s}{'solved':>10s}{'rate':>8s}{'median nfev':>13s}{'(solved)':>10s}{'median njev':>13s}"
          f"{'median nfev+njev':>18s}{'total time[s]':>15s}")
    for s in solvers:
        vals = [results[p.name, s] for p in probs if (p.name, s) in results]
        if not vals:
            continue
        solved = sum(v[0] for v in vals)
        med_ok = np.median([v[1] for v in vals if v[0]]) if solved else float("nan")
        print(f"{s:14s}{f'{solved}/{len(vals)}':>10s}{100 * solved / len(vals):7.1f}%"
              f"{np.median([v[1] for v in vals]):13.0f}{med_ok:10.0f}{np.median([v[2] for v in vals]):13.0f}"
              f"{np.median([v[1] + v[2] for v in vals]):18.0f}{sum(v[3] for v in vals):15.1f}")


def _goals(probs, results):
    """The issue's two goals, judged on this run (only where the solvers involved all ran)."""
    def stats(solver, names):
        vals = [results[n, solver] for n in names]
        return sum(v[0] for v in vals), len(vals), float(np.median([v[1] for v in vals]))

    names = [p.name for p in probs]
    ran = lambda *ss: [n for n in names if all((n, s) in results for s in ss)]
    common = ran("NPASA", "SLSQP")
    if common:
        (ok, tot, med), (_, _, med_slsqp) = stats("NPASA", common), stats("SLSQP", common)
        met = ok >= 0.95 * tot and med < med_slsqp
        print(f"goal 1 {'MET' if met else 'MISSED'}: NPASA (exact gradients) solves {ok}/{tot} "
              f"({100 * ok / tot:.1f}%, needs >= 95%) with median nfev {med:.0f} vs SLSQP's {med_slsqp:.0f}")
    common = ran("NPASA-zo", "COBYLA", "COBYQA")
    if common:
        zo, cobyla, cobyqa = (stats(s, common)[0] for s in ("NPASA-zo", "COBYLA", "COBYQA"))
        met = zo > cobyla and zo > cobyqa
        print(f"goal 2 {'MET' if met else 'MISSED'}: within the same budget NPASA (jac='zo') solves {zo}/{len(common)}, "
              f"COBYLA {cobyla}, COBYQA {cobyqa}")


if __name__ == "__main__":
    main()
