"""Peak memory side by side: inference, autograd, ZO steps (SPSA/RGE), one CGE gradient per evaluator.

Run: ``python -m bench.memory [--width 2048] [--depth 12] [--batch 64] [--steps 3]``.

Every case runs in a fresh Python process (``python -m bench.memory --case NAME``), so no
case inherits another's allocator cache. The process runs the same case once on a tiny
instance (code loaded on first use is not the step's memory), builds the batch, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), then
builds the model and runs the case — for the MLP steps, ``--steps`` optimizer steps without
``zero_grad`` in between, as a plain training loop does, so the figure is the steady state
(a step that kept a second gradient alive would show from step two on); for the CGE tables,
one gradient. The figure is the peak resident memory (VmHWM) minus the resident memory just
before the model was built — parameters included, as in MeZO's "memory of inference".
``MALLOC_MMAP_THRESHOLD_`` is fixed so that freed tensors go back to the kernel at once (glibc
would otherwise keep them and hide later peaks).

Linux only (``/proc``). The ratio column divides by the inference row of the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from zeroth import CGE, RGE, SPSA, Objective, ZOOptimizer, estimate_gradient
from zeroth.engine import BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator

from .engine import problem

ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": str(64 * 1024)}


def _status(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def peak_bytes(build: Callable[[], object], run: Callable[[object], object]) -> int:
    """Peak resident bytes of ``run(build())`` above the resident bytes before ``build``."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    run(build())
    return _status("VmHWM") - before


