"""Lightning: ZOOptimizer under manual optimization (as is and with zo_training_step); automatic optimization
gets a BackwardInClosureError that says what to do."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

L = pytest.importorskip("lightning.pytorch", reason="the [lightning] extra (CI installs it)")

from zeroth import ZerothError, ZOOptimizer  # noqa: E402
from zeroth.integrations.lightning import zo_training_step  # noqa: E402


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


class Module(L.LightningModule):
    def __init__(self, how):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        self.how = how
        self.automatic_optimization = how == "automatic"
        self.losses = []

    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = ZOOptimizer(self.parameters(), lr=0.05, inplace=True, seed=0)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 10, 0.5)}

    def training_step(self, batch, batch_idx):
        if self.how == "automatic":
            return self.loss(batch)
        if self.how == "as-is":
            loss = self.optimizers().step(closure=lambda: self.loss(batch))
        else:
            loss = zo_training_step(self, lambda: self.loss(batch))
        self.losses.append(float(loss))
        return loss


def _fit(module, steps=48):
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, _data())
    return trainer


@pytest.mark.parametrize("how", ["as-is", "helper"])
def test_manual_optimization_trains_without_gradients(how):
    module = Module(how)
    trainer = _fit(module)
    assert trainer.global_step == 48
    assert sum(module.losses[-8:]) / 8 < sum(module.losses[:8]) / 8 - 0.05
    assert all(p.grad is None for p in module.parameters())


class LrTrace(L.LightningModule):
    """Records the learning rate after every batch; trained by SGD under automatic optimization
    (the reference) or by ZOOptimizer through zo_training_step, with the same scheduler config."""

    def __init__(self, how, interval, frequency, scheduler=True):
        super().__init__()
        self.scheduler = scheduler
        torch.manual_seed(0)
        self.net = nn.Linear(4, 2)
        self.how, self.interval, self.frequency = how, interval, frequency
        self.automatic_optimization = how == "automatic"
        self.lrs = []

    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        if self.how == "automatic":
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
        else:
            opt = ZOOptimizer(self.parameters(), lr=0.1, inplace=True, seed=0)
        sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
        config = {"scheduler": sched, "frequency": self.frequency}
        if self.interval is not None:  # None: Lightning's default ("epoch")
            config["interval"] = self.interval
        return {"optimizer": opt, "lr_scheduler": config}

    def training_step(self, batch, batch_idx):
        if self.how == "automatic":
            return self.loss(batch)
        return zo_training_step(self, lambda: self.loss(batch), scheduler=self.scheduler)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize(
    "interval, frequency",
    [(None, 1), ("epoch", 2), ("step", 1), ("step", 3)],
    ids=["default", "epoch-2", "step", "step-3"],
)
def test_helper_steps_the_scheduler_where_lightning_would(interval, frequency):
    # 4 batches an epoch, 11 steps: two epoch ends and a stop in the middle of the third epoch
    reference = LrTrace("automatic", interval, frequency)
    _fit(reference, steps=11)
    helper = LrTrace("helper", interval, frequency)
    _fit(helper, steps=11)
    assert len(helper.lrs) == 11
    assert helper.lrs == reference.lrs
    if interval is None:  # the review's case: StepLR(opt, 2) per epoch, not per batch
        assert helper.lrs[-1] == pytest.approx(0.05)


def test_helper_leaves_schedulers_alone_when_told():
    module = LrTrace("helper", "step", 1, scheduler=False)
    _fit(module, steps=5)
    assert module.lrs == [0.1] * 5


class Plateau(Module):
    def configure_optimizers(self):
        opt = ZOOptimizer(self.parameters(), lr=0.05, inplace=True, seed=0)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": sched}


def test_helper_declines_a_plateau_scheduler_before_stepping():
    module = Plateau("helper")
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match="scheduler=False"):
        _fit(module, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert module.losses == []


def test_automatic_optimization_says_what_to_do():
    with pytest.raises(ZerothError, match="automatic_optimization = False"):
        _fit(Module("automatic"), steps=2)


def test_lightnings_optimizer_wrapper_reads_groups_and_state():
    """``self.optimizers()`` is a LightningOptimizer: its ``param_groups``/``state``/``repr`` are the
    wrapped ZOOptimizer's (they raised KeyError: the properties read the wrapper's own __dict__)."""
    from lightning.pytorch.core.optimizer import LightningOptimizer

    model = nn.Linear(3, 1)
    opt = ZOOptimizer(model.parameters(), lr=0.05, estimator="spsa", seed=0)
    wrapped = LightningOptimizer(opt)
    assert wrapped.param_groups is opt.param_groups and wrapped.param_groups[0]["lr"] == 0.05
    assert wrapped.state is opt.state
    assert repr(wrapped).startswith("ZOOptimizer(")
