"""ResNet-20 CGE on DeepZero's 90 %-sparse step: SequentialEvaluator, block restart, FeatureReuseEvaluator.

Run: ``python -m bench.resnet [--batch 32 256] [--quick] [--rounds 3] [--sample 2] [--threads 1]
[--device cpu|cuda]``.

The step is DeepZero's "sparse gradient, dense model" (arXiv:2310.02025): a fixed random 10 % of
every Conv/Linear weight's coordinates plus all BatchNorm parameters and biases (28,217 of
ResNet-20's 269,722 at CIFAR shapes), forward differences, μ = 5e-3, BatchNorm in train mode.
Timing all of them takes hours on one core, so each layer is timed on a fixed random **sample**
of its step coordinates (``--sample`` per layer; ``--seq-sample`` for SequentialEvaluator, whose cost per
coordinate is one full forward wherever the coordinate is) and the per-coordinate time is
multiplied by the layer's number of step coordinates: the extrapolated full step is the sum
over layers plus each method's once-per-step work (the cached pass).

Methods, timed layer by layer in alternating order over ``--rounds`` rounds (ratios are taken
within a round, then the median and the range over rounds are printed):

* ``SequentialEvaluator``: perturb in place, full forward, restore (zeroth's reference loop);
* ``block restart``: DeepZero's CGE worker written from its description (bench/block_restart.py:
  cache every block's input once per step; per coordinate perturb, run from the perturbed
  block to the loss, restore) on the model as given (NCHW);
* ``restart NHWC`` (not with ``--quick``): the same with the input, hence every activation,
  channels-last, to show how much of FeatureReuseEvaluator's lead is the copies' memory layout rather than
  the algorithm;
* ``FeatureReuseEvaluator``: zeroth's evaluator (difference propagation up to the cut its cost model
  chooses, then the K copies as one batch; see zeroth/engine/schemes.py).

One autograd forward+backward is timed as the scale. One thread unless ``--threads``. The
gradients of the first round's sample are compared with SequentialEvaluator's (fp32: they agree to the
rounding of the loss, about ulp(ℓ)/μ).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroth import CGE, Objective
from zeroth.engine import FeatureReuseEvaluator
from zeroth.engine.stages import frozen_batchnorm_buffers
from zeroth.models import resnet20

from .block_restart import BlockRestart

MU = 5e-3


# -- the problem ------------------------------------------------------------------------
def problem(batch: int, device: torch.device, seed: int = 0):
    """ResNet-20 (train mode), a random CIFAR-shaped batch and integer targets."""
    torch.manual_seed(seed)
    model = resnet20().to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    return model, Objective(model, F.cross_entropy, x, y)


def step_masks(model: nn.Module, keep: float, seed: int = 0) -> List[Tensor]:
    """DeepZero's sparse gradient: a random ``keep`` of each Conv/Linear weight, all BN parameters and biases."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in model.parameters():
        if p.dim() >= 2:
            n = max(1, round(keep * p.numel()))
            out.append(torch.randperm(p.numel(), generator=g)[:n])
        else:
            out.append(torch.randperm(p.numel(), generator=g))  # all of them, in random order
    return out


def layers_of(model: nn.Module) -> List[Tuple[str, List[int]]]:
    """``(label, parameter positions)`` per module that owns parameters, in model order."""
    pos = {id(p): i for i, p in enumerate(model.parameters())}
    out = []
    for name, m in model.named_modules():
        own = [pos[id(p)] for p in m.parameters(recurse=False)]
        if own:
            out.append((name.replace("blocks.", "b").replace(".main.", "."), own))
    return out


def sample_of(masks: Sequence[Tensor], positions: Sequence[int], per_param: Dict[int, int]) -> Dict[int, Tensor]:
    """The first ``per_param[i]`` step coordinates of each parameter ``i`` of a layer (masks are in random order)."""
    return {i: masks[i][: max(1, per_param[i])] for i in positions}


