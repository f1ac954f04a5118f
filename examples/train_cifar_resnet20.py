"""DeepZero's recipe: ResNet-20 on CIFAR-10 trained from loss values only (sparse CGE).

1. ZO-GraSP at initialisation (25 images per class, RGE q=192, mu=5e-3) gives the layer-wise
   kept fractions at ``--sparsity`` (default 0.9; saved next to the checkpoint as JSON).
2. Training: SGD lr 0.1, momentum 0.9, weight decay 5e-4, 3 warm-up epochs then cosine,
   batch 256, 50 epochs, CGE with mu=5e-3 over the coordinates of random per-layer masks at
   those ratios, re-drawn every 5 epochs (all BN parameters and biases always estimated).
   BN runs in train mode in the perturbed forwards. Unselected coordinates get zero gradient;
   the SGD step (momentum, weight decay) is applied to the whole dense model, as in DeepZero.

On a GPU machine, with the standard python-pickle batches (``cifar-10-batches-py``)::

    python examples/train_cifar_resnet20.py --data-dir /data/cifar-10-batches-py \\
        --checkpoint runs/resnet20_zo.pt                # resumes from the checkpoint if it exists

A 90 %-sparse step makes about 28 200 loss evaluations (a suffix forward each with the
feature-reuse evaluator), so plan for hours per epoch; ``--steps N`` limits steps per epoch.
Without ``--data-dir`` it runs ``--steps`` (default 2) steps on synthetic images, e.g. a CPU
smoke run: ``python examples/train_cifar_resnet20.py --batch-size 4 --sparsity 0.999``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from zeroth import CGE, Objective, ZOOptimizer, data
from zeroth.data import CIFAR10_MEAN, CIFAR10_STD, accuracy
from zeroth.models import resnet20
from zeroth.sparsity import DynamicMask, balanced_batch, grasp_ratios, kept_fraction, load_ratios, save_ratios

MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


def load_cifar10(folder: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The python-pickle CIFAR-10 batches in ``folder`` as normalised ``(N, 3, 32, 32)`` tensors."""
    split = data.load_cifar10(folder)
    return (split.x_train - MEAN) / STD, split.y_train, (split.x_test - MEAN) / STD, split.y_test


