"""The main demo: ZO training of the digits CNN against first-order training, table + plot."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from . import CGE, RGE, SPSA, Objective, ZOOptimizer
from ._optional import require
from .data import accuracy, batches, load_digits
from .models import DigitsCNN


@dataclass
class RunResult:
    """One training run: per-epoch curves and totals."""

    method: str
    queries_per_step: float
    seconds: float = 0.0
    steps: int = 0
    train_loss: List[float] = field(default_factory=list)  # mean loss per epoch
    test_acc: List[float] = field(default_factory=list)  # after each epoch

    @property
    def seconds_per_step(self) -> float:
        """Mean wall-clock seconds per optimizer step (``seconds / steps``; 0 steps count as 1)."""
        return self.seconds / max(self.steps, 1)


def _estimator(name: str, mu: float, q: int):
    return {"cge": lambda: CGE(mu=mu), "rge": lambda: RGE(q=q, mu=mu), "spsa": lambda: SPSA(mu=mu)}[name]()


def train(
    method: str,
    epochs: int,
    *,
    batch_size: int = 64,
    lr: float = 1e-2,
    mu: float = 1e-3,
    q: int = 64,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> RunResult:
    """Train a fresh :class:`DigitsCNN` with ``method`` in {"fo", "cge", "rge", "spsa"} (Adam base rule)."""
    tqdm = require("tqdm", "science").tqdm
    torch.manual_seed(seed)
    data = load_digits(device=torch.device(device))
    model = DigitsCNN().to(device)
    opt: torch.optim.Optimizer
    if method == "fo":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        queries = 1.0
    else:
        estimator = _estimator(method, mu, q)
        opt = ZOOptimizer(model.parameters(), lr=lr, base="adam", estimator=estimator, seed=seed)
        queries = float(estimator.num_evaluations(sum(p.numel() for p in model.parameters())))
    result = RunResult(
        method="first-order Adam (autograd)" if method == "fo" else f"ZO {method.upper()} + Adam",
        queries_per_step=queries,
    )
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = data.x_train.shape[0] // batch_size
    bar = tqdm(total=epochs * steps_per_epoch, desc=method.upper(), disable=not progress, leave=False)
    for _ in range(epochs):
        total, n = 0.0, 0
        start = time.perf_counter()
        for xb, yb in batches(data.x_train, data.y_train, batch_size, gen):
            if method == "fo":
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            else:
                zo_loss = opt.step(Objective(model, F.cross_entropy, xb, yb))
                assert zo_loss is not None  # a ZO step always evaluates the loss
                total += float(zo_loss)
            n += 1
            bar.update(1)
        result.seconds += time.perf_counter() - start
        result.steps += n
        result.train_loss.append(total / n)
        result.test_acc.append(accuracy(model, data.x_test, data.y_test))
        bar.set_postfix(acc=f"{result.test_acc[-1]:.3f}")
    bar.close()
    return result


def table(results: List[RunResult]) -> str:
    """The comparison as a plain-text table."""
    head = f"{'method':<30} {'queries/step':>12} {'s/step':>8} {'wall s':>8} {'test acc':>9}"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.method:<30} {r.queries_per_step:>12,.0f} {r.seconds_per_step:>8.4f} {r.seconds:>8.1f} "
            f"{r.test_acc[-1]:>9.3f}"
        )
    return "\n".join(rows)


def plot(results: List[RunResult], path: str) -> str:
    """Loss and accuracy per epoch of every run, saved to ``path``."""
    matplotlib = require("matplotlib", "science")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        epochs = range(1, len(r.train_loss) + 1)
        ax1.plot(epochs, r.train_loss, marker="o", label=r.method)
        ax2.plot(epochs, r.test_acc, marker="o", label=r.method)
    ax1.set(xlabel="epoch", ylabel="training loss", title="digits CNN: training loss")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title="digits CNN: test accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(
    epochs: int = 15,
    estimator: str = "cge",
    device: str = "cpu",
    out: str = "zeroth_demo.png",
    progress: bool = True,
    seed: int = 0,
) -> List[RunResult]:
    """What ``make demo`` / ``zeroth demo`` runs."""
    results = [
        train(estimator, epochs, device=device, progress=progress, seed=seed),
        train("fo", epochs, device=device, progress=progress, seed=seed),
    ]
    print(
        f"\nDigits CNN (3 818 parameters), {epochs} epochs, batch 64, Adam lr 1e-2, "
        "load_digits test split (450 images)\n"
    )
    print(table(results))
    print(f"\nplot saved to {plot(results, out)}")
    return results
