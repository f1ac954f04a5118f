"""FeatureReuseEvaluator's per-stage choice between propagating Δ and restarting on K copies: every choice is exact,
the cost model's choice is fixed by shapes, and the block-restart baseline (bench) equals SequentialEvaluator."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.block_restart import BlockRestart, blocks_of
from zeroth import CGE, Objective, estimate_gradient
from zeroth.engine import FeatureReuseEvaluator, SequentialEvaluator
from zeroth.engine.delta import Delta, add_delta_, materialise
from zeroth.engine.feature_reuse import _owners
from zeroth.engine.schemes import COSTS, BlockShapes, Cut, candidate_cuts
from zeroth.engine.stages import batchnorm_copies, empty_copies, forward_copies, frozen_batchnorm_buffers
from zeroth.models import ResNet20, resnet20


def _problem(make, batch=3, dtype=torch.float64, per_param=2, seed=0):
    torch.manual_seed(seed)
    model = make().to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 3, 32, 32, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (batch,), generator=g)
    params = list(model.parameters())
    masks = [torch.randperm(p.numel(), generator=g)[:per_param] for p in params]
    return model, Objective(model, F.cross_entropy, x, y), params, masks


def _small():
    return ResNet20(width=4, blocks_per_stage=2)


class _Pick:
    """A ``choose`` for the step context: candidate ``i`` (or the last one), recording how many there were."""

    def __init__(self, i):
        self.i, self.seen = i, 0

    def __call__(self, candidates):
        self.seen = max(self.seen, len(candidates))
        return candidates[min(self.i, len(candidates) - 1)][0]


def test_every_cut_equals_sequential_in_float64(monkeypatch):
    """Each exact switch position (inside the perturbed block, at every later stage input and inside
    every later block) gives SequentialEvaluator's gradient to float64 rounding of the loss (1e-16·ℓ/μ)."""
    import zeroth.engine.feature_reuse as fr

    model, obj, params, masks = _problem(_small, batch=2, per_param=1)
    est = CGE(mu=1e-4)
    _, ref, _ = estimate_gradient(obj, params, est, SequentialEvaluator(), masks=masks)
    i, most = 0, 1
    while i < most:
        pick = _Pick(i)
        original = fr._StepContext.__init__

        def init(self, *args, pick=pick, original=original, **kwargs):
            kwargs["choose"] = pick
            original(self, *args, **kwargs)

        monkeypatch.setattr(fr._StepContext, "__init__", init)
        _, got, _ = estimate_gradient(obj, params, est, FeatureReuseEvaluator(), masks=masks)
        monkeypatch.undo()
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
        most = max(most, pick.seen)
        i += 1
    assert most >= 15  # a stem coordinate can switch at ~20 positions of this network


@pytest.mark.parametrize("scheme", ["auto", "propagate", "restart"])
def test_schemes_agree_with_sequential_on_resnet20_in_float32(scheme):
    model, obj, params, masks = _problem(resnet20, batch=2, dtype=torch.float32, per_param=3)
    dirs = CGE(mu=1e-3).directions(params, masks=masks)
    ref = SequentialEvaluator().evaluate(obj, params, dirs)
    got = FeatureReuseEvaluator(scheme=scheme).evaluate(obj, params, dirs)
    torch.testing.assert_close(got.perturbed, ref.perturbed, rtol=1e-6, atol=0)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="Invalid scheme"):
        FeatureReuseEvaluator(scheme="fastest")


def _plans(batch):
    """The cost model's cuts for ResNet-20 at ``batch`` (shapes from a batch-2 pass, batch dimension scaled)."""
    model, obj, params, _ = _problem(resnet20, batch=2, dtype=torch.float32)
    fr = FeatureReuseEvaluator()
    with torch.no_grad(), frozen_batchnorm_buffers(model):
        ctx = fr._base_pass(obj, model.zo_stages())
    shapes = [(batch,) + tuple(a.shape[1:]) for a in ctx.acts]

    def inner(t):
        tr = ctx.traces.residual(ctx.chain[t], ctx.acts[t])
        return BlockShapes([(batch,) + tuple(a.shape[1:]) for a in tr.main], (batch,) + tuple(tr.total.shape[1:]))

    owner = _owners(ctx.chain)
    out = {}
    for name, p in model.named_parameters():
        s, local = owner[id(p)]
        cands = candidate_cuts(ctx.chain, shapes, inner, s, local, 2, COSTS["cpu"])
        out[name] = (s, min(cands, key=lambda c: c[1])[0], cands)
    return out


