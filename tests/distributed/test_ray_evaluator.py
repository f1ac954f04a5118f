"""RayEvaluator and RayPool on a local Ray with 2 CPU workers: same results as local, faults, errors."""

import os
import threading
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ray = pytest.importorskip("ray")

from zeroth import CGE, RGE, SPSA, BlackBox, EvaluationError, Objective, ZOOptimizer, estimate_gradient  # noqa: E402
from zeroth.blackbox import batched, from_numpy  # noqa: E402
from zeroth.distributed import RayEvaluator, RayPool, WorkerFailureError, WorkerFailureWarning  # noqa: E402
from zeroth.engine import FeatureReuseEvaluator, SequentialEvaluator  # noqa: E402
from zeroth.models import DigitsCNN  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (starting it takes seconds), 2 CPUs: 2 workers of one CPU."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def shared():
    """A started 2-worker evaluator, reused by the tests that do not kill workers."""
    ev = RayEvaluator("sequential", num_workers=2, resources_per_worker={"CPU": 1})
    ev.start()
    yield ev
    ev.close()


@pytest.fixture
def cpus_free(shared):
    """Stop the shared workers, so a test's own 2 workers fit (the shared ones restart on next use)."""
    shared.close()


def bn_dropout_mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 10)
    )


def batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def run_both(make_model, estimator, ray_evaluator, local_evaluator=None, steps=1, seed=0):
    """Parameters, buffers, RNG and losses after ``steps`` optimizer steps, local and on Ray."""
    out = []
    for ev in (local_evaluator or SequentialEvaluator(), ray_evaluator):
        model = make_model()
        x, y = batch()
        opt = ZOOptimizer(model.parameters(), lr=0.05, estimator=estimator, evaluator=ev, seed=seed)
        torch.manual_seed(123)
        losses = [opt.step(Objective(model, F.cross_entropy, x, y)) for _ in range(steps)]
        out.append(
            {
                "params": [p.detach().clone() for p in model.parameters()],
                "buffers": [b.clone() for b in model.buffers()],
                "rng": torch.get_rng_state(),
                "losses": losses,
                "last": opt.last_losses,
            }
        )
    return out


def assert_identical(a, b):
    assert all(torch.equal(u, v) for u, v in zip(a["params"], b["params"]))
    assert all(torch.equal(u, v) for u, v in zip(a["buffers"], b["buffers"]))
    assert torch.equal(a["rng"], b["rng"])
    assert torch.equal(a["last"].perturbed, b["last"].perturbed)
    assert [float(v) for v in a["losses"]] == [float(v) for v in b["losses"]]


# -- same results as local -----------------------------------------------------------------
@pytest.mark.parametrize("estimator", [CGE(), CGE(scheme="central"), SPSA(q=3), RGE(q=5, dist="sphere")], ids=repr)
def test_steps_are_bitwise_those_of_local_sequential(shared, estimator):
    # BatchNorm (buffers updated once per step) and active dropout (common random numbers: the
    # driver's RNG state travels with the step) make equality a check of the whole step state
    local, remote = run_both(lambda: bn_dropout_mlp(dropout=0.2), estimator, shared, steps=2)
    assert_identical(local, remote)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_exact_rademacher_pieces_on_workers_give_the_local_losses(shared, dtype):
    from zeroth.estimators.exact_perturbation import ExactRademacher

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10)).to(dtype)
    x, y = batch()
    obj = Objective(model, F.cross_entropy, x.to(dtype), y)
    params = list(model.parameters())
    dirs = ExactRademacher(params, seed=5, q=6, mus=[1e-3] * len(params), antithetic=True)
    assert shared.supports(obj, dirs, params)
    local = SequentialEvaluator().evaluate(obj, params, dirs)
    remote = shared.evaluate(obj, params, dirs)
    assert len(shared.stats["last_step"]["pieces"]) > 1
    assert torch.equal(local.perturbed, remote.perturbed)


def test_model_is_sent_once_and_again_only_for_a_new_structure(shared):
    model = bn_dropout_mlp()
    x, y = batch()
    sends = shared.stats["model_sends"]
    opt = ZOOptimizer(model.parameters(), lr=0.05, estimator=SPSA(), evaluator=shared, seed=0)
    for _ in range(3):
        opt.step(Objective(model, F.cross_entropy, x, y))  # a new Objective each step, the same model
    assert shared.stats["model_sends"] == sends + 1
    model.eval()  # train/eval flags travel with every step: no new copy needed
    opt.step(Objective(model, F.cross_entropy, x, y))
    assert shared.stats["model_sends"] == sends + 1
    wider = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    ZOOptimizer(wider.parameters(), lr=0.05, estimator=SPSA(), evaluator=shared, seed=0).step(
        Objective(wider, F.cross_entropy, x, y)
    )
    assert shared.stats["model_sends"] == sends + 2
    loads = [ray.get(w.counters.remote())["loads"] for w in shared.workers]
    assert all(n <= shared.stats["model_sends"] for n in loads)


