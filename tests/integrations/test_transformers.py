"""ZOTrainer: a transformers.Trainer with a ZO step — trains a tiny causal LM from a config, resumes
bit-identically, supports gradient accumulation, never perturbs frozen parameters, stores no gradient."""

import os

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the [hf] extra (CI installs it)")

from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments  # noqa: E402

from zeroth import SPSA, ZOOptimizer  # noqa: E402
from zeroth.integrations.transformers import ZOTrainer  # noqa: E402


def _model(dropout=0.1):
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(cfg)


def _data(n=32):
    """Offline task: arithmetic sequences mod 64 (next token = previous + 1 or + 2)."""
    rows = []
    for i in range(n):
        ids = (torch.arange(16) * (i % 2 + 1) + i) % 64
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


def _args(out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        max_steps=8,
        logging_steps=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        lr_scheduler_type="constant",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_zo_trainer_loss_falls_without_gradients(tmp_path):
    torch.set_num_threads(1)
    model, data = _model(), _data()
    trainer = ZOTrainer(
        model=model,
        args=_args(tmp_path, max_steps=40, weight_decay=0.01),
        train_dataset=data,
        eval_dataset=data,
        estimator=SPSA(mu=1e-3),
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.03
    assert isinstance(trainer.zo_optimizer, ZOOptimizer) and trainer.zo_optimizer.inplace
    assert all(p.grad is None for p in model.parameters())  # no autograd pass, nothing stored
    assert trainer.zo_optimizer.num_evaluations == 2 * 40
    groups = trainer.zo_optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # Trainer's decay / no-decay split


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    torch.set_num_threads(1)
    straight = _model()
    ZOTrainer(model=straight, args=_args(tmp_path / "a", max_steps=8), train_dataset=_data()).train()

    first = _model()
    args = _args(tmp_path / "b", max_steps=8, save_strategy="steps", save_steps=4)
    ZOTrainer(model=first, args=args, train_dataset=_data()).train()
    ckpt = os.path.join(str(tmp_path / "b"), "checkpoint-4")
    resumed = _model()
    with torch.no_grad():  # a different start, overwritten by the checkpoint
        for p in resumed.parameters():
            p.add_(1.0)
    ZOTrainer(model=resumed, args=args, train_dataset=_data()).train(resume_from_checkpoint=ckpt)
    for a, b, c in zip(straight.parameters(), first.parameters(), resumed.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_gradient_accumulation_is_the_step_on_the_mean_loss(tmp_path):
    torch.set_num_threads(1)
    whole, split = _model(dropout=0.0), _model(dropout=0.0)
    ZOTrainer(
        model=whole, args=_args(tmp_path / "a", per_device_train_batch_size=8, max_steps=4), train_dataset=_data()
    ).train()
    ZOTrainer(
        model=split,
        args=_args(tmp_path / "b", per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4),
        train_dataset=_data(),
    ).train()
    for a, b in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_frozen_parameters_are_never_perturbed(tmp_path):
    torch.set_num_threads(1)
    model = _model()
    for name, p in model.named_parameters():
        if not name.startswith("transformer.h.1."):
            p.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    seen = []
    hook = model.transformer.wte.register_forward_pre_hook(lambda m, a: seen.append(m.weight.detach().clone()))
    trainer = ZOTrainer(model=model, args=_args(tmp_path, max_steps=3), train_dataset=_data())
    trainer.train()
    hook.remove()
    assert all(torch.equal(frozen["transformer.wte.weight"], w) for w in seen)  # not even during evaluations
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    trained = {id(p) for g in trainer.zo_optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}


def test_refuses_a_first_order_optimizer(tmp_path):
    model = _model()
    with pytest.raises(TypeError, match="optimizers: ZOTrainer steps with a zeroth.ZOOptimizer"):
        ZOTrainer(
            model=model,
            args=_args(tmp_path),
            train_dataset=_data(),
            optimizers=(torch.optim.AdamW(model.parameters()), None),
        )


class _GradNorms(transformers.TrainerCallback):
    """The norm of all p.grad just before each optimizer step (None where no parameter has one)."""

    def __init__(self):
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() if grads else None)


@pytest.mark.parametrize("inplace", [True, False])
def test_grad_norm_is_logged_only_where_there_is_a_gradient(tmp_path, inplace):
    torch.set_num_threads(1)
    norms = _GradNorms()
    trainer = ZOTrainer(
        model=_model(),
        args=_args(tmp_path, max_steps=8, logging_steps=4, max_grad_norm=0.0),
        train_dataset=_data(),
        inplace=inplace,
        callbacks=[norms],
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [4, 8]
    if inplace:  # MeZO stores no gradient: no grad_norm (Trainer would log the norm of nothing, 0)
        assert norms.norms == [None] * 8
        assert all("grad_norm" not in entry for entry in logs)
    else:  # the norm of the ZO estimate in p.grad at the logged step
        assert all(n is not None and n > 0 for n in norms.norms)
        for entry in logs:
            assert entry["grad_norm"] == pytest.approx(norms.norms[entry["step"] - 1], rel=1e-5)