# -- timing -------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: torch.device, min_seconds: float = 0.02) -> float:
    """Seconds per call of ``fn`` (repeated until ``min_seconds`` have passed, for very fast calls)."""
    calls, began = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent = time.perf_counter() - began
        if spent >= min_seconds or calls >= 50:
            return spent / calls


class Methods:
    """The per-step setup and the per-layer loss evaluation of each method, on one problem."""

    def __init__(self, model: nn.Module, obj: Objective, with_nhwc: bool, max_memory: int, precision: str):
        self.model, self.obj = model, obj
        self.params = list(model.parameters())
        self.fr = FeatureReuseEvaluator(max_memory=max_memory, precision=precision)
        self.br = BlockRestart(model)
        self.nhwc = None
        if with_nhwc:  # a channels-last input makes every activation channels-last (weights as they are)
            self.nhwc = Objective(
                model, F.cross_entropy, obj.inputs.contiguous(memory_format=torch.channels_last), obj.targets
            )
        self.state: Dict[str, object] = {}

    def names(self) -> List[str]:
        return (
            ["SequentialEvaluator", "block restart"]
            + (["restart NHWC"] if self.nhwc else [])
            + ["FeatureReuseEvaluator"]
        )

    def setup(self, name: str) -> None:
        """The once-per-step work: the cached pass (running statistics frozen, so every round sees the same model)."""
        with torch.no_grad(), frozen_batchnorm_buffers(self.model):
            if name == "SequentialEvaluator":
                self.state[name] = self.obj()
            elif name == "block restart":
                self.state[name] = self.br.cache(self.obj)
            elif name == "restart NHWC":
                self.state[name] = self.br.cache(self.nhwc)
            else:
                self.state[name] = self.fr._base_pass(self.obj, self.fr_chain())

    def fr_chain(self):
        return self.model.zo_stages()

    def fr_chunks(self) -> Dict[int, int]:
        """Parameter position -> FeatureReuseEvaluator's copies per chunk for it."""
        from zeroth.engine.delta import is_residual
        from zeroth.engine.feature_reuse import _owners

        self.setup("FeatureReuseEvaluator")
        ctx = self.state["FeatureReuseEvaluator"]
        owner = _owners(ctx.chain)
        out = {}
        for i, p in enumerate(self.params):
            s, _ = owner[id(p)]
            out[i] = self.fr._chunk_size(ctx.acts, s + (not is_residual(ctx.chain[s])))
        return out

    def losses(self, name: str, sample: Dict[int, Tensor]) -> Tensor:
        """Loss differences ``ℓ(θ + h e_k) − ℓ(θ)`` (float64) of the sampled coordinates, parameter by parameter."""
        positions = sorted(sample)
        params = [self.params[i] for i in positions]
        dirs = CGE(mu=MU).directions(params, masks=[sample[i] for i in positions])
        with torch.no_grad(), frozen_batchnorm_buffers(self.model):
            if name == "SequentialEvaluator":
                base = self.state[name]
                out = torch.empty(len(dirs), dtype=torch.float64, device=self.obj.inputs.device)
                for e in range(len(dirs)):
                    token = dirs.perturb(params, e)
                    out[e] = self.obj()
                    dirs.restore(params, e, token)
                return out - base.double()
            if name in ("block restart", "restart NHWC"):
                obj = self.obj if name == "block restart" else self.nhwc
                cache = self.state[name]
                parts = [
                    self.br.coordinate_losses(obj, cache, p, dirs.indices[j], dirs.values[0][j])
                    for j, p in enumerate(params)
                ]
                return torch.cat(parts) - cache[1].double()
            ctx = self.state[name]
            return self.fr._differences(ctx, params, dirs)

    def steps(self, sample: Dict[int, Tensor]) -> Tensor:
        positions = sorted(sample)
        params = [self.params[i] for i in positions]
        dirs = CGE(mu=MU).directions(params, masks=[sample[i] for i in positions])
        return torch.cat([dirs.spans(j) for j in range(len(params))])