def test_a_black_box_inside_the_model_runs_on_the_workers(shared):
    def shift(a):
        return a + 0.5 * a**2

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), BlackBox(from_numpy(shift, batched=True)), nn.Linear(6, 10))
    local, remote = run_both(lambda: model_copy(model), CGE(), shared)
    assert_identical(local, remote)


def test_program_calls_on_the_workers_are_counted_by_the_drivers_black_box(shared):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 3),  # noqa: E731
        BlackBox(from_numpy(lambda a: a**2, batched=True)),
        nn.Linear(3, 10),
    )
    x, y = batch()
    counts = []
    for ev in (SequentialEvaluator(), shared):
        model = make()
        estimate_gradient(Objective(model, F.cross_entropy, x, y), list(model[1].parameters()), CGE(), ev)
        counts.append(model[2].counts())
    pieces = len(shared.stats["last_step"]["pieces"])
    assert counts[0]["calls"] == 1 + 64 * 3 + 3  # the base, then one forward per coordinate
    # each piece evaluates the base loss once
    assert counts[1] == {
        "calls": counts[0]["calls"] + pieces - 1,
        "points": 16 * (counts[0]["calls"] + pieces - 1),
        "failed_points": 0,
    }


def model_copy(model):
    import copy

    return copy.deepcopy(model)


def test_an_error_in_the_objective_is_raised_as_is_not_retried(shared):
    def bad_loss(out, y):
        raise KeyError("label missing")

    model = bn_dropout_mlp()
    x, y = batch()
    failures = shared.stats["failures"]
    with pytest.raises(KeyError, match="label missing") as info:
        estimate_gradient(Objective(model, bad_loss, x, y), list(model.parameters()), SPSA(), shared)
    assert any("raised on Ray worker" in n for n in getattr(info.value, "__notes__", []))
    assert shared.stats["failures"] == failures


def test_non_finite_losses_follow_the_optimizer_policy(shared):
    model = bn_dropout_mlp()
    x, y = batch()
    x[0, 0, 0, 0] = float("nan")
    opt = ZOOptimizer(model.parameters(), lr=0.05, estimator=SPSA(), evaluator=shared, seed=0)
    with pytest.raises(EvaluationError, match="non-finite"):
        opt.step(Objective(model, F.cross_entropy, x, y))


# -- arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_workers": 0}, ValueError, "num_workers"),
        ({"max_failures": -1}, ValueError, "max_failures"),
        ({"resources_per_worker": {"GPU": -1}}, ValueError, "resources_per_worker"),
        ({"resources_per_worker": {"memory": 2**30}}, ValueError, "resources_per_worker"),
        ({"resources_per_worker": [1]}, TypeError, "resources_per_worker"),
        ({"address": 7}, TypeError, "address"),
        ({"balance": "fast"}, ValueError, "balance"),
        ({"inner": "nope"}, ValueError, "inner"),
        ({"inner": "ray"}, ValueError, "inner"),
        ({"inner": 3}, TypeError, "inner"),
        ({"blocks_per_worker": 0}, ValueError, "blocks_per_worker"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        RayEvaluator(**kwargs)


def test_what_cannot_be_split_is_refused_before_any_work(shared):
    model = bn_dropout_mlp()
    x, y = batch()
    params = list(model.parameters())
    with pytest.raises(TypeError, match="Objective"):
        estimate_gradient(lambda: F.cross_entropy(model(x), y), params, SPSA(), shared)
    with pytest.raises(ValueError, match="parameter of objective.model"):
        estimate_gradient(Objective(model, F.cross_entropy, x, y), [torch.zeros(3)], SPSA(), shared)
    with pytest.raises(ValueError, match="num_workers"):
        RayEvaluator(num_workers=64).start()
    assert not RayEvaluator("feature_reuse").supports(
        Objective(model, F.cross_entropy, x, y), SPSA().directions(params), params
    )


# -- tests with workers of their own (the shared ones are stopped first) -----------------------
def test_feature_reuse_on_workers_agrees_with_local_to_rounding(cpus_free):
    model = DigitsCNN()
    x, y = batch(24)
    obj = Objective(model, F.cross_entropy, x, y)
    params = list(model.parameters())
    _, ref, ref_losses = estimate_gradient(obj, params, CGE(), FeatureReuseEvaluator())
    with RayEvaluator("auto", num_workers=2) as ev:  # auto picks FeatureReuseEvaluator on the workers
        _, got, losses = estimate_gradient(obj, params, CGE(), ev)
        assert ray.get(ev.workers[0].counters.remote())["evaluator"].startswith("FeatureReuseEvaluator")
    torch.testing.assert_close(losses.perturbed, ref_losses.perturbed, rtol=1e-6, atol=0)
    # how the coordinates are split depends on the workers' measured speed, and a worker given part
    # of the last layer takes its sparse path instead of the whole-layer table: both exact, rounded
    # differently (fp32 arithmetic on the difference, the table made at the nominal μ)
    scale = max(float(a.abs().max()) for a in ref)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * scale)