def synthetic(n_train: int, n_test: int, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random images and labels shaped like CIFAR-10 (for runs without data)."""
    g = torch.Generator().manual_seed(seed)
    make = lambda n: (torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10)  # noqa: E731
    return (*make(n_train), *make(n_test))


def augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Random crop (padding 4) and horizontal flip, per image."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))  # (B, 3, 40, 40)
    i = torch.randint(0, 9, (n,), generator=g).tolist()
    j = torch.randint(0, 9, (n,), generator=g).tolist()
    out = torch.stack([padded[k, :, i[k] : i[k] + 32, j[k] : j[k] + 32] for k in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="", help="folder with data_batch_1..5 and test_batch (python pickle)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--mu", type=float, default=5e-3)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--resample-epochs", type=int, default=5, help="epochs between mask re-draws")
    p.add_argument("--grasp-q", type=int, default=192)
    p.add_argument("--grasp-per-class", type=int, default=25)
    p.add_argument("--ratios", default="", help="load ZO-GraSP ratios from this JSON instead of computing them")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default: all; 2 without data)")
    p.add_argument("--checkpoint", default="", help="save after every epoch; resume if the file exists")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        p.error("--sparsity must be in [0, 1)")
    if min(args.epochs, args.batch_size, args.resample_epochs) < 1 or (args.steps is not None and args.steps < 1):
        p.error("--epochs, --batch-size, --resample-epochs and --steps must be >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if args.data_dir:
        x_train, y_train, x_test, y_test = load_cifar10(args.data_dir)
    else:
        steps = args.steps or 2
        x_train, y_train, x_test, y_test = synthetic(max(steps * args.batch_size, 250), 100, args.seed)
        args.steps, args.epochs = steps, min(args.epochs, 1)
        print(f"no --data-dir: {steps} step(s) on synthetic images", file=sys.stderr)
    steps_per_epoch = min(x_train.shape[0] // args.batch_size, args.steps or 10**9)
    model = resnet20().to(device)
    gen = torch.Generator().manual_seed(args.seed)

    # 1. ZO-GraSP layer-wise ratios (or the ones saved by an earlier run)
    ratios_path = args.ratios or (os.path.splitext(args.checkpoint)[0] + "_ratios.json" if args.checkpoint else "")
    if ratios_path and os.path.exists(ratios_path):
        ratios = load_ratios(ratios_path)
    else:
        xg, yg = balanced_batch(x_train, y_train, args.grasp_per_class, gen)
        start = time.perf_counter()
        ratios = grasp_ratios(
            model,
            Objective(model, F.cross_entropy, xg.to(device), yg.to(device)),
            args.sparsity,
            q=args.grasp_q,
            mu=5e-3,
            generator=gen,
        )
        print(f"ZO-GraSP: {2 * (args.grasp_q + 1)} loss evaluations in {time.perf_counter() - start:.1f} s")
        if ratios_path:
            save_ratios(ratios_path, ratios, sparsity=args.sparsity, q=args.grasp_q, mu=5e-3, model="resnet20")
    print("kept fraction per layer: " + ", ".join(f"{n} {r:.3f}" for n, r in ratios.items()))
    print(f"global kept fraction {kept_fraction(ratios, model):.4f} (sparsity {args.sparsity})")

    # 2. sparse CGE + SGD(momentum, weight decay), warm-up + cosine, masks re-drawn every few epochs
    mask = DynamicMask(ratios, args.resample_epochs * steps_per_epoch, model=model)
    opt = ZOOptimizer(
        model.parameters(),
        lr=args.lr,
        estimator=CGE(mu=args.mu),
        base="sgd",
        sparsity=mask,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: warmup_cosine(t, args.warmup_epochs * steps_per_epoch, total)
    )
    first_epoch = 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        ckpt = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        first_epoch = ckpt["epoch"] + 1
        print(f"resumed from {args.checkpoint} after epoch {ckpt['epoch']}")

    from tqdm import tqdm

    history = []
    model.train()
    for epoch in range(first_epoch, args.epochs):
        g = torch.Generator().manual_seed(args.seed * 100_003 + epoch)  # resumable data order
        order = torch.randperm(x_train.shape[0], generator=g)[: steps_per_epoch * args.batch_size]
        bar = tqdm(order.view(steps_per_epoch, -1), desc=f"epoch {epoch}", disable=args.no_progress, leave=False)
        start, loss_sum = time.perf_counter(), 0.0
        for idx in bar:
            xb = augment(x_train[idx], g).to(device)
            yb = y_train[idx].to(device)
            loss = opt.step(Objective(model, F.cross_entropy, xb, yb))
            sched.step()
            loss_sum += float(loss)
            bar.set_postfix(loss=f"{float(loss):.3f}", queries=opt.last_losses.count)
        seconds = time.perf_counter() - start
        acc = accuracy(model, x_test.to(device), y_test.to(device), batch_size=1000)
        history.append(dict(epoch=epoch, loss=loss_sum / steps_per_epoch, test_acc=acc, seconds=seconds))
        print(
            f"epoch {epoch}: train loss {loss_sum / steps_per_epoch:.4f}  test acc {100 * acc:.2f} %  "
            f"{seconds / steps_per_epoch:.2f} s/step  {opt.last_losses.count} queries/step  "
            f"lr {opt.param_groups[0]['lr']:.4f}"
        )
        if args.checkpoint:
            os.makedirs(os.path.dirname(os.path.abspath(args.checkpoint)), exist_ok=True)
            torch.save(
                dict(model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(), epoch=epoch),
                args.checkpoint,
            )
    return dict(ratios=ratios, history=history)


if __name__ == "__main__":
    main()
