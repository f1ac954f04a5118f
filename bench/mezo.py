"""MeZO's step side by side: zeroth ``inplace=True`` vs a reference written from the paper, autograd as scale.

``python -m bench.mezo`` builds small OPT and GPT-2 causal LMs from configs (random weights, no
download), in fp32 and bf16, and compares on one batch of token ids:

* ``zeroth``: ``ZOOptimizer(params, lr, inplace=True)`` — SPSA with exact Rademacher
  involutions, 3 passes over the parameters per step, each one fused kernel
  (:mod:`zeroth.estimators.exact_perturbation`, :func:`zeroth.ops.rademacher_sgd_`);
* ``mezo``: MeZO's Algorithm 1 (Malladi et al., 2023) as written: ``z ~ N(0, I)`` regenerated
  from a seed, perturb ``+εz``, evaluate, ``−2εz``, evaluate, ``+εz``, then
  ``θ ← θ − lr·(g·z + wd·θ)`` with z regenerated again (4 regenerations);
* ``mezo-fused``: the same with the restore and the update in one pass (3 regenerations);
* ``autograd-sgd``: forward + backward + ``torch.optim.SGD`` (the first-order scale).

Columns: seconds per step (one thread; rounds alternate over the methods and a plain
``no_grad`` forward, the ratio is the median of per-round ratios to ``mezo-fused``); for the
ZO rows, the seconds beyond their two forwards (median per round of ``step − 2·forward``:
the passes over the parameters and the Python around them); peak resident memory of three
steps (each case in a fresh process, model included, divided by a plain ``no_grad`` forward of
the same model), and the drift after ``--drift-steps`` steps at lr = 0 (max |Δθ| over all
parameters, and ‖Δθ‖/‖θ‖).

``python -m bench.mezo --passes`` times the ZO methods alone, with a closure that runs no model
(it returns a seeded random number): the passes over the parameters and the Python around
them, without the forwards whose noise dominates the ``step − 2·forward`` column in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

METHODS = ["zeroth", "mezo", "mezo-fused", "autograd-sgd"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(model: str, dtype: str, size: str = "small") -> torch.nn.Module:
    """A causal LM from a config, random weights (seeded)."""
    import transformers

    transformers.logging.set_verbosity_error()
    width, layers, vocab = {"small": (384, 4, 8192), "tiny": (32, 2, 64)}[size]
    torch.manual_seed(0)
    if model == "opt":
        cfg = transformers.OPTConfig(
            vocab_size=vocab,
            hidden_size=width,
            num_hidden_layers=layers,
            ffn_dim=4 * width,
            num_attention_heads=max(1, width // 64),
            max_position_embeddings=128,
            word_embed_proj_dim=width,
            dropout=0.0,
            attention_dropout=0.0,
        )
        net = transformers.OPTForCausalLM(cfg)
    elif model == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=vocab,
            n_embd=width,
            n_layer=layers,
            n_head=max(1, width // 64),
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        net = transformers.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"model: unknown {model!r} (opt, gpt2)")
    return net.to(DTYPES[dtype])


def batch(model: torch.nn.Module, size: str = "small") -> Dict[str, torch.Tensor]:
    rows, length = (4, 64) if size == "small" else (2, 8)
    ids = torch.randint(0, model.config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


# -- the reference: MeZO's step as written in the paper -----------------------------------
class MeZO:
    """MeZO (Malladi et al., 2023, Algorithm 1): Gaussian z from a per-step seed, never stored."""

    def __init__(
        self,
        params: List[torch.Tensor],
        lr: float,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        fused: bool = False,
        seed: int = 0,
    ):
        self.params, self.lr, self.eps, self.wd, self.fused = params, lr, eps, weight_decay, fused
        self.rng = torch.Generator().manual_seed(seed)

    def _z(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        for p in self.params:
            yield p, torch.normal(0.0, 1.0, size=p.shape, generator=g, dtype=p.dtype)

    def _perturb(self, seed: int, scale: float) -> None:
        for p, z in self._z(seed):
            p.add_(z, alpha=scale)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> float:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.rng))
        self._perturb(seed, self.eps)
        plus = float(closure())
        self._perturb(seed, -2 * self.eps)
        minus = float(closure())
        g = (plus - minus) / (2 * self.eps)
        if self.fused:  # restore and update in one pass: θ + εz − lr·(g·z + wd·θ)
            for p, z in self._z(seed):
                if self.wd:
                    p.mul_(1 - self.lr * self.wd)
                p.add_(z, alpha=self.eps - self.lr * g)
        else:
            self._perturb(seed, self.eps)
            for p, z in self._z(seed):
                p.sub_(self.lr * (g * z + self.wd * p))
        return (plus + minus) / 2


def make_step(
    method: str,
    model: torch.nn.Module,
    inputs: Dict[str, torch.Tensor],
    lr: float,
    closure: Optional[Callable[[], torch.Tensor]] = None,
) -> Callable[[], object]:
    """One step of ``method`` on ``model`` (``closure`` defaults to ``model(**inputs).loss``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if closure is None:
        closure = lambda: model(**inputs).loss  # noqa: E731
    if method == "zeroth":
        from zeroth import SPSA, ZOOptimizer

        opt = ZOOptimizer(params, lr=lr, estimator=SPSA(mu=1e-3), inplace=True, seed=0)
        return lambda: opt.step(closure)
    if method in ("mezo", "mezo-fused"):
        ref = MeZO(params, lr=lr, eps=1e-3, fused=method == "mezo-fused")
        return lambda: ref.step(closure)
    if method == "autograd-sgd":
        opt = torch.optim.SGD(params, lr=lr)

        def step():
            opt.zero_grad()
            loss = closure()
            loss.backward()
            opt.step()
            return loss

        return step
    if method == "inference":

        def forward():
            with torch.no_grad():
                return closure()

        return forward
    raise ValueError(f"method: unknown {method!r}")


# -- memory: one fresh process per case ---------------------------------------------------
def child(spec: Dict) -> None:
    from .memory import peak_bytes

    torch.set_num_threads(1)
    for warm, size in ((True, "tiny"), (False, spec["size"])):  # the tiny run loads code first (not counted)
        model = build(spec["model"], spec["dtype"], size)
        inputs = batch(model, size)
        if warm:
            step = make_step(spec["method"], model, inputs, 1e-6)
            step()
            del model, step
            continue

        def run(m, inputs=inputs):
            step = make_step(spec["method"], m, inputs, 1e-6)
            for _ in range(3):  # steady state: later steps must not grow
                step()

        peak = peak_bytes(lambda spec=spec: build(spec["model"], spec["dtype"], spec["size"]), run)
    print(json.dumps({"peak": peak}))


def measure_peak(spec: Dict) -> int:
    from .memory import ENV

    out = subprocess.run(
        [sys.executable, "-m", "bench.mezo", "--case", json.dumps(spec)],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if out.returncode:
        raise RuntimeError(f"case {spec} failed:\n{out.stderr[-2000:]}")
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


# -- time and drift: one process, alternating rounds ---------------------------------------
def time_and_drift(model_name: str, dtype: str, size: str, steps: int, rounds: int, drift_steps: int) -> Dict:
    torch.set_num_threads(1)
    models = {m: build(model_name, dtype, size) for m in METHODS}
    inputs = batch(models["zeroth"], size)
    timed = METHODS + ["inference"]
    stepper = {m: make_step(m, models[m if m in models else "zeroth"], inputs, 1e-6) for m in timed}
    for m in timed:
        stepper[m]()  # warm-up
    times: Dict[str, List[float]] = {m: [] for m in timed}
    for _ in range(rounds):
        for m in timed:
            start = time.perf_counter()
            for _ in range(steps):
                stepper[m]()
            times[m].append((time.perf_counter() - start) / steps)
    drift = {}
    for m in METHODS:
        net = build(model_name, dtype, size)
        before = [p.detach().clone() for p in net.parameters()]
        step = make_step(m, net, inputs, 0.0)
        for _ in range(drift_steps):
            step()
        diff = [(p.detach().double() - b.double()) for p, b in zip(net.parameters(), before)]
        num = sum(float(d.pow(2).sum()) for d in diff) ** 0.5
        den = sum(float(b.double().pow(2).sum()) for b in before) ** 0.5
        drift[m] = (max(float(d.abs().max()) for d in diff), num / den)
    ratio = {m: statistics.median(t / f for t, f in zip(times[m], times["mezo-fused"])) for m in timed}
    beyond = {
        m: statistics.median(t - 2 * f for t, f in zip(times[m], times["inference"]))
        for m in ("zeroth", "mezo", "mezo-fused")
    }
    params = sum(p.numel() for p in models["zeroth"].parameters())
    return {
        "times": {m: statistics.median(v) for m, v in times.items()},
        "ratio": ratio,
        "drift": drift,
        "params": params,
        "beyond": beyond,
    }


def passes_only(model_name: str, dtype: str, size: str, steps: int, rounds: int) -> Dict[str, float]:
    """Seconds per step of the ZO methods with a closure that runs no model: it returns a seeded
    random number (so the projected gradient is never 0 and the update pass runs), leaving only
    the passes over the parameters and the Python around them. Alternating rounds; the ratio is
    the median of per-round ratios to ``mezo-fused``."""
    torch.set_num_threads(1)
    zo = ["zeroth", "mezo", "mezo-fused"]
    stepper = {}
    for m in zo:
        net = build(model_name, dtype, size)
        values = torch.Generator().manual_seed(2)
        stepper[m] = make_step(m, net, {}, 1e-6, closure=lambda g=values: torch.rand((), generator=g))
        stepper[m]()  # warm-up
    times: Dict[str, List[float]] = {m: [] for m in zo}
    for _ in range(rounds):
        for m in zo:
            start = time.perf_counter()
            for _ in range(steps):
                stepper[m]()
            times[m].append((time.perf_counter() - start) / steps)
    out = {m: statistics.median(v) for m, v in times.items()}
    out.update({f"{m}/fused": statistics.median(t / f for t, f in zip(times[m], times["mezo-fused"])) for m in zo})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["opt", "gpt2"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--size", default="small", choices=["small", "tiny"])
    ap.add_argument("--steps", type=int, default=3, help="steps per method per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--drift-steps", type=int, default=20)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument(
        "--passes", action="store_true", help="only the passes over the parameters (a closure that runs no model)"
    )
    args = ap.parse_args(argv)
    if args.case:
        child(json.loads(args.case))
        return
    if args.passes:
        print("parameter passes only (closure returns a random number, no forward): s/step, x mezo-fused")
        print(f"{'model':<6}{'dtype':<6}" + "".join(f"{m:>12}{'x fused':>9}" for m in ("zeroth", "mezo", "mezo-fused")))
        for model in args.models:
            for dtype in args.dtypes:
                r = passes_only(model, dtype, args.size, args.steps, args.rounds)
                cells = "".join(f"{r[m]:>12.4f}{r[m + '/fused']:>9.2f}" for m in ("zeroth", "mezo", "mezo-fused"))
                print(f"{model:<6}{dtype:<6}{cells}", flush=True)
        return
    header = (
        f"{'model':<6}{'dtype':<6}{'method':<14}{'s/step':>9}{'x fused':>9}{'>2 fwd':>9}{'peak MB':>9}"
        f"{'x infer':>9}{'max|dθ| lr=0':>14}{'rel drift':>11}"
    )
    print(header)
    for model in args.models:
        for dtype in args.dtypes:
            res = time_and_drift(model, dtype, args.size, args.steps, args.rounds, args.drift_steps)
            peaks = {}
            if not args.no_memory:
                for m in ["inference"] + METHODS:
                    peaks[m] = measure_peak({"model": model, "dtype": dtype, "method": m, "size": args.size})
            shape = "4x64" if args.size == "small" else "2x8"
            print(f"# {model} {dtype}: {res['params'] / 1e6:.1f} M parameters, batch {shape} tokens")
            mem = f"{peaks['inference'] / 2**20:>9.1f}{1.0:>9.2f}" if peaks else f"{'':>18}"
            print(
                f"{model:<6}{dtype:<6}{'inference':<14}{res['times']['inference']:>9.3f}"
                f"{res['ratio']['inference']:>9.2f}{'':>9}{mem}"
            )
            for m in METHODS:
                mem = f"{peaks[m] / 2**20:>9.1f}{peaks[m] / peaks['inference']:>9.2f}" if peaks else f"{'':>18}"
                dmax, drel = res["drift"][m]
                beyond = f"{res['beyond'][m]:>9.3f}" if m in res["beyond"] else f"{'':>9}"
                print(
                    f"{model:<6}{dtype:<6}{m:<14}{res['times'][m]:>9.3f}{res['ratio'][m]:>9.2f}{beyond}{mem}"
                    f"{dmax:>14.2e}{drel:>11.2e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
