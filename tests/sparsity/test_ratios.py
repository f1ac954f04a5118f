"""ZO-GraSP ratios: determinism, global sparsity, agreement with autograd GraSP, the JSON file."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from zeroth import Objective
from zeroth.data import load_digits
from zeroth.models import DigitsCNN
from zeroth.sparsity import (
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

from ..conftest import cosine


def _net():
    """Five prunable layers of very different sizes, BN and biases in between, float64."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(128, 32),
        nn.Tanh(),
        nn.Linear(32, 16),
        nn.Tanh(),
        nn.Linear(16, 10),
    ).double()


@pytest.fixture(scope="module")
def digits():
    return load_digits(dtype=torch.float64)


def _objective(model, digits, seed=0):
    x, y = balanced_batch(digits.x_train, digits.y_train, 25, torch.Generator().manual_seed(seed))
    return Objective(model, F.cross_entropy, x, y)


def _autograd_scores(model, objective):
    """Exact GraSP scores −θ ⊙ Hg with Hg by double backward over all parameters."""
    params = list(model.parameters())
    grads = torch.autograd.grad(objective(), params, create_graph=True)
    hg = torch.autograd.grad(grads, params, grad_outputs=[g.detach() for g in grads])
    by_id = {id(p): h for p, h in zip(params, hg)}
    return {n: -(w.detach() * by_id[id(w)]) for n, w in prunable_weights(model).items()}


def test_prunable_weights_are_linear_and_conv_weights_only():
    model = _net()
    assert list(prunable_weights(model)) == ["0.weight", "3.weight", "6.weight", "8.weight", "10.weight"]


def test_ratios_are_deterministic_under_a_seed_and_leave_the_model_untouched(digits):
    torch.manual_seed(0)
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = _objective(model, digits)
    a = grasp_ratios(model, obj, 0.9, q=16, generator=torch.Generator().manual_seed(3))
    b = grasp_ratios(model, obj, 0.9, q=16, generator=torch.Generator().manual_seed(3))
    c = grasp_ratios(model, obj, 0.9, q=16, generator=torch.Generator().manual_seed(4))
    assert a == b
    assert a != c
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # parameters and BN running statistics


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_kept_fraction_matches_the_requested_global_sparsity(digits, sparsity):
    torch.manual_seed(1)
    model = DigitsCNN().double()
    ratios = grasp_ratios(model, _objective(model, digits), sparsity, q=8, generator=torch.Generator().manual_seed(0))
    assert set(ratios) == set(prunable_weights(model))
    assert all(0.0 <= r <= 1.0 for r in ratios.values())
    assert abs(kept_fraction(ratios, model) - (1 - sparsity)) < 0.01
    assert len(set(ratios.values())) > 1  # layer-wise, not uniform


def test_zo_grasp_prefers_the_layers_autograd_grasp_prefers(digits):
    torch.manual_seed(0)
    model = _net()
    obj = _objective(model, digits)
    exact = _autograd_scores(model, obj)
    zo = grasp_scores(model, obj, q=192, mu=5e-3, generator=torch.Generator().manual_seed(1))
    # the ZO Hessian-vector product points the right way: noise alone gives |cos| ≈ 1/sqrt(d) ≈ 0.015
    assert cosine(list(zo.values()), list(exact.values())) > 0.1
    for sparsity in (0.8, 0.9):
        rho = spearmanr(
            list(ratios_from_scores(exact, sparsity).values()), list(ratios_from_scores(zo, sparsity).values())
        )[0]
        assert rho >= 0.8, (sparsity, rho)


def test_ratios_from_scores_keeps_the_largest_magnitudes():
    scores = {"a": torch.tensor([-5.0, 0.1, 0.2, 0.3]), "b": torch.tensor([4.0, -3.0, 0.0, 0.05])}
    assert ratios_from_scores(scores, 0.5) == {"a": 0.5, "b": 0.5}  # keeps 5, 4, -3, 0.3
    assert ratios_from_scores(scores, 0.75) == {"a": 0.25, "b": 0.25}  # keeps 5, 4
    assert ratios_from_scores(scores, 0.0) == {"a": 1.0, "b": 1.0}


def test_uniform_ratios():
    model = DigitsCNN()
    r = uniform_ratios(model, 0.9)
    assert r == {n: pytest.approx(0.1) for n in ("0.weight", "2.weight", "5.weight")}
    assert kept_fraction(r, model) == pytest.approx(0.1)


def test_save_and_load_round_trip(tmp_path):
    ratios = {"0.weight": 0.5, "2.weight": 0.125, "5.weight": 0.0}
    path = tmp_path / "ratios.json"
    save_ratios(path, ratios, sparsity=0.9, method="zo-grasp")
    doc = json.loads(path.read_text())
    assert doc["meaning"].startswith("fraction of each layer's weights that is kept")
    assert doc["meta"] == {"sparsity": 0.9, "method": "zo-grasp"}
    assert load_ratios(path) == ratios


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    ratios = {"0.weight": 0.5}
    path = tmp_path / "ratios.json"
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_ratios(path, ratios, when=object())
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary one
    save_ratios(path, ratios, sparsity=0.9)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_ratios(path, {"0.weight": 0.25}, sparsity={1, 2})
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratios.json"]


def test_a_save_that_fails_while_writing_removes_its_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "ratios.json"
    save_ratios(path, {"0.weight": 0.5})
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("zeroth.sparsity.ratios.os.replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_ratios(path, {"0.weight": 0.25})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratios.json"]


def test_save_writes_a_file_as_open_would(tmp_path):
    path = tmp_path / "ratios.json"
    save_ratios(path, {"0.weight": 0.5})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0o600 of a mkstemp file
    save_ratios(str(path), {"0.weight": 0.75})  # overwrites, str path too
    assert load_ratios(path) == {"0.weight": 0.75}


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda m, o: grasp_ratios(m, o, 1.0), ValueError, r"sparsity"),
        (lambda m, o: grasp_ratios(m, o, -0.1), ValueError, r"sparsity"),
        (lambda m, o: grasp_ratios(m, o, 0.9, q=0), ValueError, r"\bq\b"),
        (lambda m, o: grasp_ratios(m, o, 0.9, mu=0.0), ValueError, r"\bmu\b"),
        (lambda m, o: grasp_ratios(nn.Sequential(nn.ReLU()), o), ValueError, r"model"),
        (lambda m, o: grasp_ratios("net", o), TypeError, r"model"),
        (lambda m, o: uniform_ratios(m, 2), ValueError, r"sparsity"),
        (lambda m, o: kept_fraction({"nope": 0.5}, m), ValueError, r"nope"),
        (lambda m, o: save_ratios("x.json", {"0.weight": 1.5}), ValueError, r"ratios\['0.weight'\]"),
        (lambda m, o: balanced_batch(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), 3), ValueError, r"per_class"),
    ],
)
def test_bad_input_names_the_argument(call, exc, match):
    model = DigitsCNN()
    obj = Objective(model, F.cross_entropy, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(exc, match=match):
        call(model, obj)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"0.weight": 0.5}))
    with pytest.raises(ValueError, match="not a ratios file"):
        load_ratios(path)
