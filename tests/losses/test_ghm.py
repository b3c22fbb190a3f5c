"""GHM-C / GHM-R against the released loop-over-bins semantics; EMA over steps; gradcheck."""

from __future__ import annotations

import pytest
import torch

import detlosses

from . import reference


def batch(seed, n=400, c=5):
    g = torch.Generator().manual_seed(seed)
    pred = 3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    target = (torch.rand(n, c, generator=g) < 0.1).to(torch.float64)
    weight = (torch.rand(n, c, generator=g) > 0.05).to(torch.float64)
    return pred, target, weight


@pytest.mark.parametrize("momentum", [0.0, 0.75])
def test_ghmc_matches_released_over_several_steps(momentum):
    module = detlosses.GHMC(bins=30, momentum=momentum, bias_correction=False)  # as released
    ema = [0.0] * 30
    for step in range(5):
        pred, target, weight = batch(step)
        x = pred.clone().requires_grad_()
        loss = module(x, target, weight)
        loss.backward()
        xr = pred.clone().requires_grad_()
        ref = reference.ghmc(xr, target, weight, 30, ema, momentum)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)
    if momentum:
        torch.testing.assert_close(module.ema, torch.tensor(ema, dtype=torch.float64))


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_ghmr_matches_released_over_several_steps(momentum):
    module = detlosses.GHMR(mu=0.02, bins=10, momentum=momentum, bias_correction=False)  # as released
    ema = [0.0] * 10
    for step in range(5):
        g = torch.Generator().manual_seed(step)
        pred = 0.3 * torch.randn(300, 4, generator=g, dtype=torch.float64)
        target = 0.3 * torch.randn(300, 4, generator=g, dtype=torch.float64)
        weight = (torch.rand(300, 4, generator=g) > 0.5).to(torch.float64)
        x = pred.clone().requires_grad_()
        loss = module(x, target, weight)
        loss.backward()
        xr = pred.clone().requires_grad_()
        ref = reference.ghmr(xr, target, weight, 0.02, 10, ema, momentum)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)


def test_bias_correction_removes_the_start_up_bias():
    pred, target, weight = batch(0)
    plain = detlosses.GHMC(momentum=0.75, bias_correction=False)
    corrected = detlosses.GHMC(momentum=0.75)  # the default
    batch_only = detlosses.GHMC(momentum=0.0)
    # first step: the uncorrected EMA is (1 - m) c, weights 1/(1 - m) = 4x too large
    torch.testing.assert_close(plain(pred, target, weight), 4.0 * batch_only(pred, target, weight))
    torch.testing.assert_close(corrected(pred, target, weight), batch_only(pred, target, weight))


def test_ema_state_in_state_dict_and_frozen_in_eval():
    module = detlosses.GHMC()
    module(*batch(0))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    assert set(state) == {"ema", "updates"} and float(state["ema"].sum()) > 0
    module.eval()
    module(*batch(1))
    torch.testing.assert_close(module.ema, state["ema"])
    restored = detlosses.GHMC()
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.ema, state["ema"])


def test_gradcheck():
    pred, target, weight = batch(7, n=20, c=3)
    module = detlosses.GHMC(momentum=0.0)
    assert torch.autograd.gradcheck(lambda x: module(x, target, weight), (pred.requires_grad_(),))
    reg = detlosses.GHMR(momentum=0.0)
    d = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: reg(x, torch.zeros(10, 4, dtype=torch.float64)), (d,))


def test_integer_labels_expand_to_one_hot():
    pred = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 3, 1])  # 3 = background
    onehot = torch.zeros(6, 3, dtype=torch.float64)
    onehot[torch.arange(3), torch.arange(3)] = 1
    onehot[5, 1] = 1
    module = detlosses.GHMC(momentum=0.0)
    torch.testing.assert_close(module(pred, labels), module(pred, onehot))


def test_no_fp16_overflow_of_weights():
    pred, target, weight = batch(3, n=20000, c=4)
    loss = detlosses.GHMC(momentum=0.0)(pred.half(), target.half(), weight)
    ref = detlosses.GHMC(momentum=0.0)(pred.half().float(), target.float(), weight)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.float(), ref, rtol=1e-4, atol=1e-6)


def test_reductions():
    pred, target, weight = batch(2)
    module = detlosses.GHMC(momentum=0.0, loss_weight=2.0)
    mean = module(pred, target, weight)
    total = module(pred, target, weight, reduction_override="sum")
    per_element = module(pred, target, weight, reduction_override="none")
    tot = float((weight > 0).sum())
    torch.testing.assert_close(mean * tot, total)
    torch.testing.assert_close(per_element.sum(), total)
    with pytest.raises(ValueError, match="reduction must be one of"):
        module(pred, target, weight, reduction_override="avg")


def test_functional_forms_are_the_batch_density_modules():
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(200, 4, generator=g, dtype=torch.float64)
    target = (torch.rand(200, 4, generator=g) < 0.1).double()
    weight = (torch.rand(200, generator=g) < 0.9).double()
    torch.testing.assert_close(detlosses.ghmc_loss(pred, target, weight),
                               detlosses.GHMC(momentum=0.0)(pred, target, weight))
    deltas, goal = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)
    torch.testing.assert_close(detlosses.ghmr_loss(deltas, goal, reduction="sum"),
                               detlosses.GHMR(momentum=0.0, reduction="sum")(deltas, goal))


@pytest.mark.parametrize("n, float32_max", [(1 << 17, 1 << 24), (3 * (1 << 17) + 16, 1 << 24), (1 << 17, 100),
                                            ((1 << 17) + 4, 1 << 24)])
def test_bin_counts_in_interleaved_copies_are_exact(n, float32_max, monkeypatch):
    """Large inputs count in interleaved copies (32, 16 lanes; float32 or, past its exact range,
    float64; fewer than 8 lanes: one table) with the same counts as a plain loop."""
    from detlosses.losses import ghm

    monkeypatch.setattr(ghm, "_HISTOGRAM_FLOAT32_MAX", float32_max)
    g = torch.Generator().manual_seed(n)
    values = torch.rand(n, generator=g) ** 8  # most elements in the first bins, as early in training
    values[::7] = 1.0  # the last edge
    valid = torch.rand(n, generator=g) > 0.1
    edges = ghm._bin_edges(30, 1.0, torch.float32, torch.device("cpu"))
    index, counts = ghm.gradient_bin_counts(values, valid, edges)
    expected = torch.tensor([float(((index == b) & valid).sum()) for b in range(30)], dtype=torch.float64)
    assert counts.dtype == torch.float64
    torch.testing.assert_close(counts, expected, rtol=0, atol=0)
    assert float(counts.sum()) == float(valid.sum())
