"""Running stages on K stacked copies: each copy as if run alone (own BatchNorm statistics)."""

import pytest
import torch
from torch import nn

from zeroth.engine.stages import frozen_batchnorm_buffers, run_copies
from zeroth.models import resnet20


def _one_by_one(module, x):
    with frozen_batchnorm_buffers(module):
        return torch.stack([module(c) for c in x])


@pytest.mark.parametrize(
    "module,shape",
    [
        (nn.BatchNorm2d(5), (3, 4, 5, 6, 6)),
        (nn.BatchNorm1d(5), (3, 4, 5)),
        (nn.BatchNorm1d(5, affine=False), (3, 4, 5, 7)),
        (nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU()), (3, 4, 2, 6, 6)),
        (resnet20().zo_stages()[6], (3, 2, 16, 32, 32)),  # a downsampling residual block (pad shortcut)
    ],
    ids=["bn2d", "bn1d", "bn1d-plain-3d", "sequential", "residual"],
)
def test_copies_get_their_own_batch_statistics(module, shape):
    torch.manual_seed(0)
    module = module.double().train()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.normal_()
    x = torch.randn(*shape, dtype=torch.float64)
    buffers = [b.clone() for b in module.buffers()]
    with torch.no_grad():
        got = run_copies(module, x)
        want = _one_by_one(module, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(buffers, module.buffers()))  # running stats untouched