def autograd_time(obj: Objective, device: torch.device) -> float:
    params = list(obj.model.parameters())

    def fb():
        for p in params:
            p.grad = None
        with frozen_batchnorm_buffers(obj.model):
            obj().backward()

    fb()
    return timed(fb, device, min_seconds=0.5)


# -- one batch size ---------------------------------------------------------------------
def run_batch(batch: int, args, device: torch.device) -> List[str]:
    model, obj = problem(batch, device)
    masks = step_masks(model, args.keep)
    total = sum(int(m.numel()) for m in masks)
    methods = Methods(
        model, obj, with_nhwc=not args.quick, max_memory=int(args.max_memory_gb * 2**30), precision=args.precision
    )
    names = methods.names()
    layers = layers_of(model)
    # FeatureReuseEvaluator evaluates K coordinates of a parameter at once: sample at least one full chunk
    chunks = methods.fr_chunks()
    per = {i: min(args.max_sample, max(args.sample, chunks[i])) for i in chunks}
    samples = {label: sample_of(masks, pos, per) for label, pos in layers}
    seq_samples = {label: sample_of(masks, pos, dict.fromkeys(pos, args.seq_sample)) for label, pos in layers}
    counts = {label: sum(int(masks[i].numel()) for i in pos) for label, pos in layers}

    # warm-up (kernels, plans), not timed
    for name in names:
        methods.setup(name)
        if name != "SequentialEvaluator":
            for label, _ in layers:
                methods.losses(name, {i: s[:1] for i, s in samples[label].items()})

    per: Dict[str, Dict[str, List[float]]] = {n: {label: [] for label, _ in layers} for n in names}
    setup: Dict[str, List[float]] = {n: [] for n in names}
    scale: List[float] = []
    check: Dict[str, Dict[str, Tensor]] = {n: {} for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        scale.append(autograd_time(obj, device))
        for name in order:
            setup[name].append(timed(lambda name=name: methods.setup(name), device, min_seconds=0.0))
        for label, _ in layers:
            for name in order:
                smp = seq_samples[label] if name == "SequentialEvaluator" else samples[label]
                n = sum(int(s.numel()) for s in smp.values())
                holder: List[Tensor] = []
                t = timed(lambda name=name, smp=smp, holder=holder: holder.append(methods.losses(name, smp)), device)
                per[name][label].append(t / n)
                if r == 0:
                    check[name][label] = holder[0]
        print(f"  batch {batch}: round {r + 1}/{args.rounds} done", flush=True)

    return report(
        batch, args, device, names, layers, per, setup, scale, check, counts, total, methods, samples, seq_samples
    )


def report(
    batch, args, device, names, layers, per, setup, scale, check, counts, total, methods, samples, seq_samples
) -> List[str]:
    med = statistics.median
    rounds = args.rounds
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} thread(s)"
    lines = [
        f"ResNet-20, batch {batch}, {where}, torch {torch.__version__}; forward differences, mu = {MU}",
        f"90 %-sparse step: {total:,} coordinates (10 % of each conv/linear weight, all BN parameters and biases); "
        f"timed on a fixed random sample of them: {sum(int(v.numel()) for d in samples.values() for v in d.values())} "
        f"({max(args.sample, 1)}-{args.max_sample} per parameter, at least FeatureReuseEvaluator's chunk; "
        "SequentialEvaluator "
        f"{sum(int(v.numel()) for d in seq_samples.values() for v in d.values())}), x {rounds} rounds in alternating "
        "order; per-coordinate times x the layer's step coordinates = the extrapolated step",
        f"autograd forward+backward: {med(scale) * 1e3:.1f} ms;  once per step: "
        + ", ".join(f"{n} {med(setup[n]) * 1e3:.0f} ms" for n in names),
        "",
    ]
    head = f"{'layer':<10}{'coords':>7}" + "".join(f"{n:>15}" for n in names) + f"{'FR / BR':>9}{'range':>13}"
    if "restart NHWC" in names:
        head += f"{'FR / NHWC':>11}"
    lines += [head, f"{'':<17}" + "".join(f"{'ms/coord':>15}" for _ in names)]

    def ratio_stats(a: str, b: str, label: str) -> Tuple[float, float, float]:
        rs = [x / y for x, y in zip(per[a][label], per[b][label])]
        return med(rs), min(rs), max(rs)

    worst = (0.0, "")
    for label, _ in layers:
        row = f"{label:<10}{counts[label]:>7}" + "".join(f"{med(per[n][label]) * 1e3:>15.3f}" for n in names)
        m, lo, hi = ratio_stats("FeatureReuseEvaluator", "block restart", label)
        worst = max(worst, (m, label))
        row += f"{m:>9.2f}{f'{lo:.2f}-{hi:.2f}':>13}"
        if "restart NHWC" in names:
            row += f"{ratio_stats('FeatureReuseEvaluator', 'restart NHWC', label)[0]:>11.2f}"
        lines.append(row)

    def step_total(name: str, r: int) -> float:
        return setup[name][r] + sum(per[name][label][r] * counts[label] for label, _ in layers)

    totals = {n: [step_total(n, r) for r in range(rounds)] for n in names}
    lines += ["", f"{'full step (extrapolated)':<28}" + "".join(f"{n:>15}" for n in names)]
    lines.append(f"{'seconds':<28}" + "".join(f"{med(totals[n]):>15.1f}" for n in names))
    lines.append(
        f"{'x autograd forward+backward':<28}" + "".join(f"{med(totals[n]) / med(scale):>15.0f}" for n in names)
    )
    for other in [n for n in names if n not in ("FeatureReuseEvaluator", "SequentialEvaluator")] + [
        "SequentialEvaluator"
    ]:
        rs = [f / o for f, o in zip(totals["FeatureReuseEvaluator"], totals[other])]
        lines.append(
            f"FeatureReuseEvaluator / {other} for the whole step: {med(rs):.3f} (rounds {min(rs):.3f}-{max(rs):.3f})"
        )
    lines.append(f"slowest layer relative to block restart: {worst[1]} at {worst[0]:.2f}")

    # gradients of the first round's sample against SequentialEvaluator's (coordinates both evaluated)
    errs = {}
    for name in names:
        if name == "SequentialEvaluator":
            continue
        worst_err, scale_g = 0.0, 0.0
        for label, _ in layers:
            seq_smp, smp = seq_samples[label], samples[label]
            spans = methods.steps(smp)
            got = check[name][label] / spans
            ref_spans = methods.steps(seq_smp)
            ref = check["SequentialEvaluator"][label] / ref_spans
            offset_got, offset_ref = 0, 0
            for i in sorted(smp):
                n_ref = int(seq_smp[i].numel())
                n_got = int(smp[i].numel())
                shared = min(n_ref, n_got)  # both samples start with the same step coordinates
                a = ref[offset_ref : offset_ref + shared]
                b = got[offset_got : offset_got + shared]
                worst_err = max(worst_err, float((a - b).abs().max()) if shared else 0.0)
                scale_g = max(scale_g, float(a.abs().max()) if shared else 0.0)
                offset_ref += n_ref
                offset_got += n_got
        errs[name] = (worst_err, scale_g)
    fp32_noise = torch.finfo(torch.float32).eps * 2.3 / MU
    lines.append(
        "gradients vs SequentialEvaluator on the sampled coordinates (max |difference|, largest |g|; "
        f"fp32 loss rounding / mu = {fp32_noise:.1e}): "
        + ", ".join(f"{n} {e:.1e} (|g| {s:.2f})" for n, (e, s) in errs.items())
    )
    return lines


