"""Every loss under torch.autocast (fp16, bf16) and with extreme fp16 logits."""

from __future__ import annotations

import pytest
import torch

import detlosses

from .test_dtypes_devices import LOSSES, make

DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_under_autocast_match_float32(name, dtype):
    batch = make("cpu", seed=1, n=3000)
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, batch[0].shape[1])
    features = torch.randn(batch[0].shape[0], 8)
    with torch.autocast("cpu", dtype=dtype):
        logits = layer(features) - 4.6
        assert logits.dtype == dtype
        loss = LOSSES[name](logits, batch)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype in (torch.float32, torch.float64)
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    reference = LOSSES[name](logits.detach().float(), batch)  # same (rounded) logits, plain float32
    torch.testing.assert_close(loss.float(), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_extreme_fp16_logits_stay_finite(name):
    batch = make("cpu", seed=2, n=2000)
    g = torch.Generator().manual_seed(0)
    logits = (torch.rand(batch[0].shape, generator=g) * 2 - 1) * 60000
    logits[:5] = torch.tensor([60000.0, -60000.0, 65504.0, -65504.0, 0.0])[:, None]
    x = logits.half().requires_grad_(True)
    loss = LOSSES[name](x, batch)
    loss.backward()
    assert torch.isfinite(loss), name
    assert bool(torch.isfinite(x.grad).all()), name


def test_ghm_regression_under_autocast():
    pred = torch.randn(100, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = detlosses.GHMR()(pred.to(torch.bfloat16), torch.zeros(100, 4))
    out.backward()
    assert torch.isfinite(out) and bool(torch.isfinite(pred.grad).all())
