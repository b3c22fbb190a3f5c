"""The ranking losses' score range: exact within it, a clear error beyond it.

Past ``2^30`` times the kernel's finest breakpoint spacing the float64 moments cancel, and past
``2^23`` times it float32 scores no longer resolve edges kept in float32 (``HingeKernels.score_limit``):
before the check, AP-Loss returned 0 (a perfect ranking) for random logits of scale 1e17 and Rank &
Sort returned NaN. Logits that large mean a diverged model; the value check, which reads the
logits' range anyway, now names it.
"""

from __future__ import annotations

import pytest
import torch

import detlosses
from detlosses.losses import set_validate_args
from detlosses.ranking import HingeKernels, smoothed_step

from . import reference


def _batch(scale, shift, dtype, n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, generator=g, dtype=torch.float64) * scale + shift).to(dtype)
    targets = (torch.rand(n, generator=g) < 0.02).to(torch.float64)
    soft = targets * torch.rand(n, generator=g, dtype=torch.float64).clamp(min=0.1)
    return logits, targets, soft


def test_the_limits():
    ap, rank_sort = HingeKernels.of(smoothed_step(1.0)), HingeKernels.of(smoothed_step(0.5))
    assert ap.score_limit(torch.float32) == 2.0**24 and ap.score_limit(torch.bfloat16) == 2.0**24
    assert rank_sort.score_limit(torch.float32) == 2.0**23
    assert ap.score_limit(torch.float64) == 2.0**31
    assert HingeKernels.of(smoothed_step(0.3)).score_limit(torch.float32) == pytest.approx(0.6 * 2.0**30)


@pytest.mark.parametrize("dtype, shift", [(torch.float32, 6e6), (torch.float64, 1e8)])
def test_exact_near_the_limit(dtype, shift):
    """A dense cluster of scores far from 0, inside the limit: AP-Loss and Rank & Sort against the
    float64 references (on the same rounded scores)."""
    logits, targets, soft = _batch(1.0, shift, dtype)
    x = logits.clone().requires_grad_()
    detlosses.ap_loss(x, targets).backward()
    value, gradient = reference.ap_loss(logits.double(), targets)
    torch.testing.assert_close(x.grad.double(), gradient, rtol=1e-5, atol=1e-7 * float(gradient.abs().max()))
    y = logits.clone().requires_grad_()
    ranking, sorting = detlosses.rank_sort_loss(y, soft)
    (ranking + sorting).backward()
    ref = reference.rank_sort_loss(logits.double(), soft)
    torch.testing.assert_close(ranking.double(), ref[0], rtol=1e-5, atol=1e-7)
    want = ref[2] + ref[3]
    torch.testing.assert_close(y.grad.double(), want, rtol=1e-5, atol=1e-7 * float(want.abs().max()))


def _all_four(logits, targets, soft):
    count = int((targets == 1).sum())
    return [lambda: detlosses.ap_loss(logits, targets),
            lambda: detlosses.alrp_loss(logits, targets, torch.rand(count, dtype=logits.dtype)),
            lambda: detlosses.rank_sort_loss(logits, soft),
            lambda: detlosses.parameterized_ap_loss(logits, targets, torch.rand(count, dtype=logits.dtype))]


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e8), (torch.float64, 1e13), (torch.float64, 1e20)])
def test_beyond_the_limit_is_named(dtype, scale):
    for call in _all_four(*_batch(scale, 0.0, dtype)):
        with pytest.raises(ValueError, match=r"logits reach .*: beyond \+-.* the ranking loss's sums lose"):
            call()


def test_half_precision_logits_within_their_range():
    """float16 logits up to its largest value, 65,504: within every limit (Parameterized AP's
    presets round their float32 edges down, so theirs is the float64 one: 2.1e6 for
    ``faster_rcnn_rpn``)."""
    g = torch.Generator().manual_seed(3)
    logits = ((torch.rand(3000, generator=g) * 2 - 1) * 65504).half()
    _, targets, soft = _batch(1.0, 0.0, torch.float32)
    calls = _all_four(logits, targets, soft.half()) + [
        lambda: detlosses.parameterized_ap_loss(logits, targets, torch.rand(int((targets == 1).sum())),
                                                params="faster_rcnn_rpn")]
    for call in calls:
        value = call()
        assert all(torch.isfinite(v) for v in (value if isinstance(value, tuple) else (value,)))


def test_the_switch_turns_the_check_off():
    logits, targets, soft = _batch(1e8, 0.0, torch.float32)
    set_validate_args(False)
    try:
        assert torch.isfinite(detlosses.ap_loss(logits, targets))
    finally:
        set_validate_args(True)
