"""Window edges that are not float32 numbers, with float32 scores.

Parameterized AP's searched breakpoints (and AP-Loss or aLRP with a ``delta`` that is not a binary
fraction) put the edges ``q + a`` between float32 numbers. Rounded to nearest, a point within half
an ulp of an edge fell on the wrong side of it and took the neighbouring piece's slope: at
early-training logits (``-4.6 +- 1``, 40,000 of them) 6 gradients were off by up to 4 %, the
largest gradient by 6e-5 of itself. The edges are now rounded down to the float32 threshold that
sorts every float32 point as the exact edge does (``Windows._float32_thresholds``).
"""

from __future__ import annotations

import pytest
import torch

import detlosses
from detlosses.losses.pap_params import PRESETS
from detlosses.ranking import HingeKernels, smoothed_step
from detlosses.ranking.engine import Windows, set_cpu_fast_paths

from . import reference


@pytest.mark.parametrize("kernels", [PRESETS["retinanet"], PRESETS["faster_rcnn_rpn"], 0.3],
                         ids=["pap_retinanet", "pap_faster_rcnn_rpn", "delta_0.3"])
def test_thresholds_sort_float32_points_as_the_exact_edges_do(kernels):
    from detlosses.losses.parameterized_ap_loss import _form_of

    hinge = HingeKernels.of(smoothed_step(kernels)) if isinstance(kernels, float) else _form_of(kernels).kernels
    assert not hinge.float32_edges_exact
    g = torch.Generator().manual_seed(0)
    queries = (torch.randn(64, generator=g) * 30).float()
    windows = Windows(queries, hinge)
    exact = (torch.tensor(hinge.breakpoints, dtype=torch.float64)[:, None] + queries.double()).view(-1)
    closed = torch.tensor(hinge.closed)[:, None].expand(-1, 64).reshape(-1)
    thresholds = windows.sorted_edges[torch.argsort(windows.order)]  # back to (r, i) order
    # the float32 numbers around every exact edge, and the edge's own rounding
    near = exact.float()[:, None]
    for _ in range(4):
        near = torch.cat([near, torch.nextafter(near[:, -1:], torch.tensor(float("inf")))], 1)
        near = torch.cat([torch.nextafter(near[:, :1], torch.tensor(float("-inf"))), near], 1)
    above = torch.where(closed[:, None], near.double() >= exact[:, None], near.double() > exact[:, None])
    assert torch.equal(near > thresholds[:, None], above)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("fast", [True, False, pytest.param("cuda", marks=CUDA)],
                         ids=["cpu_fast_path", "device_path", "cuda"])
@pytest.mark.parametrize("preset", ["retinanet", "faster_rcnn_rpn"])
def test_parameterized_ap_gradients_at_float32_early_training_logits(preset, fast):
    device = "cuda" if fast == "cuda" else "cpu"
    g = torch.Generator().manual_seed(0)
    n = 40_000
    logits = (torch.randn(n, generator=g, dtype=torch.float64) - 4.6).float()
    targets = (torch.rand(n, generator=g) < 0.005).float()
    ious = torch.rand(n, generator=g, dtype=torch.float64)
    set_cpu_fast_paths(fast is True)
    try:
        x = logits.to(device, copy=True).requires_grad_()
        detlosses.parameterized_ap_loss(x, targets.to(device), ious.float().to(device), params=preset).backward()
    finally:
        set_cpu_fast_paths(True)
    xr = logits.double().requires_grad_()
    reference.parameterized_ap_loss(xr, targets, ious, "searched", PRESETS[preset].control_points.tolist()).backward()
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, rtol=1e-5, atol=1e-6 * float(xr.grad.abs().max()))


def test_ap_loss_with_a_delta_that_is_no_binary_fraction():
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(20_000, generator=g, dtype=torch.float64)).float()
    targets = (torch.rand(20_000, generator=g) < 0.01).float()
    x = logits.clone().requires_grad_()
    detlosses.ap_loss(x, targets, delta=0.3).backward()
    value, gradient = reference.ap_loss(logits.double(), targets, delta=0.3)
    torch.testing.assert_close(x.grad.double(), gradient, rtol=1e-5, atol=1e-6 * float(gradient.abs().max()))
