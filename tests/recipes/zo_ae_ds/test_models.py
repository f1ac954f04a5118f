"""DnCNN starts as the identity; encoder/decoder builders give the latent size asked for."""
import pytest
import torch

from zeroth.recipes.zo_ae_ds import DnCNN, build_decoder, build_encoder


def test_dncnn_is_the_identity_at_init_and_then_learns_a_residual():
    d = DnCNN(channels=3, depth=4, width=8)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(d(x), x)
    torch.nn.init.normal_(d.net[-1].weight)
    assert not torch.equal(d(x), x)


@pytest.mark.parametrize("channels,size,latent", [(1, 8, 24), (3, 32, 192), (1, 4, 5)])
def test_autoencoder_shapes(channels, size, latent):
    enc, dec = build_encoder(channels, size, latent, width=4), build_decoder(channels, size, latent, width=4)
    z = enc(torch.rand(3, channels, size, size))
    assert z.shape == (3, latent, 1, 1) and bool((z >= 0).all())
    out = dec(z)
    assert out.shape == (3, channels, size, size) and bool(((out > 0) & (out < 1)).all())


def test_the_cifar_autoencoder_has_four_strided_convs():
    strided = [m for m in build_encoder(3, 32, 192) if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 3  # 32 → 16 → 8 → 4, then the 4×4 conv to 1×1 (four downsamplings)


@pytest.mark.parametrize("build,kwargs,name", [
    (build_encoder, dict(channels=1, image_size=12, latent_dim=4), "image_size"),
    (build_decoder, dict(channels=1, image_size=8, latent_dim=0), "latent_dim"),
    (build_encoder, dict(channels=0, image_size=8, latent_dim=4), "channels"),
    (DnCNN, dict(depth=1), "depth"),
    (DnCNN, dict(width=0), "width"),
])
def test_bad_sizes_name_the_argument(build, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build(**kwargs)
