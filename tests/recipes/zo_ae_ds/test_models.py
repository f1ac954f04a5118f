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


def test_the_cifar_encoder_downsamples_in_three_strided_convs_then_one_valid_4x4_conv():
    """32 → 16 → 8 → 4 by stride-2 4×4 convs, then 4 → 1 by a 4×4 conv without padding (four
    downsamplings, three of them strided), after a size-keeping 3×3 stem; the decoder mirrors it."""
    enc = build_encoder(3, 32, 192)
    convs = [m for m in enc if isinstance(m, torch.nn.Conv2d)]
    sizes = []
    x = torch.rand(1, 3, 32, 32)
    for m in enc:
        x = m(x)
        if isinstance(m, torch.nn.Conv2d):
            sizes.append(x.shape[-1])
    assert sizes == [32, 16, 8, 4, 1]
    assert [m.stride for m in convs] == [(1, 1), (2, 2), (2, 2), (2, 2), (1, 1)]
    assert [m.kernel_size for m in convs] == [(3, 3), (4, 4), (4, 4), (4, 4), (4, 4)]
    assert [m.out_channels for m in convs] == [32, 64, 128, 256, 192]
    dec = build_decoder(3, 32, 192)
    ups = [m for m in dec if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.stride for m in ups] == [(1, 1), (2, 2), (2, 2), (2, 2)]


@pytest.mark.parametrize(
    "build,kwargs,name",
    [
        (build_encoder, dict(channels=1, image_size=12, latent_dim=4), "image_size"),
        (build_decoder, dict(channels=1, image_size=8, latent_dim=0), "latent_dim"),
        (build_encoder, dict(channels=0, image_size=8, latent_dim=4), "channels"),
        (DnCNN, dict(depth=1), "depth"),
        (DnCNN, dict(width=0), "width"),
    ],
)
def test_bad_sizes_name_the_argument(build, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build(**kwargs)
