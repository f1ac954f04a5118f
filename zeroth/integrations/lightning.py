"""Lightning: a :class:`~zeroth.ZOOptimizer` under manual optimization, and a one-line training step.

Install with ``pip install 'zeroth-optim[lightning]'``. A ZO step needs the *loss* only, so it
runs under Lightning's manual optimization; ``optimizer.step(closure=...)`` works as it is::

    class LitModel(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False          # the closure must not call backward
            self.net = ...

        def configure_optimizers(self):
            return ZOOptimizer(self.parameters(), lr=1e-3, inplace=True)   # MeZO; schedulers as usual

        def training_step(self, batch, batch_idx):
            return zo_training_step(self, lambda: self.loss(batch))        # step, scheduler, log

Lightning steps no scheduler under manual optimization; :func:`zo_training_step` steps the
optimizer's schedulers where automatic optimization would, by their ``interval`` ("epoch" by
default, or "step") and ``frequency``. ``ReduceLROnPlateau`` is declined (step it yourself after
validation).

Lightning's automatic optimization runs ``backward()`` inside the closure it passes to
``step``; ZOOptimizer raises :class:`~zeroth.optim.BackwardInClosureError` there, naming the
two lines above. (Lightning calls ``on_before_optimizer_step`` after each closure call, so
once per loss evaluation: twice per SPSA step.)
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .._optional import require

require("lightning.pytorch", "lightning")


def zo_training_step(
    module: Any,
    closure: Callable[[], torch.Tensor],
    *,
    optimizer_idx: int = 0,
    scheduler: bool = True,
    log: Optional[str] = "train_loss",
    **log_kwargs: Any,
) -> Optional[torch.Tensor]:
    """One ZO step inside ``training_step`` (manual optimization): ``step(closure=...)``, scheduler, log.

    Under manual optimization Lightning steps no learning-rate scheduler; its manual-optimization
    guide has ``training_step`` step them at the right boundary, and so does this function, by the
    scheduler config ``configure_optimizers`` returned (``interval``, ``frequency``), exactly where
    automatic optimization would: an ``interval="step"`` scheduler after every ``frequency``-th batch
    of the epoch (``(batch_idx + 1) % frequency == 0``), an ``interval="epoch"`` one (Lightning's
    default) after the epoch's last batch when ``(current_epoch + 1) % frequency == 0``. Each goes
    through ``module.lr_scheduler_step`` as in automatic optimization, so an override of that hook
    applies.

    Args:
        module: the ``LightningModule`` (with ``automatic_optimization = False``).
        closure: returns the scalar loss of the current batch (no ``backward``).
        optimizer_idx: which of ``module.optimizers()`` to step.
        scheduler: step the schedulers of that optimizer (those of ``trainer.lr_scheduler_configs``
            whose ``scheduler.optimizer`` it is) as described above; False leaves every scheduler
            to the caller.
        log: name under which the loss is logged with ``module.log`` (None: not logged);
            ``log_kwargs`` go to ``module.log`` (``prog_bar=True`` ...).

    Returns:
        The loss at the current point (None if ``on_failure="omit"`` left the step out).

    Raises:
        RuntimeError: the module uses automatic optimization.
        ValueError: ``scheduler=True`` and a ``ReduceLROnPlateau`` scheduler belongs to the
            optimizer: Lightning steps those after validation with a monitored metric, which
            ``training_step`` cannot see; raised before anything changes. Pass ``scheduler=False``
            and step it in ``on_validation_epoch_end`` (``sch.step(self.trainer.callback_metrics[...])``).
        zeroth.optim.BackwardInClosureError: the closure called ``backward()``.
    """
    if module.automatic_optimization:
        raise RuntimeError(
            "zo_training_step runs under manual optimization: set self.automatic_optimization = False "
            "in the LightningModule's __init__"
        )
    opts = module.optimizers()
    opt = opts[optimizer_idx] if isinstance(opts, (list, tuple)) else opts
    configs = _due_scheduler_configs(module.trainer, getattr(opt, "optimizer", opt)) if scheduler else []
    loss = opt.step(closure=closure)
    for config in configs:
        module.lr_scheduler_step(config.scheduler, None)
    if log is not None and loss is not None:
        module.log(log, loss.detach().float(), **log_kwargs)
    return loss


def _due_scheduler_configs(trainer: Any, optimizer: Any) -> list:
    """The scheduler configs of ``optimizer`` that automatic optimization would step after this batch.

    Mirrors ``lightning.pytorch.loops.training_epoch_loop._TrainingEpochLoop._update_learning_rates``
    (batch and epoch counted from 1, an epoch's end being its last ready batch).

    Raises:
        ValueError: a ``ReduceLROnPlateau`` config belongs to ``optimizer``.
    """
    mine = [c for c in trainer.lr_scheduler_configs if getattr(c.scheduler, "optimizer", None) is optimizer]
    for config in mine:
        # under manual optimization Lightning drops the config's reduce_on_plateau/monitor keys
        if config.reduce_on_plateau or isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError(
                "zo_training_step cannot step a ReduceLROnPlateau scheduler: Lightning steps it after "
                "validation with the monitored metric. Pass scheduler=False and call "
                "sch.step(self.trainer.callback_metrics[...]) in on_validation_epoch_end or on_train_epoch_end"
            )
    epoch_loop = trainer.fit_loop.epoch_loop
    progress = epoch_loop.batch_progress
    epoch_ends = progress.current.ready == trainer.num_training_batches or progress.is_last_batch
    due = []
    for config in mine:
        if config.interval == "step":
            count = epoch_loop.batch_idx + 1
        elif config.interval == "epoch" and epoch_ends:
            count = trainer.current_epoch + 1
        else:
            continue
        if count % config.frequency == 0:
            due.append(config)
    return due
