"""fp16 / bf16 / fp32 / fp64 inputs: finite results equal to the fp32 ones; gradients in the input dtype."""

from __future__ import annotations

import pytest
import torch

import detlosses

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make(device, seed=0, n=5000, c=4):
    g = torch.Generator().manual_seed(seed)
    logits = (-4.6 + torch.randn(n, c, generator=g)).to(device)
    targets = (torch.rand(n, c, generator=g) < 0.02).long().to(device)
    targets[:20] = -1
    ious = torch.rand(n, c, generator=g).to(device)
    iou_targets = torch.where(targets == 1, ious, targets.float())
    errors = torch.rand(int((targets == 1).sum()), generator=g).to(device)
    return logits, targets, ious, iou_targets, errors


LOSSES = {
    "ap": lambda x, b: detlosses.ap_loss(x, b[1]),
    "alrp": lambda x, b: sum(detlosses.alrp_loss(x, b[1], b[4])),
    "rank_sort": lambda x, b: sum(detlosses.rank_sort_loss(x, b[3])),
    "pap": lambda x, b: detlosses.parameterized_ap_loss(x, b[1], b[2]),
    "ghmc": lambda x, b: detlosses.GHMC(momentum=0.0)(x, b[1].clamp_min(0), (b[1] >= 0).float()),
    "iou_focal": lambda x, b: detlosses.iou_balanced_focal_loss(x, b[1], b[2], reduction="sum"),
    # per-anchor class indices (each anchor's first positive class, else background; -2 ignored)
    "iou_focal_labels": lambda x, b: detlosses.iou_balanced_focal_loss(x, _labels(b[1]), b[2][:, 0],
                                                                       reduction="sum"),
}


def _labels(targets):
    positive = targets == 1
    return torch.where(positive.any(-1), positive.int().argmax(-1), torch.where((targets == -1).any(-1), -2, -1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_low_and_high_precision_inputs_match_float32(name, dtype, device):
    batch = make(device)
    cast = batch[0].to(dtype)
    x_low = cast.clone().requires_grad_(True)
    x_ref = cast.float().clone().requires_grad_(True)  # the same values in float32
    low = LOSSES[name](x_low, batch)
    ref = LOSSES[name](x_ref, batch)
    low.backward()
    ref.backward()
    assert torch.isfinite(low) and low.dtype in (torch.float32, torch.float64)
    assert x_low.grad.dtype == dtype and bool(torch.isfinite(x_low.grad).all())
    torch.testing.assert_close(low.float(), ref, rtol=1e-5, atol=1e-6)
    # Relative L1 error: gradients of piecewise-linear kernels jump at kinks, so an element whose
    # score difference sits within rounding of a kink may take the other one-sided derivative.
    tolerance = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-5}[dtype]
    error = float((x_low.grad.double() - x_ref.grad.double()).abs().sum())
    assert error <= tolerance * float(x_ref.grad.double().abs().sum()) + 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [5000, 300_000])  # 300k x 4: the engine's interleaved accumulation
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_cuda_matches_cpu(name, n):
    cpu = make("cpu", n=n)
    gpu = make("cuda", n=n)
    x_cpu = cpu[0].double().requires_grad_(True)
    x_gpu = gpu[0].double().requires_grad_(True)
    a = LOSSES[name](x_cpu, cpu)
    b = LOSSES[name](x_gpu, gpu)
    a.backward()
    b.backward()
    torch.testing.assert_close(b.cpu(), a)
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad)


@pytest.fixture
def device_path():
    """Run the operators a CUDA call runs, on the CPU (its own speed-ups off)."""
    from detlosses.ranking.engine import set_cpu_fast_paths

    set_cpu_fast_paths(False)
    yield
    set_cpu_fast_paths(True)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_device_path_matches_the_cpu_fast_path(name, request):
    """The CUDA path (take look-ups, binary search) equals the CPU's (grid, float32 adjoint) on a batch
    large enough for the CPU's bucketing grid; both are pinned to float64 references elsewhere."""
    batch = make("cpu", seed=3, n=20_000)
    results = []
    for fast in (True, False):
        if not fast:
            request.getfixturevalue("device_path")
        x = batch[0].clone().requires_grad_(True)
        value = LOSSES[name](x, batch)
        value.backward()
        results.append((value.detach(), x.grad))
    (value, grad), (device_value, device_grad) = results
    torch.testing.assert_close(device_value, value, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(device_grad, grad, rtol=1e-5, atol=1e-9)