def test_cpu_cost_model_cuts_where_the_difference_becomes_dense():
    """ResNet-20 at batch 256 on a CPU: a block's first-conv coordinates switch to copies after the
    block's second convolution (the one-channel Δ made dense), its second-conv coordinates after the
    next block's first convolution — never earlier than the perturbed layer, never at a block input."""
    plans = _plans(256)
    for b in range(8):
        s = 3 + b
        assert plans[f"blocks.{b}.main.0.weight"][1] == Cut(s, 4)
        assert plans[f"blocks.{b}.main.1.weight"][1] == Cut(s, 4)
        assert plans[f"blocks.{b}.main.3.weight"][1] == Cut(s + 1, 1)
        assert plans[f"blocks.{b}.main.4.bias"][1] == Cut(s + 1, 1)
    assert plans["stem.0.weight"][1] == Cut(3, 1)
    for name in ("blocks.8.main.3.weight", "blocks.8.main.4.weight"):
        assert plans[name][1] == Cut(15)  # Δ to the logits, loss difference in closed form
    for s, cut, cands in plans.values():
        assert cands[0][0].stage >= s and cut in [c for c, _ in cands]


def test_plans_depend_on_shapes_only():
    a, b = _plans(64), _plans(64)
    assert {k: v[1] for k, v in a.items()} == {k: v[1] for k, v in b.items()}
    assert all(x[2] == y[2] for x, y in zip(a.values(), b.values()))  # the same modelled costs, bit for bit


def test_materialise_and_add_delta_in_the_copies_layout():
    """Copies take the cached activation's layout (channels-last here), confined Δ on its channel only."""
    torch.manual_seed(0)
    a = torch.randn(3, 4, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    dense = Delta(torch.randn(2, 3, 4, 5, 5, dtype=torch.float64))
    confined = Delta(torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.tensor([1, 3]))
    for d in (dense, confined, None):
        got = materialise(a, d, 2)
        want = a.unsqueeze(0) + (d.dense(a) if d is not None else 0)
        assert got.shape == (2, 3, 4, 5, 5) and got[0].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want.expand_as(got), rtol=0, atol=0)
        if d is not None:
            base = empty_copies(a, 2).copy_(a.expand(2, *a.shape))
            torch.testing.assert_close(add_delta_(base, d), want, rtol=0, atol=0)


