"""Loss modules cast to half precision (``.half()``, ``.to(torch.bfloat16)``, Lightning's
``precision="bf16-true"``) keep their running statistics in float64.

Before, the cast rounded them: in bfloat16 aLRP Loss's iteration count stopped at 256 (``256 + 1 ==
256``) and its self-balance weight came out 60.0 instead of 95.5 after 600 iterations; in float16
GHM's bin counts overflow at 65,504.
"""

from __future__ import annotations

import pytest
import torch

import detlosses
from detlosses.models import build_model_criterion


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_alrp_self_balance_after_a_cast_equals_float32(dtype):
    cast, plain = detlosses.ALRPLoss().to(dtype), detlosses.ALRPLoss()
    assert {b.dtype for b in cast.buffers()} == {torch.float64}
    g = torch.Generator().manual_seed(0)
    for _ in range(300):  # past bfloat16's 256
        logits = torch.randn(400, generator=g).to(dtype)
        targets = (torch.rand(400, generator=g) < 0.03).float()
        targets[0] = 1.0
        errors = torch.rand(int(targets.sum()), generator=g).to(dtype)
        cast(logits, targets, errors)
        plain(logits.float(), targets, errors.float())
    torch.testing.assert_close(cast.self_balance.sums, plain.self_balance.sums, rtol=1e-6, atol=0)
    assert cast.self_balance.sums[2] == 300
    assert cast.end_epoch() == pytest.approx(plain.end_epoch(), rel=1e-6)


def test_ghm_counts_past_float16s_range():
    cast, plain = detlosses.GHMC(momentum=0.75).half(), detlosses.GHMC(momentum=0.75)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(40_000, 4, generator=g) - 6.0).half()  # nearly all 160,000 elements in bin 0
    targets = (torch.rand(40_000, 4, generator=g) < 0.001).half()
    for _ in range(3):
        value = cast(logits, targets, torch.ones_like(targets))
        want = plain(logits.float(), targets.float(), torch.ones_like(targets, dtype=torch.float32))
    assert cast.ema.dtype == torch.float64 and cast.ema.max() > 65_504
    torch.testing.assert_close(cast.ema, plain.ema, rtol=0, atol=0)
    torch.testing.assert_close(value.float(), want, rtol=1e-3, atol=0)


def test_criterion_statistics_follow_device_moves_but_not_casts():
    criterion = build_model_criterion("retinanet", "ghm")
    criterion.ghmc.ema.fill_(1.0 + 2.0**-40)  # a value bfloat16 (and float32) would round
    state = {k: v.clone() for k, v in criterion.state_dict().items()}
    criterion = criterion.to(torch.bfloat16)
    buffers = dict(criterion.named_buffers())
    assert {name: b.dtype for name, b in buffers.items()} == {name: torch.float64 for name in buffers}
    assert set(buffers) >= {"histogram", "ghmc.ema", "ghmc.updates", "ghmr.ema", "ghmr.updates"}
    assert torch.equal(criterion.ghmc.ema, state["ghmc.ema"])
    criterion.load_state_dict(state)  # loading into the cast module keeps float64
    assert criterion.ghmc.ema.dtype == torch.float64
    moved = criterion.to("meta")
    assert {(b.device.type, b.dtype) for b in moved.buffers()} == {("meta", torch.float64)}
