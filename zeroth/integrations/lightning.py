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

    Args:
        module: the ``LightningModule`` (with ``automatic_optimization = False``).
        closure: returns the scalar loss of the current batch (no ``backward``).
        optimizer_idx: which of ``module.optimizers()`` to step.
        scheduler: step the matching ``lr_scheduler`` once per call (Lightning does not in
            manual optimization) when ``configure_optimizers`` returned one.
        log: name under which the loss is logged with ``module.log`` (None: not logged);
            ``log_kwargs`` go to ``module.log`` (``prog_bar=True`` ...).

    Returns:
        The loss at the current point (None if ``on_failure="omit"`` left the step out).

    Raises:
        RuntimeError: the module uses automatic optimization.
        zeroth.optim.BackwardInClosureError: the closure called ``backward()``.
    """
    if module.automatic_optimization:
        raise RuntimeError(
            "zo_training_step runs under manual optimization: set self.automatic_optimization = False "
            "in the LightningModule's __init__"
        )
    opts = module.optimizers()
    opt = opts[optimizer_idx] if isinstance(opts, (list, tuple)) else opts
    loss = opt.step(closure=closure)
    if scheduler:
        scheds = module.lr_schedulers()
        if scheds is not None:
            sched = scheds[optimizer_idx] if isinstance(scheds, (list, tuple)) else scheds
            sched.step()
    if log is not None and loss is not None:
        module.log(log, loss.detach().float(), **log_kwargs)
    return loss
