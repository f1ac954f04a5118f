"""``python -m bench.constrained [--problems hs071 ...] [--solvers NPASA SLSQP ...] [--slow-large]``

One run, one table: for every problem and solver, success (|f − f*| ≤ 1e-6·max(1, |f*|) and
violation ≤ 1e-6), objective evaluations, gradient evaluations and time; then per solver the
success rate and median counts (over the problems a solver ran), and the issue's two goals.

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

from .runners import SOLVERS, budget

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
    _table(probs, solvers, results)
    _summary(probs, solvers, results)
    if not args.slow_large:
        print(f"skipped: {', '.join(sorted(SLOW_ON_LARGE))} on n >= 100 (5 to 40+ min each here; --slow-large runs them)")
    print("nfev = every objective call (line searches, differences, ZO estimates, final value); njev = gradient "
          "calls; constraint calls not counted")
    print("derivative-free budget per problem (NPASA-zo, COBYLA, COBYQA): 300*(n+1) objective evaluations, at most 6000")
    _goals(probs, results)


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
