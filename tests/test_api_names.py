"""API hygiene: renamed names keep working for one release with a ZerothDeprecationWarning,
one failure vocabulary (scipy's raise/propagate/omit), one randomness rule (seed= or generator=),
and the extension points exported at the top level."""

import warnings

import pytest
import torch
from torch import nn

import zeroth
from zeroth import ZerothDeprecationWarning, ZerothWarning
from zeroth.blackbox import BlackBox, from_numpy

# old public name -> (module, new name)
RENAMED = [
    ("zeroth", "Sequential", "SequentialEvaluator"),
    ("zeroth", "Batched", "BatchedEvaluator"),
    ("zeroth", "FeatureReuse", "FeatureReuseEvaluator"),
    ("zeroth.engine", "Sequential", "SequentialEvaluator"),
    ("zeroth.engine", "Batched", "BatchedEvaluator"),
    ("zeroth.engine", "FeatureReuse", "FeatureReuseEvaluator"),
    ("zeroth.engine", "Auto", "AutoEvaluator"),
]


@pytest.mark.parametrize("module, old, new", RENAMED)
def test_old_evaluator_names_are_deprecated_aliases(module, old, new):
    mod = __import__(module, fromlist=["_"])
    with pytest.warns(ZerothDeprecationWarning, match=rf"{module}\.{old} is deprecated.*use {module}\.{new}"):
        obj = getattr(mod, old)
    assert obj is getattr(mod, new)
    assert old not in mod.__all__ and new in mod.__all__


def test_the_deprecation_warning_is_both_a_zeroth_and_a_python_deprecation_warning():
    assert issubclass(ZerothDeprecationWarning, ZerothWarning)
    assert issubclass(ZerothDeprecationWarning, DeprecationWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(DeprecationWarning):
            zeroth.Sequential  # noqa: B018


def test_unknown_attributes_still_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Auto'"):
        zeroth.Auto  # noqa: B018  (never a top-level name)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        zeroth.engine.Nope  # noqa: B018


def test_new_names_import_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from zeroth import BatchedEvaluator, FeatureReuseEvaluator, SequentialEvaluator  # noqa: F401
        from zeroth.engine import AutoEvaluator  # noqa: F401

        assert repr(zeroth.SequentialEvaluator()) == "SequentialEvaluator(restore='exact')"


@pytest.mark.parametrize(
    "name, where",
    [
        ("Directions", "zeroth.estimators.directions"),
        ("MaskRule", "zeroth.sparsity.masks"),
        ("Program", "zeroth.blackbox.program"),
        ("Losses", "zeroth.engine.base"),
        ("estimate_coefficients", "zeroth.optim"),
        ("sgd_step_", "zeroth.optim"),
    ],
)
def test_extension_points_are_exported_at_the_top_level(name, where):
    assert name in zeroth.__all__
    assert getattr(zeroth, name) is getattr(__import__(where, fromlist=["_"]), name)


# -- failure vocabulary ------------------------------------------------------------------


def _model_and_closure(bad):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(4, 3)

    def closure():
        loss = model(x).pow(2).mean()
        return loss * float("nan") if bad else loss

    return model, closure


def test_optimizer_nan_policy_is_a_deprecated_spelling_of_on_failure():
    model, closure = _model_and_closure(bad=True)
    with pytest.warns(ZerothDeprecationWarning, match=r"nan_policy='skip'.*on_failure='omit'"):
        opt = zeroth.ZOOptimizer(model.parameters(), lr=0.1, nan_policy="skip", seed=0)
    assert opt.on_failure == "omit"
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(zeroth.NonFiniteLossWarning):
        assert opt.step(closure) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.warns(ZerothDeprecationWarning):
        assert zeroth.ZOOptimizer(model.parameters(), nan_policy="raise").on_failure == "raise"


@pytest.mark.parametrize("old, new", [("nan", "propagate"), ("skip", "omit")])
def test_program_on_failure_old_spellings_are_deprecated(old, new):
    with pytest.warns(ZerothDeprecationWarning, match=rf"on_failure='{old}'.*on_failure='{new}'"):
        prog = from_numpy(lambda a: a, on_failure=old)
    assert prog.on_failure == new


def test_one_vocabulary_for_failure_policies():
    from zeroth.blackbox.program import FAILURE_POLICIES

    assert FAILURE_POLICIES == ("raise", "propagate", "omit")  # scipy's nan_policy words
    with pytest.raises(ValueError, match="Invalid on_failure value: 'ignore'"):
        from_numpy(lambda a: a, on_failure="ignore")


# -- randomness: seed= or generator= -----------------------------------------------------


def _two_steps(**kw):
    model, closure = _model_and_closure(bad=False)
    opt = zeroth.ZOOptimizer(model.parameters(), lr=0.1, estimator="rge", **kw)
    for _ in range(2):
        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()], opt


def test_optimizer_generator_is_used_as_given_and_equals_the_same_seed():
    g = torch.Generator().manual_seed(7)
    by_gen, opt = _two_steps(generator=g)
    by_seed, _ = _two_steps(seed=7)
    assert opt.generator is g
    assert all(torch.equal(a, b) for a, b in zip(by_gen, by_seed))
    other, _ = _two_steps(seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(by_gen, other))


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(seed=1, generator=torch.Generator()), ValueError, "either seed or generator"),
        (dict(seed=1.5), TypeError, "seed must be an int"),
        (dict(seed=True), TypeError, "seed must be an int"),
        (dict(generator="g"), TypeError, "generator must be a torch.Generator"),
    ],
)
def test_objects_with_a_random_stream_share_one_rule(kw, err, match):
    model, _ = _model_and_closure(bad=False)
    with pytest.raises(err, match=match):
        zeroth.ZOOptimizer(model.parameters(), **kw)
    with pytest.raises(err, match=match):
        BlackBox(lambda x: x, **kw)
