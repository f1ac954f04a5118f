"""ResNet-20 trained with sparse CGE across every GPU of a Ray cluster (one actor per GPU).

The optimizer runs here (the driver); each step's loss evaluations — one per selected
coordinate — are spread over Ray actors, each holding a copy of the model and running the
feature-reuse evaluator on its share (``zeroth.distributed.RayEvaluator``). Without GPUs the
actors are CPU workers, one per core. Masks keep a fraction ``1 − --sparsity`` of every
Conv/Linear weight (re-drawn every ``--resample`` steps) plus all BN parameters and biases,
as in DeepZero.

On a GPU cluster, with the standard python-pickle batches (``cifar-10-batches-py``)::

    ray start --head --num-gpus 8         # or an existing cluster: --address auto
    python examples/ray_multi_gpu.py --data-dir /data/cifar-10-batches-py --address auto \\
        --batch-size 256 --sparsity 0.9 --epochs 50

Without ``--data-dir`` it makes ``--steps`` (default 2) steps of batch 8 on synthetic images
(about 1,650 coordinates a step, nearly all of them BN parameters and biases), which finishes
in about a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from zeroth import CGE, Objective, ZOOptimizer
from zeroth.data import accuracy
from zeroth.distributed import RayEvaluator
from zeroth.models import resnet20
from zeroth.sparsity import DynamicMask, uniform_ratios

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_cifar_resnet20 import augment, load_cifar10, synthetic  # noqa: E402  (the single-device recipe's data)


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="", help="folder with data_batch_1..5 and test_batch (python pickle)")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto', 'ray://head:10001'); default: RAY_ADDRESS, else Ray on this machine",
    )
    p.add_argument("--num-workers", type=int, default=None, help="actors (default: one per GPU, else per CPU)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default: all; 2 without data)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sparsity", type=float, default=0.999, help="fraction of Conv/Linear weights not estimated")
    p.add_argument("--resample", type=int, default=50, help="steps between mask re-draws")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--mu", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        p.error("--sparsity must be in [0, 1)")
    if min(args.epochs, args.batch_size, args.resample) < 1 or (args.steps is not None and args.steps < 1):
        p.error("--epochs, --batch-size, --resample and --steps must be >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse(argv)
    torch.manual_seed(args.seed)
    if args.data_dir:
        x_train, y_train, x_test, y_test = load_cifar10(args.data_dir)
    else:
        args.steps = args.steps or 2
        x_train, y_train, x_test, y_test = synthetic(args.steps * args.batch_size, 200, args.seed)
        print(f"no --data-dir: {args.steps} step(s) on synthetic images", file=sys.stderr)
    steps = min(x_train.shape[0] // args.batch_size, args.steps or 10**9)

    model = resnet20()  # the driver's copy stays on the CPU: it only takes the SGD steps
    evaluator = RayEvaluator("auto", num_workers=args.num_workers, address=args.address)  # {"GPU": 1} each if any
    mask = DynamicMask(uniform_ratios(model, args.sparsity), args.resample, model=model)
    opt = ZOOptimizer(
        model.parameters(),
        lr=args.lr,
        estimator=CGE(mu=args.mu),
        base="sgd",
        momentum=0.9,
        sparsity=mask,
        evaluator=evaluator,
        seed=args.seed,
    )
    start = time.perf_counter()
    evaluator.start()
    workers = evaluator.describe()
    print(
        f"{len(workers)} Ray worker(s) ({', '.join(sorted({w['device'] for w in workers}))}), "
        f"started in {time.perf_counter() - start:.1f} s"
    )

    history = []
    print(f"{'epoch':>5}{'step':>6}{'loss':>9}{'queries':>9}{'s/step':>8}{'Ray overhead s':>16}")
    for epoch in range(args.epochs):
        g = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
        order = torch.randperm(x_train.shape[0], generator=g)[: steps * args.batch_size].view(steps, -1)
        for i, idx in enumerate(order):
            t = time.perf_counter()
            loss = opt.step(Objective(model, F.cross_entropy, augment(x_train[idx], g), y_train[idx]))
            seconds = time.perf_counter() - t
            history.append(
                dict(
                    epoch=epoch,
                    step=i,
                    loss=float(loss),
                    seconds=seconds,
                    queries=opt.last_losses.count,
                    pieces=list(evaluator.stats["last_step"]["pieces"]),
                )
            )
            print(
                f"{epoch:>5}{i:>6}{float(loss):>9.4f}{opt.last_losses.count:>9}{seconds:>8.2f}"
                f"{evaluator.stats['last_step']['overhead']:>16.4f}"
            )
        acc = accuracy(model, x_test, y_test, batch_size=1000)
        print(f"epoch {epoch}: test accuracy {100 * acc:.2f} %")
    speeds = ", ".join(f"worker {w['worker']}: {w['speed'] or 0:,.0f}" for w in evaluator.describe())
    print(f"measured speeds (coordinates/s): {speeds}")
    evaluator.close()
    return dict(history=history, workers=workers, test_acc=acc)


if __name__ == "__main__":
    main()
