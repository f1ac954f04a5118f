"""``ZOTrainer``: Hugging Face's ``Trainer`` with a zeroth-order step (MeZO by default) — no backward pass.

Install with ``pip install 'zeroth-optim[hf]'``. Use it exactly like ``Trainer``::

    from zeroth.integrations.transformers import ZOTrainer
    trainer = ZOTrainer(model=model, args=TrainingArguments(..., learning_rate=1e-6),
                        train_dataset=train, eval_dataset=val, data_collator=collator)
    trainer.train()                       # or trainer.train(resume_from_checkpoint=True)

What changes against ``Trainer``:

* the optimizer is a :class:`~zeroth.ZOOptimizer` (``estimator=`` default ``SPSA(mu=1e-3)``,
  ``inplace=`` default True: MeZO's memory-lean step with exact restores), built from
  ``TrainingArguments``: ``learning_rate``, ``weight_decay`` on the same decay / no-decay split
  as ``Trainer`` (biases and norms without decay), the learning-rate schedule
  (``lr_scheduler_type``, warmup) by ``Trainer``'s own scheduler, ``seed`` for zeroth's
  generator. Only parameters with ``requires_grad=True`` are perturbed and updated (a frozen
  base with LoRA adapters perturbs only the adapters);
* ``training_step`` never calls ``backward``: it runs the ZO estimate (two forward passes
  under ``torch.no_grad()`` for SPSA) and ``Trainer`` then calls ``optimizer.step()``, which
  applies it. No gradient is stored with ``inplace=True``;
* ``gradient_accumulation_steps = k`` is supported: the k micro-batches of one update are
  kept (inputs only) and every perturbed point is evaluated on all of them — the step is the
  ZO step on the mean of the k micro-batch losses (each a mean over its own tokens);
* ``max_grad_norm`` clips ``p.grad`` with ``inplace=False``; with ``inplace=True`` there is no
  gradient to clip and it has no effect;
* the ``grad_norm`` that ``Trainer`` logs is the norm of the ZO estimate in ``p.grad`` with
  ``inplace=False``; with ``inplace=True`` there is none and ``grad_norm`` is left out of the
  logs (``Trainer`` logs it only when it is not None; it would otherwise log the norm of the
  absent gradients, 0).

Evaluation, logging, saving and ``resume_from_checkpoint`` are ``Trainer``'s own. The
optimizer's ``state_dict`` carries zeroth's generator, so a resumed run continues
bit-identically (same seed, same data order, same model and scheduler state).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union, cast

import torch
from torch import nn

from .._optional import require

require("transformers", "hf")

from transformers import Trainer  # noqa: E402

from ..estimators import SPSA, Estimator  # noqa: E402
from ..optim import ZOOptimizer  # noqa: E402


class ZOTrainer(Trainer):
    """A ``transformers.Trainer`` whose optimizer step is zeroth-order (see the module docstring).

    Args:
        args, kwargs: as for ``transformers.Trainer`` (``model``, ``args``, ``train_dataset``,
            ``eval_dataset``, ``data_collator``, ``callbacks`` ...). ``optimizers=(opt, sched)``
            may pass a ready :class:`~zeroth.ZOOptimizer`; any other optimizer is refused.
        estimator: zeroth estimator (name or instance); default ``SPSA(mu=1e-3)`` (MeZO).
        inplace: MeZO's in-place step (default True); False stores ``p.grad`` and allows other
            ``base`` rules.
        base: base rule of the ZOOptimizer (default ``"sgd"``, required with ``inplace=True``).
        zo_seed: seed of zeroth's generator (default: ``args.seed``).
        zo_options: further keyword arguments for :class:`~zeroth.ZOOptimizer` (``evaluator``,
            ``sparsity``, ``on_failure`` ...).

    Raises:
        TypeError: ``optimizers`` holds an optimizer that is not a :class:`~zeroth.ZOOptimizer`.

    References:
        S. Malladi et al., "Fine-tuning language models with just forward passes", NeurIPS 2023,
        arXiv:2305.17333 (MeZO's Trainer integration).
    """

    def __init__(
        self,
        *args: Any,
        estimator: Union[str, Estimator, None] = None,
        inplace: bool = True,
        base: str = "sgd",
        zo_seed: Optional[int] = None,
        zo_options: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ):
        optimizers = kwargs.get("optimizers")
        if optimizers is not None and optimizers[0] is not None and not isinstance(optimizers[0], ZOOptimizer):
            raise TypeError(
                f"optimizers: ZOTrainer steps with a zeroth.ZOOptimizer, got {type(optimizers[0]).__name__}; "
                "pass optimizers=(None, None) to build one from TrainingArguments"
            )
        self.zo_estimator = estimator if estimator is not None else SPSA(mu=1e-3)
        self.zo_inplace = inplace
        self.zo_base = base
        self.zo_seed = zo_seed
        self.zo_options = dict(zo_options or {})
        self._zo_batches: List[Dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    # -- the optimizer ---------------------------------------------------------------------
    def create_optimizer(self, model: Optional[nn.Module] = None) -> torch.optim.Optimizer:
        """A :class:`~zeroth.ZOOptimizer` over the trainable parameters, decay / no-decay groups as ``Trainer``.

        Built once (``self.optimizer``); later calls return it.

        Raises:
            ValueError: no model (neither ``model`` nor ``self.model``), or no parameter has
                ``requires_grad=True``; the ZOOptimizer's own errors for invalid ``zo_options``.
        """
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if opt_model is None:
                raise ValueError("model: the trainer has no model to optimize (pass model= or model_init=)")
            decay = set(self.get_decay_parameter_names(opt_model))
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
            groups = [
                {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
            ]
            groups = [g for g in groups if g["params"]]
            if not groups:
                raise ValueError("model: no parameter has requires_grad=True, nothing to train")
            self.optimizer = ZOOptimizer(
                groups,
                lr=self.args.learning_rate,
                estimator=self.zo_estimator,
                inplace=self.zo_inplace,
                base=self.zo_base,
                seed=self.zo_seed if self.zo_seed is not None else self.args.seed,
                **self.zo_options,
            )
        return self.optimizer

    @property
    def zo_optimizer(self) -> ZOOptimizer:
        """The :class:`~zeroth.ZOOptimizer` (unwrapped from accelerate's wrapper).

        Raises:
            TypeError: the trainer's optimizer is not (a wrapper of) a ZOOptimizer.
        """
        opt = self.optimizer
        while not isinstance(opt, ZOOptimizer):
            inner = getattr(opt, "optimizer", None)
            if inner is None:
                raise TypeError(f"ZOTrainer: the optimizer is {type(self.optimizer).__name__}, not a ZOOptimizer")
            opt = inner
        return opt

    # -- logging -------------------------------------------------------------------------------
    def _maybe_log_save_evaluate(self, tr_loss: torch.Tensor, grad_norm: Any, *args: Any, **kwargs: Any) -> Any:
        """``Trainer``'s logging, evaluation and saving, with ``grad_norm=None`` when the step stores no gradient.

        ``Trainer`` computes ``grad_norm`` over ``p.grad`` (0 when every ``p.grad`` is None) and logs
        it unless it is None; MeZO's in-place step (``inplace=True``) stores no gradient, so there
        is no norm to log.
        """
        if self.zo_optimizer.inplace:
            grad_norm = None
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    # -- the step ----------------------------------------------------------------------------
    def training_step(
        self, model: nn.Module, inputs: Dict[str, Any], num_items_in_batch: Optional[Union[torch.Tensor, int]] = None
    ) -> torch.Tensor:
        """Keep the micro-batch; on the last micro-batch of an update, estimate the ZO gradient on all of them.

        Returns this micro-batch's share of the loss as ``Trainer`` expects (the sum over the
        micro-batches of one update is the update's mean loss): 0 until the last one.
        """
        model.train()
        self._zo_batches.append(self._prepare_inputs(inputs))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        batches, self._zo_batches = self._zo_batches, []

        def closure() -> torch.Tensor:
            total: Optional[torch.Tensor] = None
            for batch in batches:
                # without return_outputs=True, compute_loss returns the loss tensor alone
                loss = cast(torch.Tensor, self.compute_loss(model, batch))
                total = loss if total is None else total + loss
            if total is None:  # never: batches holds at least this micro-batch
                raise RuntimeError("ZOTrainer: no micro-batch to compute the loss on")
            return total / len(batches)

        loss = self.zo_optimizer.estimate(closure)
        if loss is None:  # on_failure="omit" left the step out
            return torch.tensor(float("nan"), device=self.args.device)
        return loss.detach().to(device=self.args.device, dtype=torch.float32)