def test_copies_forward_in_channels_last_equals_one_by_one():
    """forward_copies (in-place ReLU, per-copy BatchNorm in channels-last) on two residual blocks equals
    each copy run alone; the caller's tensor is left alone unless it is given away."""
    torch.manual_seed(0)
    model = resnet20().double().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.normal_()
    blocks = model.zo_stages()[5:7]  # a plain block and a downsampling one
    a = torch.randn(2, 16, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x = materialise(a, Delta(1e-2 * torch.randn(3, 2, 16, 32, 32, dtype=torch.float64)), 3)
    keep = x.clone()
    with torch.no_grad(), frozen_batchnorm_buffers(model):
        want = torch.stack([blocks[1](blocks[0](c)) for c in x])
        got = forward_copies(blocks, x, owned=False)
        assert torch.equal(x, keep)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        bn = model.zo_stages()[1]
        torch.testing.assert_close(batchnorm_copies(bn, x), torch.stack([bn(c) for c in x]), rtol=1e-12, atol=1e-12)


def test_block_restart_baseline_equals_sequential_in_float64():
    """bench/block_restart.py (DeepZero's worker from its description) is a fair baseline: same losses."""
    model, obj, params, masks = _problem(_small, per_param=2)
    assert len(blocks_of(model)) == 8  # stem, six residual blocks, head
    dirs = CGE(mu=1e-4, scheme="central").directions(params, masks=masks)
    ref = SequentialEvaluator().evaluate(obj, params, dirs)
    before = [p.clone() for p in params]
    got = BlockRestart(model).evaluate(obj, params, dirs)
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    torch.testing.assert_close(got.perturbed, ref.perturbed, rtol=0, atol=1e-14)


def test_copies_repeat_the_cached_pass_bit_for_bit():
    """On a CPU the cached pass runs channels-last and unperturbed copies from any stage reproduce its logits
    exactly, so rounding cancels in the copies' loss differences as between two forwards of SequentialEvaluator."""
    model, obj, params, _ = _problem(resnet20, batch=4, dtype=torch.float32)
    fr = FeatureReuseEvaluator()
    with torch.no_grad(), frozen_batchnorm_buffers(model):
        ctx = fr._base_pass(obj, model.zo_stages())
        assert ctx.laid_out(ctx.acts[5]).is_contiguous(memory_format=torch.channels_last)
        for t in (0, 3, 7, 12):
            copies = ctx.materialise(ctx.acts[t], None, 3)
            out = forward_copies(ctx.chain[t:], copies)
            assert torch.equal(out, ctx.acts[-1].expand_as(out))


class _ViewFlatten(nn.Module):
    """A row-wise stage whose forward needs contiguous input (``view``), as users write them."""

    zo_rowwise = True

    def forward(self, x):
        return x.view(x.shape[0], -1)


def test_a_model_that_cannot_run_channels_last_runs_as_given():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), _ViewFlatten(), nn.Linear(4 * 30 * 30, 10))
    x = torch.rand(3, 3, 32, 32)
    y = torch.tensor([1, 2, 3])
    obj = Objective(model, F.cross_entropy, x, y)
    params = list(model.parameters())
    masks = [torch.arange(min(4, p.numel())) for p in params]
    dirs = CGE(mu=1e-3).directions(params, masks=masks)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ref = SequentialEvaluator().evaluate(obj, params, dirs)
    after_ref = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    got = FeatureReuseEvaluator().evaluate(obj, params, dirs)
    torch.testing.assert_close(got.perturbed, ref.perturbed, rtol=1e-6, atol=0)
    for k, v in model.state_dict().items():  # running statistics moved once, as SequentialEvaluator moves them
        torch.testing.assert_close(v, after_ref[k], rtol=1e-6, atol=1e-7)


def test_bench_resnet_runs_and_its_gradients_agree(capsys):
    """``python -m bench.resnet`` end to end at a tiny batch: the table, the extrapolation and the
    gradient check (every method against SequentialEvaluator on the sampled coordinates)."""
    import re

    from bench import resnet

    resnet.main(["--batch", "2", "--quick", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "FeatureReuseEvaluator / block restart for the whole step" in out and "b8.3" in out
    errors = dict(re.findall(r"(block restart|FeatureReuseEvaluator) ([0-9.e+-]+) \(\|g\|", out))
    assert float(errors["block restart"]) == 0.0  # the same arithmetic as SequentialEvaluator
    assert float(errors["FeatureReuseEvaluator"]) < 2e-3  # fp32 rounding of the loss / mu is ~5e-5 per evaluation


def test_the_cuda_path_is_exact_on_a_cpu(monkeypatch):
    """What a GPU runs — copies in the cached pass's NCHW layout (folded per-copy BatchNorm, no fused
    convolution) and cuts chosen by the CUDA cost table — equals SequentialEvaluator (no GPU in CI: run on a CPU)."""
    import zeroth.engine.feature_reuse as fr
    from zeroth.engine.stages import copies_layout

    monkeypatch.setattr(fr, "fast_layout", copies_layout)
    monkeypatch.setattr(fr, "costs_for", lambda device_type: COSTS["cuda"])
    model, obj, params, masks = _problem(_small, batch=2, per_param=2)
    est = CGE(mu=1e-4)
    _, ref, _ = estimate_gradient(obj, params, est, SequentialEvaluator(), masks=masks)
    _, got, _ = estimate_gradient(obj, params, est, FeatureReuseEvaluator(), masks=masks)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