# -- the cases (each runs in its own process) ---------------------------------------------
def _mlp(width: int, depth: int) -> nn.Module:
    layers: List[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _mlp_case(kind: str, width: int, depth: int, batch: int, steps: int = 1) -> Tuple[Callable, Callable]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, width, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def build():
        torch.manual_seed(0)
        return _mlp(width, depth)

    def run(model):
        obj = Objective(model, F.cross_entropy, x, y)
        if kind == "inference":
            with torch.no_grad():
                obj()
        elif kind == "autograd-sgd":
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            obj().backward()
            opt.step()
        else:
            est, options = {
                "spsa": (SPSA(), {}),
                "spsa-sequential": (SPSA(), {"evaluator": "sequential"}),
                "spsa-inplace": (SPSA(), {"inplace": True}),
                "rge8-inplace": (RGE(q=8, dist="rademacher"), {"inplace": True}),
            }[kind]
            opt = ZOOptimizer(model.parameters(), lr=1e-3, estimator=est, seed=0, **options)
            for _ in range(steps):  # steady state: no zero_grad between steps, as in a plain loop
                opt.step(obj)

    return build, run


def _cge_case(model_name: str, batch: int, evaluator: str, coords: int) -> Tuple[Callable, Callable]:
    _, obj, _ = problem(model_name, batch)  # the batch (the model is rebuilt inside the measured region)
    x, y = obj.inputs, obj.targets

    def build():
        model, _, params = problem(model_name, batch)
        return model, params

    def run(built):
        model, params = built
        o = Objective(model, F.cross_entropy, x, y)
        if evaluator == "inference":
            with torch.no_grad():
                o()
            return
        if evaluator == "autograd":
            o().backward()
            return
        masks = None
        if coords:
            g = torch.Generator().manual_seed(0)
            masks = [torch.randperm(p.numel(), generator=g)[:coords] for p in params]
        ev = {
            "SequentialEvaluator": SequentialEvaluator(),
            "BatchedEvaluator": BatchedEvaluator(),
            "FeatureReuseEvaluator": FeatureReuseEvaluator(),
        }[evaluator]
        estimate_gradient(o, params, CGE(mu=1e-3), ev, masks=masks)

    return build, run


def _case(spec: Dict) -> Tuple[Callable, Callable]:
    if spec["kind"] == "probe":  # the harness itself: a tensor of known size
        return (lambda: None), (lambda _: torch.ones(spec["bytes"] // 4).sum())
    if spec["kind"] == "mlp":
        return _mlp_case(spec["case"], spec["width"], spec["depth"], spec["batch"], spec.get("steps", 1))
    return _cge_case(spec["model"], spec["batch"], spec["case"], spec.get("coords", 0))


def _tiny(spec: Dict) -> Dict:
    """The same case on a tiny instance: run first, so that code loaded on first use (libraries,
    kernels, lazily imported modules: tens of MB of resident pages) is not counted as the step's."""
    if spec["kind"] == "mlp":
        return {**spec, "width": 16, "depth": 3, "batch": 2}
    if spec["kind"] == "cge":
        return {**spec, "batch": 2, "coords": 2}
    return {**spec, "bytes": 4}


def child(case: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(case)
    build, run = _case(_tiny(spec))
    run(build())
    build, run = _case(spec)
    print(json.dumps({"peak": peak_bytes(build, run)}))


def measure(spec: Dict) -> int:
    """Peak bytes of one case, measured in a fresh process."""
    env = {**os.environ, **ENV}
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--case", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if out.returncode:
        raise RuntimeError(f"memory case {spec} failed:\n{out.stderr[-2000:]}")
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


def _table(title: str, rows: List[Tuple[str, int]], baseline: str) -> List[str]:
    ref = dict(rows)[baseline]
    lines = [title, f"{'case':<46}{'peak MB':>10}{'ratio':>8}   (ratio: x {baseline})"]
    lines += [f"{name:<46}{b / 2**20:>10.1f}{b / ref:>8.2f}" for name, b in rows]
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="ZO steps per case (peak over all: the steady state)")
    ap.add_argument("--no-cge", action="store_true", help="skip the CGE evaluator tables")
    args = ap.parse_args(argv)
    if args.case:
        child(args.case)
        return
    mlp = dict(kind="mlp", width=args.width, depth=args.depth, batch=args.batch, steps=args.steps)
    params = (args.depth - 1) * (args.width**2 + args.width) + 10 * args.width + 10
    kinds = [
        ("inference (no_grad forward)", "inference"),
        ("autograd forward+backward+SGD", "autograd-sgd"),
        ("ZO SPSA step, evaluator auto", "spsa"),
        ("ZO SPSA step, SequentialEvaluator (exact)", "spsa-sequential"),
        ("ZO SPSA step, inplace=True", "spsa-inplace"),
        ("ZO RGE q=8 step, inplace=True", "rge8-inplace"),
    ]
    rows = [(label, measure({**mlp, "case": k})) for label, k in kinds]
    print(
        "\n".join(
            _table(
                f"MLP {args.depth}x{args.width} ({params / 1e6:.1f} M parameters, "
                f"{params * 4 / 2**20:.0f} MB), batch {args.batch}: peak memory over {args.steps} steps",
                rows,
                "inference (no_grad forward)",
            )
        ),
        "\n",
    )
    if args.no_cge:
        return
    for model, batch, coords in (("digits_cnn", 256, 0), ("resnet20", 8, 40)):
        spec = dict(kind="cge", model=model, batch=batch, coords=coords)
        evs = ["SequentialEvaluator", "FeatureReuseEvaluator"] + (["BatchedEvaluator"] if model == "digits_cnn" else [])
        rows = [
            (f"{model} inference", measure({**spec, "case": "inference"})),
            (f"{model} autograd forward+backward", measure({**spec, "case": "autograd"})),
        ]
        rows += [(f"full CGE gradient, {ev}", measure({**spec, "case": ev})) for ev in evs]
        what = f"{coords} coordinates per tensor" if coords else "every coordinate"
        print(
            "\n".join(
                _table(
                    f"{model}, batch {batch}, CGE over {what}: peak memory of one gradient", rows, f"{model} inference"
                )
            ),
            "\n",
        )


if __name__ == "__main__":
    main()
