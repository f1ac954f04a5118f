"""``python -m bench.constrained [--problems hs071 ...] [--solvers NPASA SLSQP ...]``

One run, one table: for every problem and solver, success (|f − f*| ≤ 1e-6·max(1, |f*|) and
violation ≤ 1e-6), objective evaluations, gradient evaluations and time; then per solver the
success rate and median nfev (over the problems a solver ran). NPASA and SLSQP get exact gradients, trust-constr exact gradients
and Hessians, NPASA-zo / COBYLA / COBYQA only function values within the same budget
(``runners.budget``: 300·(n+1) objective evaluations, at most 6 000).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from zeroth.constrained import problems

from .runners import SOLVERS

SLOW_ON_LARGE = {"trust-constr", "COBYQA", "COBYLA"}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.constrained", description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", help="problem names (default: all)")
    parser.add_argument("--solvers", nargs="*", choices=sorted(SOLVERS), help="solvers (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--slow-large", action="store_true",
                        help="also run trust-constr, COBYLA and COBYQA on the n >= 100 problems (hours on 2 cores)")
    args = parser.parse_args(argv)
    probs = problems.all_problems()
    if args.problems:
        probs = [problems.get(name) for name in args.problems]
    solvers = args.solvers or list(SOLVERS)
    results = {}
    for p in probs:
        for s in solvers:
            if p.n >= 100 and s in SLOW_ON_LARGE and not args.slow_large:
                continue
            if not args.quiet:
                print(f"  {p.name} {s} ...", file=sys.stderr, flush=True)
            f, x, nfev, njev, t = SOLVERS[s](p)
            results[p.name, s] = (p.solved(f, x), nfev, njev, t)
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
    print(f"{'solver':14s}{'solved':>10s}{'rate':>8s}{'median nfev':>13s}{'median nfev (solved)':>22s}"
          f"{'median njev':>13s}{'total time[s]':>15s}")
    for s in solvers:
        vals = [results[p.name, s] for p in probs if (p.name, s) in results]
        solved = sum(v[0] for v in vals)
        med = np.median([v[1] for v in vals])
        med_ok = np.median([v[1] for v in vals if v[0]]) if solved else float("nan")
        medj = np.median([v[2] for v in vals])
        tot = sum(v[3] for v in vals)
        print(f"{s:14s}{f'{solved}/{len(vals)}':>10s}{100 * solved / len(vals):7.1f}%{med:13.0f}{med_ok:22.0f}"
              f"{medj:13.0f}{tot:15.1f}")
    if not args.slow_large:
        print(f"skipped: {', '.join(sorted(SLOW_ON_LARGE))} on n >= 100 (5 to 40+ min each here; --slow-large runs them)")
    print("derivative-free budget per problem: 300*(n+1) objective evaluations, at most 6000")


if __name__ == "__main__":
    main()
