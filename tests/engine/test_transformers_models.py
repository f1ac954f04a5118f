"""Hugging Face models built from configs (random weights, no download) under the default evaluator.

A model left in train mode draws dropout masks inside its forward; tied embeddings/LM heads share
one parameter. The default evaluator must agree with SequentialEvaluator on them (or run SequentialEvaluator).
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the `hf` extra (installed by `make test`)

from zeroth import CGE, RGE, SPSA, Objective, estimate_gradient  # noqa: E402
from zeroth.engine import AutoEvaluator, SequentialEvaluator  # noqa: E402


def _gpt2(train: bool):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=32, n_positions=16, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1
    )
    model = transformers.GPT2LMHeadModel(cfg).double()
    model.train(train)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("estimator", [RGE(q=2, mu=1e-4), SPSA(mu=1e-4)], ids=repr)
@pytest.mark.parametrize("form", ["closure", "objective"])
def test_default_evaluator_agrees_with_sequential_on_gpt2(train, estimator, form):
    model, batch = _gpt2(train)
    params = [p for p in model.parameters() if p.requires_grad]
    obj = (lambda: model(**batch).loss) if form == "closure" else Objective(model, None, batch)
    rng = torch.get_rng_state()
    _, ref, _ = estimate_gradient(
        obj, params, estimator, SequentialEvaluator(), generator=torch.Generator().manual_seed(2)
    )
    torch.set_rng_state(rng)
    auto = AutoEvaluator()
    _, got, _ = estimate_gradient(obj, params, estimator, auto, generator=torch.Generator().manual_seed(2))
    for a, b in zip(got, ref):
        assert torch.equal(a, b)  # the same evaluator (SequentialEvaluator) in the end: bitwise
    assert isinstance(auto.last, SequentialEvaluator)
    assert ("a plain closure" if form == "closure" else "inputs are a dict") in auto.explain()


@pytest.mark.parametrize("train", [True, False])
def test_a_tensor_objective_on_gpt2_is_exact_whichever_path_runs(train):
    model, batch = _gpt2(train)
    params = [p for p in model.parameters() if p.requires_grad]
    ids = batch["input_ids"]

    def loss_fn(out, targets):
        return torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), targets.reshape(-1))

    obj = Objective(model, loss_fn, ids, ids)
    rng = torch.get_rng_state()
    _, ref, _ = estimate_gradient(
        obj, params, RGE(q=3, mu=1e-4), SequentialEvaluator(), generator=torch.Generator().manual_seed(2)
    )
    torch.set_rng_state(rng)
    auto = AutoEvaluator()
    _, got, _ = estimate_gradient(obj, params, RGE(q=3, mu=1e-4), auto, generator=torch.Generator().manual_seed(2))
    scale = max(float(g.abs().max()) for g in ref)
    assert max(float((a - b).abs().max()) for a, b in zip(got, ref)) <= 1e-6 * scale, auto.explain()


def test_cge_on_a_sample_of_gpt2_coordinates_in_train_mode():
    model, batch = _gpt2(True)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(3)
    masks = [torch.randperm(p.numel(), generator=g)[:3] for p in params]
    obj = Objective(model, None, batch)
    rng = torch.get_rng_state()
    _, ref, _ = estimate_gradient(obj, params, CGE(mu=1e-4), SequentialEvaluator(), masks=masks)
    torch.set_rng_state(rng)
    _, got, _ = estimate_gradient(obj, params, CGE(mu=1e-4), AutoEvaluator(), masks=masks)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
