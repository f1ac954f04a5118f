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


def test_helper_steps_the_scheduler():
    module = Module("helper")
    _fit(module, steps=20)
    assert module.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)


def test_automatic_optimization_says_what_to_do():
    with pytest.raises(ZerothError, match="automatic_optimization = False"):
        _fit(Module("automatic"), steps=2)