def _med_time(fn: Callable[[], object], device: torch.device, n: int = 7) -> float:
    fn()
    ts = []
    for _ in range(n):
        began = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ts.append(time.perf_counter() - began)
    return statistics.median(ts)


def _unit_costs(k: int, b: int, c: int, hw: int, device: torch.device) -> str:
    from zeroth import ops
    from zeroth.engine.stages import batchnorm_copies, empty_copies

    a = torch.randn(b, c, hw, hw, device=device)
    x = empty_copies(a, k).copy_(a.expand(k, *a.shape))
    w = torch.randn(c, c, 3, 3, device=device)
    xb = x.reshape(k * b, c, hw, hw)
    bn = nn.BatchNorm2d(c).to(device)
    n = x.numel()
    conv = _med_time(lambda: F.conv2d(xb, w, padding=1), device) / (n * c * 9)
    bnc = _med_time(lambda: batchnorm_copies(bn, x), device) / n
    relu = _med_time(lambda: x.relu_(), device) / n
    delta = torch.randn(k, b, hw * hw, device=device) * 1e-3
    ch = torch.randint(0, c, (k,), device=device)
    a3 = a.reshape(b, c, -1)
    act = _med_time(lambda: ops.activation_difference_confined(a3, ch, delta, 0), device) / delta.numel()
    bnd = _med_time(lambda: ops.batchnorm_difference(a3, delta, ch, bn.weight, 1e-5), device) / delta.numel()
    dense = torch.randn(k, b, c, hw * hw, device=device) * 1e-3
    bnd_dense = _med_time(lambda: ops.batchnorm_difference(a3, dense, None, bn.weight, 1e-5), device) / dense.numel()
    single = delta.reshape(k * b, 1, hw, hw)
    conf = _med_time(lambda: F.conv2d(single, w[:, :1], padding=1), device) / (k * b * c * hw * hw * 9)
    return (
        f"K={k:<3} B={b:<4} C={c:<3} {hw}x{hw}: conv/MAC {conv:.2e}  confined conv/MAC {conf:.2e}  "
        f"BN copies/elem {bnc:.2e}  ReLU/elem {relu:.2e}  act diff/elem {act:.2e}  "
        f"BN diff/elem {bnd:.2e} (dense {bnd_dense:.2e})"
    )


