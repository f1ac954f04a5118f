"""train_denoiser: ZO gradients through BlackBox match autograd, the classifier is only queried, resume is exact."""

import pytest
import torch
from torch import nn

from zeroth import CGE, RGE
from zeroth.recipes.zo_ae_ds import (
    DnCNN,
    QueryCounter,
    build_decoder,
    build_encoder,
    classifier_head,
    denoised_loss,
    train_autoencoder,
    train_classifier,
    train_denoiser,
)

from ...conftest import cosine


class Classifier(nn.Module):
    """A tiny classifier on 8×8 images; with ``strict`` its forward raises under autograd."""

    def __init__(self, strict=False):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(192, 10))
        self.strict = strict
        self.rows = 0  # images actually seen, to check the counter

    def forward(self, x):
        self.rows += x.shape[0]
        if self.strict and torch.is_grad_enabled():
            raise RuntimeError("the black-box classifier was called with autograd on")
        return self.net(x)


def parts(dtype=torch.float32, latent=4, seed=0):
    torch.manual_seed(seed)
    f = Classifier().to(dtype).requires_grad_(False)
    denoiser = DnCNN(1, depth=3, width=4).to(dtype)
    nn.init.normal_(denoiser.net[-1].weight, std=0.1)  # not the identity, so every layer has a gradient
    enc, dec = build_encoder(1, 8, latent, width=4).to(dtype), build_decoder(1, 8, latent, width=4).to(dtype)
    x = torch.rand(6, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return f, denoiser, enc, dec, x


def gradient(mode, through_ae, estimator=None):
    f, denoiser, enc, dec, x = parts(torch.float64)
    if not through_ae:
        enc = dec = None
    head = classifier_head(QueryCounter(f, white_box=mode == "fo"), mode=mode, decoder=dec, estimator=estimator, seed=0)
    noise = 0.25 * torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(6) % 10
    denoised_loss(denoiser, head, x, targets, noise, encoder=enc).backward()
    trained = [denoiser] + ([enc] if through_ae else [])
    return [p.grad.clone() for m in trained for p in m.parameters()]


@pytest.mark.parametrize("through_ae", [True, False])
def test_zo_gradient_through_blackbox_agrees_with_first_order(through_ae):
    fo = gradient("fo", through_ae)
    zo = gradient("zo", through_ae, CGE(mu=1e-6))
    assert cosine(zo, fo) >= 0.999
    assert max(float((a - b).abs().max()) for a, b in zip(zo, fo)) > 0  # an estimate, not autograd


def test_rge_gradient_is_a_noisy_but_aligned_estimate():
    fo = gradient("fo", True)
    zo = gradient("zo", True, RGE(q=64, mu=1e-6, dist="sphere"))
    assert 0.5 < cosine(zo, fo) < 0.999


@pytest.mark.parametrize("through_ae", [True, False])
def test_zo_mode_never_differentiates_the_classifier(through_ae):
    f, denoiser, enc, dec, x = parts()
    f.strict = True
    ae = dict(encoder=enc, decoder=dec) if through_ae else {}
    log = train_denoiser(
        denoiser, f, x, sigma=0.25, mode="zo", through_ae=through_ae, epochs=1, batch_size=3, progress=False, **ae
    )
    assert all(not p.requires_grad for p in f.parameters()) and log.steps == 2
    with pytest.raises(RuntimeError, match="autograd on"):  # the guard does fire when differentiated
        train_denoiser(denoiser, f, x, sigma=0.25, mode="fo", through_ae=through_ae, epochs=1, progress=False, **ae)


@pytest.mark.parametrize("estimator,per_image", [(CGE(mu=5e-3), 1 + 4), (RGE(q=3, mu=5e-3), 1 + 3), (None, 1)])
def test_queries_per_step_and_total(estimator, per_image):
    f, denoiser, enc, dec, x = parts(latent=4)
    counter = QueryCounter(f, white_box=estimator is None)
    log = train_denoiser(
        denoiser,
        counter,
        x,
        sigma=0.25,
        mode="fo" if estimator is None else "zo",
        estimator=estimator,
        encoder=enc,
        decoder=dec,
        epochs=2,
        batch_size=3,
        progress=False,
    )
    assert log.queries_per_step == 3 * per_image
    assert log.queries == counter.queries == 6 + log.steps * 3 * per_image  # pseudo-labels + steps


def test_decoder_stays_frozen_and_the_encoder_trains():
    f, denoiser, enc, dec, x = parts()
    dec_before = [p.clone() for p in dec.parameters()]
    enc_before = [p.clone() for p in enc.parameters()]
    train_denoiser(denoiser, f, x, sigma=0.25, encoder=enc, decoder=dec, epochs=1, batch_size=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(dec_before, dec.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, enc.parameters()))
    assert all(p.requires_grad for p in dec.parameters())  # flags restored after training


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    def train(epochs, path, resume):
        torch.manual_seed(0)
        f, denoiser, enc, dec, x = parts()
        log = train_denoiser(
            denoiser,
            f,
            x,
            sigma=0.25,
            estimator=RGE(q=2, mu=5e-3),
            encoder=enc,
            decoder=dec,
            epochs=epochs,
            batch_size=2,
            seed=3,
            checkpoint=path,
            resume=resume,
            progress=False,
        )
        return [p.detach().clone() for p in list(denoiser.parameters()) + list(enc.parameters())], log, f.rows

    straight, log_straight, _ = train(2, tmp_path / "a.pt", False)
    _, log_first, _ = train(1, tmp_path / "b.pt", False)
    resumed, log_resumed, rows = train(2, tmp_path / "b.pt", True)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert log_resumed.losses == log_straight.losses and log_resumed.queries == log_straight.queries
    assert rows == log_resumed.queries - log_first.queries  # the resumed run re-queried no pseudo-labels


def test_classifier_and_autoencoder_training_reduce_their_losses():
    f, _, enc, dec, x = parts()
    f.requires_grad_(True)
    x = x.repeat(8, 1, 1, 1)
    log = train_classifier(f, x, torch.arange(48) % 10, epochs=5, batch_size=12, lr=1e-2, progress=False)
    assert log.losses[-1] < log.losses[0]
    log = train_autoencoder(enc, dec, x, epochs=5, batch_size=12, lr=1e-2, progress=False)
    assert log.losses[-1] < log.losses[0] and log.epochs == 5


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(mode="so"), "mode"),
        (dict(sigma=0.0), "sigma"),
        (dict(epochs=-1), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=-1.0), "lr"),
        (dict(mode="fo", estimator=CGE()), "estimator"),
        (dict(resume=True), "checkpoint"),
        (dict(encoder=None), "encoder"),
        (dict(through_ae=False), "encoder/decoder"),
        (dict(estimator="newton"), "estimator"),
        (dict(targets=torch.zeros(2, dtype=torch.long)), "targets"),
        (dict(x=torch.rand(6, 64)), "x must be"),
        (dict(classifier="f"), "classifier"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    f, denoiser, enc, dec, x = parts()
    args = dict(classifier=f, x=x, sigma=0.25, encoder=enc, decoder=dec, epochs=1, progress=False) | kwargs
    before = [p.clone() for p in denoiser.parameters()]
    with pytest.raises((ValueError, TypeError), match=name):
        train_denoiser(denoiser, **args)
    assert all(torch.equal(a, b) for a, b in zip(before, denoiser.parameters()))


def test_a_counter_of_the_wrong_kind_is_rejected():
    f, denoiser, enc, dec, x = parts()
    with pytest.raises(ValueError, match="white_box=True"):
        train_denoiser(denoiser, QueryCounter(f), x, sigma=0.25, mode="fo", encoder=enc, decoder=dec, progress=False)
    with pytest.raises(ValueError, match="black box"):
        train_denoiser(
            denoiser, QueryCounter(f, white_box=True), x, sigma=0.25, encoder=enc, decoder=dec, progress=False
        )
