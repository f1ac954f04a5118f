"""Sparsity-induced ZO training (DeepZero): ZO-GraSP layer-wise ratios and coordinate masks.

A *ratio* is always the fraction of a layer's weights that is **kept** (estimated); a
*sparsity* is the global fraction pruned. See :mod:`zeroth.sparsity.ratios` for ZO-GraSP and
:mod:`zeroth.sparsity.masks` for the mask rules and how the base rule treats unselected
coordinates.
"""

from .masks import DynamicMask, FixedMask, MaskRule, count_selected
from .ratios import (
    balanced_batch,
    grasp_ratios,
    grasp_scores,
    kept_fraction,
    load_ratios,
    prunable_weights,
    ratios_from_scores,
    save_ratios,
    uniform_ratios,
)

__all__ = [
    "DynamicMask",
    "FixedMask",
    "MaskRule",
    "balanced_batch",
    "count_selected",
    "grasp_ratios",
    "grasp_scores",
    "kept_fraction",
    "load_ratios",
    "prunable_weights",
    "ratios_from_scores",
    "save_ratios",
    "uniform_ratios",
]
