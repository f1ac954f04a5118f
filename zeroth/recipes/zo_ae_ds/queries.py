"""Query accounting: the black-box classifier is only ever called through :class:`QueryCounter`.

A model owner bills (and rate-limits) per image sent, so every image that reaches the
classifier — pseudo-labels, the ZO perturbations of each training step, the Monte-Carlo
samples of certification — is counted here, and the report's "queries" columns read it.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor, nn


class QueryCounter(nn.Module):
    """Wraps the classifier ``f``: counts calls and images (rows) and, by default, cuts autograd.

    Args:
        classifier: the owner's model, ``(B, *image) → logits (B, K)``.
        white_box: ``False`` (the default, the black-box setting) runs ``f`` under
            ``torch.no_grad()``, so no gradient can ever flow through it; ``True`` lets
            autograd through (only for the first-order reference rows FO-DS / FO-AE-DS).

    Raises:
        TypeError: ``classifier`` is already a QueryCounter or is not callable, or
            ``white_box`` is not a bool.
    """

    def __init__(self, classifier: nn.Module, *, white_box: bool = False):
        """Validate and start the counts at zero."""
        super().__init__()
        if isinstance(classifier, QueryCounter):
            raise TypeError("classifier is already a QueryCounter (queries would be counted twice)")
        if not callable(classifier):
            raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")
        if not isinstance(white_box, bool):
            raise TypeError(f"white_box must be a bool, got {type(white_box).__name__}")
        self.classifier = classifier
        self.white_box = white_box
        self.calls = 0
        self.queries = 0

    def forward(self, x: Tensor) -> Tensor:
        """Count the rows of ``x``, then query the classifier."""
        self.calls += 1
        self.queries += int(x.shape[0])
        if self.white_box:
            return self.classifier(x)
        with torch.no_grad():
            return self.classifier(x)

    def counts(self) -> Dict[str, int]:
        """``{"calls": ..., "queries": ...}`` so far (queries = images sent)."""
        return {"calls": self.calls, "queries": self.queries}

    def get_extra_state(self) -> Dict[str, Any]:
        """The counts travel in ``state_dict`` (checkpoints)."""
        return self.counts()

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        """Restore the counts from ``state_dict``."""
        self.calls, self.queries = int(state["calls"]), int(state["queries"])

    def extra_repr(self) -> str:
        """Mode and counts in ``repr``."""
        return f"white_box={self.white_box}, calls={self.calls}, queries={self.queries}"
