"""Scaling of a full CGE gradient over Ray workers: local vs 1, 2, ... workers, and Ray's overhead.

Run: ``python -m bench.distributed [--workers 1 2] [--repeat 3] [--workloads digits-seq digits-fr resnet-fr]``.

Each workload times one gradient step (``estimate_gradient``) in this process with one torch
thread (the local baseline: what one worker does), then with ``RayEvaluator`` on N one-CPU
workers (``--gpu``: one GPU each, and the local baseline on the GPU). Times are medians of
``--repeat`` steps after two warm-up steps (model copy, ``auto``'s choice, the first balance).

* speedup = local seconds / Ray seconds; efficiency = speedup / N (goal ≥ 0.8 where the
  per-step work dominates);
* overhead = wall time of a step minus the longest time a worker spent evaluating: putting
  θ and the batch in the object store, scheduling, fetching, merging the losses;
* core share = CPU time / wall time of the evaluating thread (workers: their mean): below 1
  when other processes take the cores — then the speedup says more about the machine than
  about the scaling; "eff. per core" = efficiency × local share / worker share, the
  efficiency per core actually obtained (derived, not measured: what to expect on idle cores,
  less whatever the overhead column adds);
* a tiny step (SPSA, 2 evaluations) shows the fixed latency of one distributed step.

The machine's load average is printed before and after: on a shared machine other processes
take cores from the workers, and the table says so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from zeroth import CGE, SPSA, Objective, estimate_gradient
from zeroth.engine import FeatureReuse, Sequential

from .engine import problem


def _workload(name: str, batch: int, resnet_coords: int):
    """(title, objective, params, masks, inner evaluator name, local evaluator)."""
    if name == "digits-seq":
        model, obj, params = problem("digits_cnn", batch)
        return f"digits_cnn, batch {batch}, inner Sequential", obj, params, None, "sequential", Sequential()
    if name == "digits-fr":
        model, obj, params = problem("digits_cnn", batch)
        return f"digits_cnn, batch {batch}, inner auto (FeatureReuse)", obj, params, None, "auto", FeatureReuse()
    if name == "resnet-fr":
        model, obj, params = problem("resnet20", batch)
        g = torch.Generator().manual_seed(0)
        masks = [torch.randperm(p.numel(), generator=g)[:resnet_coords] for p in params]
        return (f"resnet20, batch {batch}, {resnet_coords} coordinates per tensor, inner auto (FeatureReuse)",
                obj, params, masks, "auto", FeatureReuse())
    raise ValueError(f"unknown workload {name!r}")


def _median_step(step: Callable[[], object], repeat: int, stats: Callable[[], Tuple[float, float]] = None):
    """Median seconds per step, and the median of ``stats()`` (overhead, core share) after each step.

    Without ``stats`` (a local run) the core share is this thread's CPU time over wall time.
    """
    step()
    step()  # warm-up: model copy on the workers, auto's choice, the first balance
    times, overheads, shares = [], [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.thread_time()
        step()
        times.append(time.perf_counter() - start)
        overhead, share = stats() if stats else (0.0, (time.thread_time() - cpu) / times[-1])
        overheads.append(overhead)
        shares.append(share or 0.0)
    return statistics.median(times), statistics.median(overheads), statistics.median(shares)


def _ray_stats(ev) -> Callable[[], Tuple[float, float]]:
    return lambda: (ev.stats["last_step"]["overhead"], ev.stats["last_step"]["core_share"])


def scaling_table(name: str, batch: int, workers: List[int], repeat: int, resnet_coords: int,
                  device: str) -> List[str]:
    from zeroth.distributed import RayEvaluator

    title, obj, params, masks, inner, local = _workload(name, batch, resnet_coords)
    n = sum(int(m.numel()) for m in masks) if masks is not None else sum(p.numel() for p in params)
    est = CGE(mu=1e-3)
    load = os.getloadavg()[0]
    if device != "cpu":
        obj.model.to(device)
        obj.inputs, obj.targets = obj.inputs.to(device), obj.targets.to(device)
        params = list(obj.model.parameters())
        masks = [m.to(device) for m in masks] if masks is not None else None
    rows = [f"{title}: full CGE gradient, {n:,} coordinates",
            f"{'run':<22}{'s/step':>9}{'coords/s':>11}{'speedup':>9}{'efficiency':>12}{'overhead s':>12}"
            f"{'core share':>12}{'eff. per core':>15}"]
    t_local, _, share = _median_step(lambda: estimate_gradient(obj, params, est, local, masks=masks), repeat)
    rows.append(f"{'local, 1 thread' if device == 'cpu' else 'local ' + device:<22}{t_local:>9.3f}"
                f"{n / t_local:>11,.0f}{1.0:>9.2f}{'-':>12}{'-':>12}{share:>12.2f}{'-':>15}")
    local_share = share
    resources = {"GPU": 1} if device != "cpu" else {"CPU": 1}
    for w in workers:
        with RayEvaluator(inner, num_workers=w, resources_per_worker=resources) as ev:
            t, overhead, share = _median_step(lambda: estimate_gradient(obj, params, est, ev, masks=masks), repeat,
                                              _ray_stats(ev))
        speed = t_local / t
        rows.append(f"{f'ray, {w} worker' + ('s' if w > 1 else ''):<22}{t:>9.3f}{n / t:>11,.0f}{speed:>9.2f}"
                    f"{speed / w:>12.2f}{overhead:>12.4f}{share:>12.2f}{speed / w * local_share / share:>15.2f}")
    rows.append(f"  load average (1 min) before / after: {load:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return rows


def latency_table(workers: int, repeat: int) -> List[str]:
    """The fixed cost of one distributed step: SPSA (2 evaluations) on the digits CNN."""
    from zeroth.distributed import RayEvaluator

    _, obj, params = problem("digits_cnn", 32)
    gen = torch.Generator().manual_seed(0)
    t_local, _, _ = _median_step(lambda: estimate_gradient(obj, params, SPSA(), Sequential(), generator=gen),
                                 max(repeat, 10))
    with RayEvaluator("sequential", num_workers=workers) as ev:
        t_ray, overhead, _ = _median_step(lambda: estimate_gradient(obj, params, SPSA(), ev, generator=gen),
                                          max(repeat, 10), _ray_stats(ev))
    return ["tiny step (digits_cnn batch 32, SPSA: 2 evaluations): the fixed cost of a distributed step",
            f"  local {t_local * 1e3:.2f} ms, Ray ({workers} workers) {t_ray * 1e3:.2f} ms, "
            f"of which overhead {overhead * 1e3:.2f} ms"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="worker counts to time (default: 1 and 2, or 1 per GPU with --gpu)")
    ap.add_argument("--workloads", nargs="+", default=["digits-seq", "digits-fr", "resnet-fr"],
                    choices=["digits-seq", "digits-fr", "resnet-fr"])
    ap.add_argument("--batch", type=int, default=64, help="batch of the digits workloads")
    ap.add_argument("--resnet-batch", type=int, default=8)
    ap.add_argument("--resnet-coords", type=int, default=10, help="sampled coordinates per ResNet-20 tensor")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gpu", action="store_true", help="one GPU per worker; local baseline on cuda")
    ap.add_argument("--address", default=None, help="Ray cluster to join (default: start one here)")
    args = ap.parse_args(argv)

    import ray

    device = "cuda" if args.gpu else "cpu"
    workers = args.workers or ([1] if args.gpu else [1, 2])
    torch.set_num_threads(1)
    if not ray.is_initialized():
        if args.address:
            ray.init(address=args.address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers), num_gpus=max(workers) if args.gpu else 0,
                     include_dashboard=False, log_to_driver=False)
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} cores, workers {workers}, "
          f"device {device}\n")
    batches: Dict[str, int] = {"digits-seq": args.batch, "digits-fr": 4 * args.batch, "resnet-fr": args.resnet_batch}
    for name in args.workloads:
        print("\n".join(scaling_table(name, batches[name], workers, args.repeat, args.resnet_coords, device)), "\n")
    if not args.gpu:
        print("\n".join(latency_table(max(workers), args.repeat)))


if __name__ == "__main__":
    main()
