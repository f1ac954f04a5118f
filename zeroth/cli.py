"""The ``zeroth`` command (also ``python -m zeroth``): ``demo`` and ``info``."""
from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional


def _info() -> None:
    import torch

    import zeroth

    from ._optional import available

    print(f"zeroth {zeroth.__version__} (distribution zeroth-optim)")
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    print("extras: " + ", ".join(f"{m}={'yes' if available(m) else 'no'}" for m in
                                  ("scipy", "sklearn", "matplotlib", "tqdm", "ray", "pytest_benchmark")))
    cuda = torch.cuda.is_available()
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())] if cuda else ["cpu"]
    print("devices: " + ", ".join(devices))
    from .engine import EVALUATORS
    from .estimators import ESTIMATORS

    print("estimators: " + ", ".join(ESTIMATORS.names()))
    print("evaluators: " + ", ".join(EVALUATORS.names()))
    try:
        from . import ops

        print(f"ops backend: {ops.backend()}")
    except (ImportError, AttributeError):
        print("ops backend: python (no compiled kernels)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="zeroth", description="zeroth-order training for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="ZO vs first-order training of the digits CNN (table + plot)")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--estimator", choices=["cge", "rge", "spsa"], default="cge")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--out", default="zeroth_demo.png", help="path of the saved plot")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("info", help="versions, extras, devices and active backends")
    args = parser.parse_args(argv)
    if args.command == "info":
        _info()
        return 0
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    from .demo import run

    run(epochs=args.epochs, estimator=args.estimator, device=args.device, out=args.out,
        progress=not args.quiet, seed=args.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
