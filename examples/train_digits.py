"""Sparse ZO training of the digits CNN (DeepZero's protocol on load_digits), as a table.

Rows: first-order Adam and SGD (autograd); dense CGE; sparse CGE with ZO-GraSP layer-wise
ratios at several sparsities; sparse CGE with uniform ratios (what ZO-GraSP buys); RGE with
the query budget of sparse CGE at ``--sparsity``. Every ZO row uses Adam as the base rule
and the optimizer's default ``evaluator="auto"``, which picks by fixed rules, never by timing:
the first of FeatureReuseEvaluator, BatchedEvaluator (by a cost rule on the CPU) and
SequentialEvaluator that computes the step exactly (see :class:`zeroth.AutoEvaluator`).

    python examples/train_digits.py --sparsity 0.9                  # 3 seeds, 20 epochs
    python examples/train_digits.py --quick                         # seconds: a smoke run

Columns: test accuracy (mean ± std over seeds, after the last epoch), loss evaluations per
step ("queries"; first-order rows: one forward + backward), seconds per step and wall
seconds per run (training only; ZO-GraSP's cost is printed below the table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from zeroth import CGE, RGE, Objective, ZOOptimizer
from zeroth.data import accuracy, batches, load_digits
from zeroth.models import DigitsCNN
from zeroth.sparsity import DynamicMask, balanced_batch, count_selected, grasp_ratios, save_ratios, uniform_ratios


@dataclass
class Method:
    """One row of the table: how to train."""

    label: str
    kind: str  # "fo-adam" | "fo-sgd" | "cge" | "rge"
    sparsity: Optional[float] = None  # for sparse CGE and the RGE budget
    ratios: str = "grasp"  # "grasp" | "uniform" (sparse CGE)


@dataclass
class Run:
    """One (method, seed) training run."""

    acc: List[float] = field(default_factory=list)  # test accuracy after each epoch
    seconds: float = 0.0
    steps: int = 0
    queries: float = 0.0
    evaluator: str = ""
    grasp_seconds: float = 0.0


def methods(sparsity: float, levels: Sequence[float]) -> List[Method]:
    """The rows, in table order."""
    rows = [
        Method("first-order Adam (autograd)", "fo-adam"),
        Method("first-order SGD m=0.9 (autograd)", "fo-sgd"),
        Method("dense CGE", "cge"),
    ]
    rows += [Method(f"sparse CGE, ZO-GraSP {s:.0%}", "cge", s) for s in levels]
    rows += [
        Method(f"sparse CGE, uniform {sparsity:.0%}", "cge", sparsity, "uniform"),
        Method(f"RGE, budget of sparse {sparsity:.0%}", "rge", sparsity),
    ]
    return rows


def train(method: Method, seed: int, args: argparse.Namespace) -> Run:
    """Train a fresh DigitsCNN with ``method``; deterministic given ``seed``."""
    torch.manual_seed(seed)
    device = torch.device(args.device)
    data = load_digits(device=device)
    x_train, y_train = data.x_train[: args.train_size], data.y_train[: args.train_size]
    model = DigitsCNN().to(device)
    gen = torch.Generator().manual_seed(seed)
    run = Run()
    opt = None
    if method.kind == "fo-adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    elif method.kind == "fo-sgd":
        opt = torch.optim.SGD(model.parameters(), lr=args.sgd_lr, momentum=0.9)
    else:
        mask = None
        if method.sparsity is not None:
            if method.ratios == "uniform":
                ratios = uniform_ratios(model, method.sparsity)
            else:
                start = time.perf_counter()
                xg, yg = balanced_batch(data.x_train, data.y_train, args.grasp_per_class, gen)
                ratios = grasp_ratios(
                    model,
                    Objective(model, F.cross_entropy, xg, yg),
                    method.sparsity,
                    q=args.grasp_q,
                    mu=5e-3,
                    generator=gen,
                )
                run.grasp_seconds = time.perf_counter() - start
                if args.save_ratios and seed == args.seeds[0]:
                    save_ratios(
                        f"{args.save_ratios}/digits_grasp_{method.sparsity:g}.json",
                        ratios,
                        sparsity=method.sparsity,
                        q=args.grasp_q,
                        mu=5e-3,
                        seed=seed,
                        model="DigitsCNN",
                    )
            mask = DynamicMask(ratios, args.resample_every, model=model)
        if method.kind == "rge":
            params = list(model.parameters())  # q + 1 queries = those of sparse CGE at that sparsity
            budget = DynamicMask(uniform_ratios(model, method.sparsity), model=model).select(
                params, 0, torch.Generator()
            )
            estimator, mask = RGE(q=count_selected(budget, params), mu=args.mu), None
        else:
            estimator = CGE(mu=args.mu)
        opt = ZOOptimizer(model.parameters(), lr=args.lr, base="adam", estimator=estimator, sparsity=mask, seed=seed)
    sched = None
    if args.schedule == "cosine":  # to zero over the run: the last epochs average out step noise
        total = args.epochs * (x_train.shape[0] // args.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    for _ in range(args.epochs):
        start = time.perf_counter()
        for xb, yb in batches(x_train, y_train, args.batch_size, gen):
            if isinstance(opt, ZOOptimizer):
                opt.step(Objective(model, F.cross_entropy, xb, yb))
            else:
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            if sched is not None:
                sched.step()
            run.steps += 1
        run.seconds += time.perf_counter() - start
        run.acc.append(accuracy(model, data.x_test, data.y_test))
    if isinstance(opt, ZOOptimizer):
        run.queries = opt.num_evaluations / max(opt.zo_steps, 1)
        chosen = getattr(opt.evaluator, "last", None) or opt.evaluator
        run.evaluator = type(chosen).__name__
    else:
        run.queries = 1.0
        run.evaluator = "autograd"
    return run


def _job(payload):
    method, seed, args = payload
    torch.set_num_threads(args.threads)
    return train(method, seed, args)


def table(rows: List[Method], runs: Dict[str, List[Run]]) -> str:
    """The accuracy table as plain text."""
    head = f"{'method':<34} {'test acc (mean ± std)':>22} {'queries/step':>12} {'s/step':>8} {'wall s':>7}  evaluator"
    lines = [head, "-" * len(head)]
    for m in rows:
        rs = runs[m.label]
        accs = [100 * r.acc[-1] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        secs = statistics.mean(r.seconds for r in rs)
        per_step = statistics.mean(r.seconds / max(r.steps, 1) for r in rs)
        acc = f"{statistics.mean(accs):6.2f} ± {std:4.2f} %"
        lines.append(
            f"{m.label:<34} {acc:>22} {rs[0].queries:>12,.0f} {per_step:>8.4f} {secs:>7.1f}  {rs[0].evaluator}"
        )
    return "\n".join(lines)


def plot(rows: List[Method], runs: Dict[str, List[Run]], path: str) -> None:
    """Mean test accuracy per epoch of every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in rows:
        curves = torch.tensor([r.acc for r in runs[m.label]]).mean(0)
        ax.plot(range(1, len(curves) + 1), 100 * curves, marker=".", label=m.label)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="DigitsCNN on load_digits: sparse ZO vs first-order")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sparsity", type=float, default=0.9, help="sparsity of the uniform-ratio and RGE-budget rows")
    p.add_argument("--levels", type=float, nargs="+", default=[0.8, 0.9, 0.95], help="ZO-GraSP sparsities")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-2, help="Adam learning rate (first-order and ZO rows)")
    p.add_argument("--sgd-lr", type=float, default=0.1)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine", help="learning-rate schedule")
    p.add_argument("--mu", type=float, default=1e-3, help="finite-difference step of CGE/RGE")
    p.add_argument("--resample-every", type=int, default=1, help="steps between mask re-draws")
    p.add_argument("--grasp-q", type=int, default=192)
    p.add_argument("--grasp-per-class", type=int, default=25)
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training images")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default="cpu", help="torch device of model and data (e.g. cuda)")
    p.add_argument("--plot", default="train_digits.png", help="plot file ('' for none)")
    p.add_argument("--save-ratios", default="", help="folder for the ZO-GraSP ratios JSON of the first seed")
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 256 images, q=16: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train_size, args.grasp_q, args.levels = (
            args.seeds[:1],
            1,
            256,
            16,
            [args.sparsity],
        )
    if args.sparsity not in args.levels:
        args.levels = sorted(set(args.levels) | {args.sparsity})
    for name in ("sparsity",):
        if not 0.0 <= getattr(args, name) < 1.0:
            p.error(f"--{name} must be in [0, 1)")
    if any(not 0.0 <= s < 1.0 for s in args.levels):
        p.error("--levels must be in [0, 1)")
    if args.epochs < 1 or args.workers < 1 or args.threads < 1 or args.resample_every < 1:
        p.error("--epochs, --workers, --threads and --resample-every must be >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[Run]]:
    args = parse(argv)
    rows = methods(args.sparsity, args.levels)
    jobs = [(m, s, args) for m in rows for s in args.seeds]
    start = time.perf_counter()
    if args.workers > 1 and args.device.startswith("cuda"):
        import multiprocessing

        multiprocessing.set_start_method("spawn", force=True)  # CUDA cannot be used in forked workers
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_job, jobs))
    else:
        results = []
        for i, job in enumerate(jobs):
            print(f"[{i + 1}/{len(jobs)}] {job[0].label}, seed {job[1]}", file=sys.stderr, flush=True)
            results.append(_job(job))
    runs: Dict[str, List[Run]] = {m.label: [] for m in rows}
    for (m, _, _), r in zip(jobs, results):
        runs[m.label].append(r)
    n_train = args.train_size or "all"
    print(
        f"\nDigitsCNN (3 818 parameters) on load_digits ({n_train} training images, 450 test), "
        f"{args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}, Adam lr {args.lr:g} "
        f"(SGD lr {args.sgd_lr:g}) {args.schedule}, mu {args.mu:g}, "
        f"masks re-drawn every {args.resample_every} step(s), "
        f"device {args.device}\n"
    )
    print(table(rows, runs))
    grasp = [r.grasp_seconds for m in rows for r in runs[m.label] if r.grasp_seconds]
    if grasp:
        print(
            f"\nZO-GraSP (q={args.grasp_q}, {args.grasp_per_class} images per class): {2 * (args.grasp_q + 1)} "
            f"loss evaluations, {statistics.mean(grasp):.2f} s per call (not in wall s)"
        )
    print(f"total wall time {time.perf_counter() - start:.0f} s")
    if args.plot:
        plot(rows, runs, args.plot)
        print(f"plot saved to {args.plot}")
    return runs


if __name__ == "__main__":
    main()
