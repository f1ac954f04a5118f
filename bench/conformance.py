"""The conformance table: every evaluator on every case of ``zeroth.testing.ZOO``, in float64.

Run: ``python -m bench.conformance [--estimators cge_forward cge_central rge] [--cases NAME ...]``.

Each cell is ``exact`` (agrees with SequentialEvaluator: largest gradient difference relative to
SequentialEvaluator's largest entry, ≤ 1e-6), ``declined`` (the path says no, or raised with parameters
and buffers restored — the reason is printed below the table) or ``WRONG`` (never expected).
The ``auto`` column names the evaluator that produced its result.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Dict, List

from zeroth.testing import ESTIMATORS, ZOO, Outcome, check


def _cell(out: Outcome, auto: bool) -> str:
    if out.status == "declined":
        return "declined"
    text = out.status if not auto else f"{out.status} ({out.path})"
    return f"{text} {out.error:.0e}"


def main(argv=None) -> Dict[str, Dict[str, Dict[str, Outcome]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--cases", nargs="+", default=list(ZOO), choices=list(ZOO))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    table: Dict[str, Dict[str, Dict[str, Outcome]]] = {}
    reasons: Dict[str, List[str]] = {}
    for est in args.estimators:
        print(f"\n{est}: gradient of every evaluator vs SequentialEvaluator (float64)")
        print(f"{'case':<28}{'FeatureReuseEvaluator':<24}{'BatchedEvaluator':<20}{'auto':<36}")
        for name in args.cases:
            out = check(name, est)
            table.setdefault(name, {})[est] = out
            print(
                f"{name:<28}{_cell(out['FeatureReuseEvaluator'], False):<24}{_cell(out['BatchedEvaluator'], False):<20}"
                f"{_cell(out['auto'], True):<36}",
                flush=True,
            )
            for label in ("FeatureReuseEvaluator", "BatchedEvaluator"):
                if out[label].status == "declined" and (est != "rge" or label != "FeatureReuseEvaluator"):
                    reasons.setdefault(f"{label}: {out[label].reason}", []).append(name)
    print("\nwhy a fast path declined (cases):")
    for reason, names in reasons.items():
        print(f"  {reason}  [{', '.join(sorted(set(names)))}]")
    wrong = [
        (n, e, k) for n, row in table.items() for e, out in row.items() for k, o in out.items() if o.status == "WRONG"
    ]
    print(
        f"\n{sum(1 for row in table.values() for out in row.values() for o in out.values())} cells, "
        f"{len(wrong)} wrong" + (f": {wrong}" if wrong else "")
    )
    return table


if __name__ == "__main__":
    main()
