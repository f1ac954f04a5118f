"""Training-loop integrations, each imported on first use so ``import zeroth`` needs neither library.

* :mod:`zeroth.integrations.transformers` — ``ZOTrainer``, a ``transformers.Trainer`` (extra ``[hf]``);
* :mod:`zeroth.integrations.lightning` — ``zo_training_step`` for Lightning's manual optimization
  (extra ``[lightning]``).
"""