def calibrate(device: torch.device) -> None:
    """Print the unit costs behind :data:`zeroth.engine.schemes.COSTS`, measured on this machine."""
    with torch.no_grad():
        for k, b, c, hw in [(1, 256, 16, 32), (4, 32, 16, 32), (1, 256, 32, 16), (2, 256, 64, 8), (16, 32, 64, 8)]:
            print(_unit_costs(k, b, c, hw, device), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--sample",
        type=int,
        default=2,
        help="coordinates timed per parameter, at least FeatureReuseEvaluator's chunk for it (up to --max-sample)",
    )
    ap.add_argument("--max-sample", type=int, default=None, help="cap on the coordinates per parameter (16; 4 --quick)")
    ap.add_argument("--seq-sample", type=int, default=1, help="coordinates timed per layer for SequentialEvaluator")
    ap.add_argument("--keep", type=float, default=0.1, help="fraction of each weight's coordinates in the step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--max-memory-gb",
        type=float,
        default=None,
        help="FeatureReuseEvaluator's working-set budget (default: its own, 0.25 GiB; e.g. 16 on a GPU)",
    )
    ap.add_argument(
        "--precision", default="fp32", help="FeatureReuseEvaluator's arithmetic of Δ's linear ops (tf32/bf16 on a GPU)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="1-4 coordinates per parameter, at most 2 rounds, no NHWC baseline"
    )
    ap.add_argument("--calibrate", action="store_true", help="print the cost model's unit costs measured here")
    args = ap.parse_args(argv)
    if args.max_memory_gb is None:
        args.max_memory_gb = FeatureReuseEvaluator().max_memory / 2**30
    if args.max_sample is None:
        args.max_sample = 4 if args.quick else 16
    if args.quick:
        args.sample = 1
    if args.quick:
        args.rounds = min(args.rounds, 2)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.calibrate:
        calibrate(device)
        return
    out = []
    for b in args.batch:
        out += run_batch(b, args, device) + [""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