# -- faults --------------------------------------------------------------------------------
class SlowSequential(SequentialEvaluator):
    """SequentialEvaluator that first sleeps, so a test can kill the worker in the middle of a step."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def evaluate(self, objective, params, dirs):
        time.sleep(self.delay)
        return super().evaluate(objective, params, dirs)


class Crash(SequentialEvaluator):
    """A worker process that dies in every evaluation (as if killed by the OOM killer)."""

    def evaluate(self, objective, params, dirs):
        os._exit(1)


def test_a_worker_killed_mid_step_gives_the_identical_step(cpus_free):
    ev = RayEvaluator(SlowSequential(1.0), num_workers=2, max_failures=1).start()
    killer = threading.Timer(0.4, lambda: ray.kill(ev.workers[0]))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            killer.start()
            local, remote = run_both(lambda: bn_dropout_mlp(dropout=0.2), CGE(), ev)
        killer.join()
        assert ev.stats["failures"] == 1
        assert any(issubclass(w.category, WorkerFailureWarning) for w in caught)
        assert_identical(local, remote)
        local, remote = run_both(lambda: bn_dropout_mlp(), SPSA(q=2), ev)  # the pool goes on
        assert_identical(local, remote)
    finally:
        ev.close()


def test_exceeding_the_failure_budget_raises_and_changes_nothing(cpus_free):
    model = bn_dropout_mlp()
    x, y = batch()
    ev = RayEvaluator(Crash(), num_workers=2, max_failures=1)
    opt = ZOOptimizer(model.parameters(), lr=0.05, estimator=CGE(), evaluator=ev, seed=0)
    before = [t.clone() for t in list(model.parameters()) + list(model.buffers())]
    gen, rng = opt.generator.get_state(), torch.get_rng_state()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WorkerFailureWarning)
            with pytest.raises(WorkerFailureError, match=r"2 Ray worker failure\(s\).*max_failures=1"):
                opt.step(Objective(model, F.cross_entropy, x, y))
    finally:
        ev.close()
    after = list(model.parameters()) + list(model.buffers())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(opt.generator.get_state(), gen) and torch.equal(torch.get_rng_state(), rng)
    assert opt.zo_steps == 0


# -- black-box programs on a pool ----------------------------------------------------------
def simulate(point):
    """A per-point 'simulator' R^3 -> R^2."""
    return torch.stack([torch.sin(point).sum(), (point**2).sum()])


def test_a_pool_of_simulators_gives_the_local_outputs_and_gradient(cpus_free):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 2, generator=g, dtype=torch.float64)
    local = BlackBox(batched(lambda p: torch.stack([simulate(q) for q in p])), CGE(mu=1e-6), seed=0)
    pool = RayPool(simulate, num_workers=2)
    try:
        remote = BlackBox(pool, CGE(mu=1e-6), seed=0)
        (ga,) = torch.autograd.grad(local(x), x, v)
        out = remote(x)
        (gb,) = torch.autograd.grad(out, x, v)
        assert torch.equal(out, local(x.detach())) and torch.equal(ga, gb)
        assert remote.counts()["calls"] == 1 and pool.pool.last_call["pieces"] == [10, 10]  # 5 rows x (1 + 3) points
    finally:
        pool.close()


# -- the example ---------------------------------------------------------------------------
@pytest.mark.slow  # an end-to-end run of the example: Ray start-up and a ResNet-20 step, 20-30 s
def test_the_multi_gpu_example_trains_on_cpu_workers(cpus_free):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "ray_multi_gpu.py")
    spec = importlib.util.spec_from_file_location("example_ray_multi_gpu", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--steps", "1", "--batch-size", "2", "--lr", "0.01"])
    assert [w["device"] for w in out["workers"]] == ["cpu", "cpu"]
    (step,) = out["history"]
    # the masked coordinates (0.1 % of each Conv/Linear weight, every BN parameter and bias) all went
    # to the two workers, each got a share, and the step evaluated each of them once plus l(theta)
    from zeroth.models import resnet20
    from zeroth.sparsity import DynamicMask, count_selected, uniform_ratios

    model = resnet20()
    params = list(model.parameters())
    selected = count_selected(
        DynamicMask(uniform_ratios(model, 0.999), model=model).select(params, 0, torch.Generator()), params
    )
    assert sum(step["pieces"]) == selected and len(step["pieces"]) == 2 and min(step["pieces"]) > 0
    assert step["queries"] == selected + 1
    assert 1.5 < step["loss"] < 3.5  # an untrained 10-class network: about ln 10 = 2.30
