"""The conformance suite: every fast path agrees with SequentialEvaluator in float64 or declines, as the table says.

``EXPECTED[name] = (FeatureReuseEvaluator computes it, BatchedEvaluator computes it)``. A fast path that declines
where the table says it computes (a regression), or computes where the table says it declines
(the table is stale), fails — nothing is skipped. ``auto`` must always agree with SequentialEvaluator and
take the first path that computes the case: FeatureReuseEvaluator for CGE, then BatchedEvaluator, then
SequentialEvaluator.
"""

import pytest

from zeroth.testing import ESTIMATORS, ZOO, check

EXPECTED = {
    "mlp": (True, True),
    "mlp_inplace_relu": (True, True),
    "shared_module_twice": (False, True),  # one Linear used twice
    "tied_two_modules": (False, True),  # two Linears, one weight
    "tied_lm_head": (False, True),  # embedding = LM head (not a chain either)
    "ce_probability_targets": (True, True),  # per-copy loss, not the closed form
    "ce_ignore_index": (True, True),
    "ce_label_smoothing": (True, True),
    "ce_class_weights": (True, True),
    "ce_sum": (True, True),
    "mse": (True, True),
    "l1": (True, True),
    "bce_with_logits": (True, True),
    "nll_log_softmax": (True, True),
    "functional_dropout": (False, True),  # vmap(randomness="same") draws the unbatched mask
    "noise_injection": (False, True),
    "rrelu": (False, False),  # vmap has no rrelu rule
    "stochastic_depth": (False, True),
    "dropout_module_train": (False, True),
    "layernorm": (True, True),
    "groupnorm": (True, True),
    "instancenorm": (True, True),
    "batchnorm_train": (True, True),
    "batchnorm_eval": (True, True),
    "batchnorm1d_mlp": (True, True),
    "multihead_attention": (False, True),  # not a known layer
    "transformer_encoder_layer": (False, True),
    "embedding": (True, True),
    "lstm": (False, False),  # vmap has no lstm rule
    "gru": (False, False),
    "conv1d": (True, True),
    "conv3d": (True, True),
    "conv_transpose2d": (True, True),
    "grouped_conv": (True, True),
    "depthwise_conv": (True, True),
    "dilated_conv": (True, True),
    "pooling_variants": (True, True),
    "upsample": (True, True),
    "channels_last": (True, True),
    "frozen_parameters": (True, True),
    "spectral_norm": (False, False),  # the forward moves buffer _u
    "weight_norm": (False, True),  # parametrized: FeatureReuseEvaluator declines all parametrizations
    "softmax_over_batch": (False, True),  # mixes batch rows
    "overridden_forward": (False, True),  # a Linear subclass with its own forward
    "item_in_forward": (False, False),  # .item() and a data-dependent branch
    "residual_blocks": (True, True),
}


def test_the_table_covers_the_zoo():
    assert set(EXPECTED) == set(ZOO)
    assert len(ZOO) >= 30


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("name", list(ZOO))
def test_fast_paths_are_exact_or_decline(name, estimator):
    fr, batched = EXPECTED[name]
    fr = fr and estimator != "rge"  # difference propagation needs coordinates
    out = check(name, estimator)
    assert out["FeatureReuseEvaluator"].status == ("exact" if fr else "declined"), (name, out["FeatureReuseEvaluator"])
    assert out["BatchedEvaluator"].status == ("exact" if batched else "declined"), (name, out["BatchedEvaluator"])
    assert out["auto"].status == "exact", (name, out["auto"])
    assert out["auto"].path == (
        "FeatureReuseEvaluator" if fr else "BatchedEvaluator" if batched else "SequentialEvaluator"
    )
    for label in ("FeatureReuseEvaluator", "BatchedEvaluator"):
        assert out[label].status != "declined" or out[label].reason, f"{label} declined {name} without a reason"
