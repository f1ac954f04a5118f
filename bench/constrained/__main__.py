"""``python -m bench.constrained [--tables hs scipy scaling] [--problems hs071 ...] [--solvers NPASA ...]
[--slow-large] [--sizes 100 300 1000 3000] [--dense-max-n 1000] [--repeat 3]``

One run, three tables. (1) ``hs``: the Hock–Schittkowski and polyhedral problems; (2) ``scipy``:
scipy-style problems written from their published definitions (:mod:`.scipy_style`); for both, per
problem and solver, success (|f − f*| ≤ 1e-6·max(1, |f*|) and violation ≤ 1e-6), objective
evaluations, gradient evaluations and time, then per solver the success rate and median counts.
(3) ``scaling``: the convex family of :mod:`.scaling` at n = 100, 300, 1000, 3000 with npasa
(exact gradient and Hessian; and gradient only, BFGS), SLSQP, trust-constr and IPOPT (cyipopt,
where installed; exact Hessian and L-BFGS): wall and CPU time (npasa and IPOPT: medians over
``--repeat`` rounds run in alternating order, so that load on this shared machine hits both
alike), nfev, njev, success (the solver's own flag, violation ≤ 1e-6 and f within
1e-6·max(1, |f|) of the best such f of the run; each failure is explained below the table),
the time ratio npasa ÷ IPOPT (median of the paired rounds) and the per-iteration cost exponent
of npasa between consecutive sizes.

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
from .runners import SOLVERS
from .scipy_style import scipy_style_problems

SLOW_ON_LARGE = {"trust-constr", "COBYQA", "COBYLA"}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.constrained", description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="*", default=["hs", "scipy", "scaling"], choices=["hs", "scipy", "scaling"])
    parser.add_argument("--problems", nargs="*", help="HS-table problem names (default: all)")
    parser.add_argument("--solvers", nargs="*", choices=sorted(SOLVERS), help="solvers of the first two tables")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--slow-large",
        action="store_true",
        help="also run trust-constr, COBYLA and COBYQA on the n >= 100 problems (hours on 2 cores)",
    )
    parser.add_argument("--sizes", nargs="*", type=int, default=[100, 300, 1000, 3000], help="scaling-table sizes")
    parser.add_argument(
        "--dense-max-n",
        type=int,
        default=1000,
        help="largest n for trust-constr and npasa-bfgs in the scaling table (dense BFGS steps)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="scaling table: alternating rounds for npasa and IPOPT (medians reported)"
    )
    parser.add_argument(
        "--slsqp-max-n", type=int, default=300, help="largest n for SLSQP in the scaling table (72 s at n = 300 here)"
    )
    args = parser.parse_args(argv)
    solvers = args.solvers or list(SOLVERS)
    if "hs" in args.tables:
        probs = problems.all_problems()
        if args.problems:
            probs = [problems.get(name) for name in args.problems]
        print("== Hock-Schittkowski and polyhedral problems ==")
        _run_table(probs, solvers, args)
        print(
            "nfev = every objective call (line searches, differences, ZO estimates, final value); njev = gradient "
            "calls; constraint calls not counted"
        )
        print(
            "derivative-free budget per problem (NPASA-zo, COBYLA, COBYQA): 300*(n+1) objective evaluations, "
            "at most 6000"
        )
    if "scipy" in args.tables:
        print("\n== scipy-style problems (published definitions; bench/constrained/scipy_style.py) ==")
        _run_table(
            scipy_style_problems(),
            [s for s in solvers if s in ("NPASA", "NPASA-zo", "SLSQP", "trust-constr")],
            args,
            goals=False,
        )
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
        print(
            f"skipped: {', '.join(sorted(SLOW_ON_LARGE))} on n >= 100 (5 to 40+ min each here; --slow-large runs them)"
        )
    if goals:
        _goals(probs, results)


REPEATED = ("npasa", "npasa-bfgs", "IPOPT", "IPOPT-lbfgs")  # timed in alternating rounds (--repeat)


def _scaling_table(args):
    solvers = ["npasa", "npasa-bfgs", "SLSQP", "trust-constr"]
    if ipopt.available():
        solvers += ["IPOPT", "IPOPT-lbfgs"]
    else:
        print("cyipopt is not installed: no IPOPT column (see bench/constrained/ipopt.py)")
    dense_only = {"npasa-bfgs", "SLSQP", "trust-constr"}
    runs = {}  # (n, solver) -> list of results, one per round
    for n in args.sizes:
        p = scaling.scaling_problem(n)
        todo = [
            s
            for s in solvers
            if not ((s in dense_only and n > args.dense_max_n) or (s == "SLSQP" and n > args.slsqp_max_n))
        ]
        for r in range(args.repeat):
            order = todo if r % 2 == 0 else todo[::-1]  # alternate the order: no solver always runs first
            for s in order:
                if r and s not in REPEATED:
                    continue
                if not args.quiet:
                    print(f"  scaling n={n} {s} round {r + 1} ...", file=sys.stderr, flush=True)
                runs.setdefault((n, s), []).append(scaling.run(p, s))
    rows = {}
    for key, results in runs.items():
        first = results[0]
        same = all(r["f"] == first["f"] and r["flag"] == first["flag"] for r in results)
        rows[key] = dict(
            first,
            time=float(np.median([r["time"] for r in results])),
            cpu=float(np.median([r["cpu"] for r in results])),
            rounds=len(results),
            same=same,
        )
    head = f"{'n':>6s}" + "".join(f"{s:>28s}" for s in solvers)
    print(
        f"cell = success(Y/-) wall[s] (cpu[s]) nfev/njev: medians over {args.repeat} alternating rounds for "
        f"{', '.join(REPEATED)}, one run for the others; '.' = not run (--dense-max-n, --slsqp-max-n)"
    )
    print(head)
    print("-" * len(head))
    notes = []
    for n in args.sizes:
        feasible = [r["f"] for (m, _), r in rows.items() if m == n and r["viol"] <= 1e-6 and np.isfinite(r["f"])]
        best = min(feasible) if feasible else np.nan
        line = f"{n:6d}"
        for s in solvers:
            r = rows.get((n, s))
            if r is None:
                line += f"{'.':>28s}"
                continue
            r["ok"] = r["flag"] and r["viol"] <= 1e-6 and abs(r["f"] - best) <= 1e-6 * max(1.0, abs(best))
            cell = f"{'Y' if r['ok'] else '-'} {r['time']:.3f} ({r['cpu']:.3f}) {r['nfev']}/{r['njev']}"
            line += f"{cell:>28s}"
            if not r["ok"]:
                notes.append(
                    f"n = {n} {s}: own flag {r['flag']}, violation {r['viol']:.3g}, "
                    f"f - best = {r['f'] - best:.3g} (best f {best:.10g})"
                )
            if not r["same"]:
                notes.append(f"n = {n} {s}: rounds returned different results")
        print(line)
    print("-" * len(head))
    for note in notes:
        print("not solved:", note)
    if "IPOPT" in solvers:
        for n in args.sizes:
            a, b = runs.get((n, "npasa")), runs.get((n, "IPOPT"))
            if a and b:
                k = min(len(a), len(b))
                wall = [x["time"] / y["time"] for x, y in zip(a[:k], b[:k])]
                cpu = [x["cpu"] / y["cpu"] for x, y in zip(a[:k], b[:k])]
                nit = rows[n, "npasa"]["nit"]
                print(
                    f"n = {n}: npasa / IPOPT time = {np.median(wall):.2f} wall, {np.median(cpu):.2f} cpu "
                    f"(medians of {k} paired rounds; goal <= 2 for n >= 300); npasa {nit} iterations, "
                    f"{rows[n, 'npasa']['cpu'] / max(1, nit) * 1e3:.1f} ms cpu each"
                )
    sizes = [n for n in args.sizes if (n, "npasa") in rows]
    for n0, n1 in zip(sizes, sizes[1:]):
        a, b = rows[n0, "npasa"], rows[n1, "npasa"]
        k = np.log((b["cpu"] / max(1, b["nit"])) / (a["cpu"] / max(1, a["nit"]))) / np.log(n1 / n0)
        print(f"npasa per-iteration cpu time grows like n^{k:.2f} from n = {n0} to {n1} (goal: exponent <= 2)")


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
    print(
        f"{'solver':14s}{'solved':>10s}{'rate':>8s}{'median nfev':>13s}{'(solved)':>10s}{'median njev':>13s}"
        f"{'median nfev+njev':>18s}{'total time[s]':>15s}"
    )
    for s in solvers:
        vals = [results[p.name, s] for p in probs if (p.name, s) in results]
        if not vals:
            continue
        solved = sum(v[0] for v in vals)
        med_ok = np.median([v[1] for v in vals if v[0]]) if solved else float("nan")
        print(
            f"{s:14s}{f'{solved}/{len(vals)}':>10s}{100 * solved / len(vals):7.1f}%"
            f"{np.median([v[1] for v in vals]):13.0f}{med_ok:10.0f}{np.median([v[2] for v in vals]):13.0f}"
            f"{np.median([v[1] + v[2] for v in vals]):18.0f}{sum(v[3] for v in vals):15.1f}"
        )


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
        print(
            f"goal 1 {'MET' if met else 'MISSED'}: NPASA (exact gradients) solves {ok}/{tot} "
            f"({100 * ok / tot:.1f}%, needs >= 95%) with median nfev {med:.0f} vs SLSQP's {med_slsqp:.0f}"
        )
    common = ran("NPASA-zo", "COBYLA", "COBYQA")
    if common:
        zo, cobyla, cobyqa = (stats(s, common)[0] for s in ("NPASA-zo", "COBYLA", "COBYQA"))
        met = zo > cobyla and zo > cobyqa
        print(
            f"goal 2 {'MET' if met else 'MISSED'}: within the same budget NPASA (jac='zo') solves "
            f"{zo}/{len(common)}, COBYLA {cobyla}, COBYQA {cobyqa}"
        )


if __name__ == "__main__":
    main()
