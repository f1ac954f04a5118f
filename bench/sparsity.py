"""Sparse CGE: queries and time of one step at each sparsity, side by side in one run.

Run: ``python -m bench.sparsity [--batch 256] [--repeat 3]``. Masks come from
``DynamicMask`` at uniform or ZO-GraSP layer ratios (the ratios are scored once, before
timing); every row times ``estimate_gradient`` with the same evaluator on the same batch,
so the time ratio to the dense row is the reduction a training step sees.
"""

from __future__ import annotations

import argparse
from typing import List

import torch

from zeroth import CGE, estimate_gradient
from zeroth.engine import FeatureReuseEvaluator, SequentialEvaluator
from zeroth.sparsity import DynamicMask, count_selected, grasp_ratios, uniform_ratios

from .engine import median_time, problem


def sparsity_table(batch: int, repeat: int, sparsities=(0.8, 0.9, 0.95)) -> List[str]:
    model, obj, params = problem("digits_cnn", batch)
    dense = sum(p.numel() for p in params)
    rows = [
        f"digits_cnn, batch {batch}: one sparse CGE step (masks from DynamicMask; biases always estimated)",
        f"{'ratios':<18}{'sparsity':>9}{'queries':>9}{'x fewer':>9}"
        f"{'FeatureReuseEvaluator s':>16}{'x faster':>10}{'SequentialEvaluator s':>14}{'x faster':>10}",
    ]
    evaluators = {"fr": FeatureReuseEvaluator(), "seq": SequentialEvaluator()}
    times = {}
    cases = [("dense", 0.0, None)]
    for s in sparsities:
        cases.append(("uniform", s, uniform_ratios(model, s)))
        cases.append(("ZO-GraSP", s, grasp_ratios(model, obj, sparsity=s, generator=torch.Generator().manual_seed(0))))
    for label, s, ratios in cases:
        masks = None
        if ratios is not None:
            masks = DynamicMask(ratios, model=model).select(params, 0, torch.Generator().manual_seed(1))
        queries = count_selected(masks, params)
        for key, ev in evaluators.items():
            times[key] = median_time(
                lambda ev=ev, masks=masks: estimate_gradient(obj, params, CGE(mu=1e-3), ev, masks=masks), repeat
            )
        if ratios is None:
            base = dict(times)
        rows.append(
            f"{label:<18}{s:>9.2f}{queries:>9,}{dense / queries:>9.1f}"
            f"{times['fr']:>16.4f}{base['fr'] / times['fr']:>10.1f}"
            f"{times['seq']:>14.4f}{base['seq'] / times['seq']:>10.1f}"
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("\n".join(sparsity_table(args.batch, args.repeat)), "\n")


if __name__ == "__main__":
    main()
