"""The ``zeroth`` command (also ``python -m zeroth``): ``demo``, ``info`` and ``defend``."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional

# optional packages besides _optional.EXTRAS: the QP solvers of zeroth.constrained (science extra),
# cyipopt (IPOPT, compared in bench/constrained), the hf and lightning integrations' libraries
_MORE_EXTRAS = ("daqp", "clarabel", "piqp", "cyipopt", "transformers", "accelerate", "lightning")
# evaluators that work only with an optional package installed: registry name -> import name
_EVALUATOR_NEEDS = {"ray": "ray"}


def _info() -> None:
    import torch

    import zeroth

    from ._optional import EXTRAS, available, version

    print(f"zeroth {zeroth.__version__} (distribution zeroth-optim)")
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    # found and versioned from metadata, not imported: `import ray` alone takes seconds
    extras = list(EXTRAS) + [m for m in _MORE_EXTRAS if m not in EXTRAS]
    print("extras: " + ", ".join(f"{m}={version(m) or 'yes'}" if available(m) else f"{m}=no" for m in extras))
    cuda = torch.cuda.is_available()
    devices = (
        ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        if cuda
        else ["cpu"]
    )
    print("devices: " + ", ".join(devices))
    from .engine import EVALUATORS
    from .estimators import ESTIMATORS

    print("estimators: " + ", ".join(ESTIMATORS.names()))
    print(
        "evaluators: "
        + ", ".join(
            f"{n} (needs {_EVALUATOR_NEEDS[n]})" if n in _EVALUATOR_NEEDS and not available(_EVALUATOR_NEEDS[n]) else n
            for n in EVALUATORS.names()
        )
    )
    try:
        from . import ops

        print(f"ops backend: {ops.backend()}")
    except (ImportError, AttributeError):
        print("ops backend: python (no compiled kernels)")


def _numbers(kind):
    """argparse type: a comma-separated list of ``kind`` (``"2,6,24"``)."""

    def parse(text: str):
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None

    return parse


def _add_defend(sub) -> None:
    """``zeroth defend``: the ZO-AE-DS certified black-box defense table (zeroth.recipes.zo_ae_ds)."""
    p = sub.add_parser("defend", help="ZO-AE-DS certified black-box defense: train, certify, table + plot")
    p.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    p.add_argument("--data-dir", help="folder of the CIFAR-10 python-pickle batches (never downloaded)")
    p.add_argument("--sigma", type=float, default=0.25, help="smoothing noise std on [0, 1] pixels")
    p.add_argument("--estimator", choices=["cge", "rge", "all"], default="all", help="which ZO-AE-DS rows to run")
    p.add_argument("--q", type=_numbers(int), help="RGE directions, comma-separated (default 2,d_z/4,d_z)")
    p.add_argument("--mu", type=float, default=5e-3, help="finite-difference step")
    p.add_argument("--latent-dim", type=int, help="d_z (digits 24, cifar10 192)")
    p.add_argument("--epochs", type=int, help="denoiser epochs per row")
    p.add_argument("--classifier-epochs", type=int)
    p.add_argument("--ae-epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, help="certification samples (digits 1000, cifar10 10000)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--num-certify", type=int, help="test images certified, evenly spaced (digits 450, cifar10 500)")
    p.add_argument("--radii", type=_numbers(float), help="table radii, comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", help="save each stage there; a rerun resumes from it")
    p.add_argument("--out", default="zeroth_defend.png", help="path of the saved plot")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """``parser.error`` naming ``--device`` unless ``name`` is a torch device that exists here."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        parser.error(f"argument --device: invalid device {name!r} (expected cpu, cuda, cuda:N, mps, ...)")
    try:
        torch.empty(0, device=device)
    except (AssertionError, RuntimeError) as err:  # torch raises AssertionError for cuda without CUDA
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            detail = f"this machine has {count} CUDA device(s), torch {torch.__version__}"
        parser.error(f"argument --device: {name!r} is not available: {detail}")


def _check_data_dir(parser: argparse.ArgumentParser, dataset: str, data_dir: Optional[str]) -> None:
    """``parser.error`` naming ``--data-dir`` unless it is a folder (holding the CIFAR-10 batches for cifar10)."""
    import os

    if data_dir is None:
        return
    if not os.path.isdir(data_dir):
        parser.error(f"argument --data-dir: {data_dir!r} is not a directory")
    if dataset == "cifar10":
        from .data import _cifar_folder

        try:
            _cifar_folder(data_dir)
        except FileNotFoundError as err:
            parser.error(f"argument --data-dir: {str(err).removeprefix('data_dir: ')}")


def _defend(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .recipes.zo_ae_ds.defend import DefendConfig, check_checkpoint_dir, run

    _check_device(parser, args.device)
    _check_data_dir(parser, args.dataset, args.data_dir)
    try:
        config = DefendConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            sigma=args.sigma,
            estimator=args.estimator,
            q=args.q,
            mu=args.mu,
            n0=args.n0,
            alpha=args.alpha,
            latent_dim=args.latent_dim,
            epochs=args.epochs,
            classifier_epochs=args.classifier_epochs,
            ae_epochs=args.ae_epochs,
            batch_size=args.batch_size,
            n=args.n,
            num_certify=args.num_certify,
            radii=args.radii,
            seed=args.seed,
            device=args.device,
            out=args.out,
            checkpoint_dir=args.checkpoint_dir,
            progress=not args.quiet,
        )
        check_checkpoint_dir(config)
    except ValueError as err:
        parser.error(f"defend: {err}")
    run(config)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The ``zeroth`` command line: ``zeroth demo``, ``zeroth info``, ``zeroth defend`` (``--help`` on each).

    Args:
        argv: the arguments after the program name (None: ``sys.argv[1:]``).

    Returns:
        The process exit status (0 on success).

    Raises:
        SystemExit: from argparse, for ``--help`` or invalid arguments (status 2).
    """
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
    _add_defend(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        _info()
        return 0
    if args.command == "defend":
        return _defend(parser, args)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    from .demo import run

    run(
        epochs=args.epochs,
        estimator=args.estimator,
        device=args.device,
        out=args.out,
        progress=not args.quiet,
        seed=args.seed,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
