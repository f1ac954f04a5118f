"""certify / predict / certified_accuracy against a linear classifier, whose smoothed probability is closed-form.

For h(x) = [w·x + b > 0] and δ ~ N(0, σ²I): P(h(x + δ) = 1) = Φ(s / (σ‖w‖)) with s = w·x + b,
so the exact certified radius σΦ⁻¹(pA) is the distance |s| / ‖w‖ to the hyperplane.
"""

import math

import pytest
import torch
from scipy import stats

from zeroth.recipes.zo_ae_ds import (
    ABSTAIN,
    Certificate,
    certified_accuracy,
    certify,
    certify_dataset,
    lower_confidence_bound,
    predict,
)

SIGMA = 0.25
W = torch.tensor([3.0, -4.0, 0.0, 0.0])  # ‖w‖ = 5
B = 0.5


def linear(x):
    """Two-class logits (−s, s) with s = w·x + b: class 1 on the positive side."""
    s = x.reshape(x.shape[0], -1) @ W.to(x.dtype) + B
    return torch.stack([-s, s], -1)


def at_distance(d):
    """A point whose signed distance to the hyperplane is ``d``."""
    return (d - B / W.norm()) * W / W.norm()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("distance", [0.05, 0.2, 0.4, -0.3])
def test_radius_is_within_clopper_pearson_slack_of_the_exact_one(distance):
    n, alpha = 10_000, 0.001
    cert = certify(linear, at_distance(distance), SIGMA, n0=100, n=n, alpha=alpha, generator=gen())
    p_true = stats.norm.cdf(abs(distance) / SIGMA)
    assert cert.prediction == (1 if distance > 0 else 0)
    assert cert.radius <= abs(distance)  # sound (this fixed seed is not among the α failures)
    slack = 4 * math.sqrt(n * p_true * (1 - p_true))  # counts this far below n·pA are a 4-sd event
    worst = SIGMA * stats.norm.ppf(stats.beta.ppf(alpha, n * p_true - slack, n - (n * p_true - slack) + 1))
    assert cert.radius >= worst
    # the radius is exactly σ·Φ⁻¹ of the Clopper–Pearson bound of the observed count
    assert cert.p_lower == pytest.approx(stats.beta.ppf(alpha, cert.count, n - cert.count + 1), rel=1e-9)
    assert cert.radius == pytest.approx(SIGMA * stats.norm.ppf(cert.p_lower), rel=1e-12)


def test_abstains_on_the_decision_boundary_and_predict_too():
    x = at_distance(0.0)
    cert = certify(linear, x, SIGMA, n=2000, generator=gen())
    assert cert.prediction == ABSTAIN and cert.radius == 0.0 and cert.p_lower < 0.5
    assert predict(linear, x, SIGMA, n=2000, generator=gen()) == ABSTAIN
    assert predict(linear, at_distance(0.3), SIGMA, n=2000, generator=gen()) == 1


def test_all_votes_give_the_largest_radius_n_allows():
    n, alpha = 1000, 0.001
    cert = certify(linear, at_distance(5.0), SIGMA, n=n, alpha=alpha, generator=gen())
    assert cert.count == n
    assert cert.radius == pytest.approx(SIGMA * stats.norm.ppf(alpha ** (1 / n)), rel=1e-9)


def test_fixed_seeds_make_certificates_deterministic():
    x = at_distance(0.1)
    a = certify(linear, x, SIGMA, n=3000, batch=700, generator=gen(7))
    b = certify(linear, x, SIGMA, n=3000, batch=700, generator=gen(7))
    c = certify(linear, x, SIGMA, n=3000, batch=700, generator=gen(8))
    assert a == b and a.count != c.count


def test_lower_confidence_bound_is_the_exact_one_sided_bound():
    for count, n in [(0, 10), (3, 10), (990, 1000), (1000, 1000)]:
        expected = 0.0 if count == 0 else stats.beta.ppf(0.01, count, n - count + 1)
        assert lower_confidence_bound(count, n, 0.01) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_certified_accuracy_counts_correct_predictions_with_enough_radius():
    certs = [
        Certificate(1, 0.3, 0.9, 90, 100, label=1),
        Certificate(2, 0.5, 0.9, 90, 100, label=1),
        Certificate(ABSTAIN, 0.0, 0.4, 40, 100, label=0),
        Certificate(0, 0.1, 0.7, 70, 100, label=0),
    ]
    assert certified_accuracy(certs, [0.0, 0.1, 0.2, 0.3, 0.4]) == [0.5, 0.5, 0.25, 0.25, 0.0]


def test_certify_dataset_labels_each_row_and_restores_mode():
    model = torch.nn.Linear(4, 2)
    model.train()
    xs = torch.stack([at_distance(0.4), at_distance(-0.4)])
    with torch.no_grad():
        model.weight.copy_(torch.stack([-W, W]))
        model.bias.copy_(torch.tensor([-B, B]))
    certs = certify_dataset(model, xs, torch.tensor([1, 0]), SIGMA, n=500, generator=gen(), progress=False)
    assert [c.label for c in certs] == [1, 0] and all(c.correct for c in certs)
    assert model.training


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
        (dict(n0=0), "n0"),
        (dict(n=2.5), "n"),
        (dict(alpha=0.5), "alpha"),
        (dict(alpha=-1e-3), "alpha"),
        (dict(batch=0), "batch"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = dict(sigma=SIGMA, n0=10, n=10, alpha=0.001, batch=10) | kwargs
    with pytest.raises(ValueError, match=name):
        certify(linear, at_distance(0.1), generator=gen(), **args)


def test_bad_inputs_and_radii_are_rejected():
    with pytest.raises(TypeError, match="x must be a floating-point"):
        certify(linear, torch.zeros(4, dtype=torch.long), SIGMA)
    with pytest.raises(ValueError, match="radii"):
        certified_accuracy([Certificate(0, 0.1, 0.7, 7, 10, 0)], [-0.1])
    with pytest.raises(ValueError, match="results"):
        certified_accuracy([], [0.0])
    with pytest.raises(ValueError, match="no label"):
        _ = Certificate(0, 0.1, 0.7, 7, 10).correct
