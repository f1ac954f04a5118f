"""Recipes: complete, tested workflows built only from zeroth's parts.

* :mod:`zeroth.recipes.zo_ae_ds` — ZO-AE-DS (Zhang et al., ICLR 2022): certified black-box
  defense of a query-only classifier by denoised smoothing, trained through ``BlackBox``.
"""
