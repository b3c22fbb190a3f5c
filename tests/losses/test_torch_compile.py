"""The losses inside ``torch.compile``d code give what they give eagerly.

The ranking losses run eagerly inside compiled code (one graph break each, :mod:`._compiler`):
traced, torch 2.14's TorchDynamo fails on them the second time the number of positives changes at
32,768 logits or more (``InternalTorchDynamoError: RecursionError``). The elementwise losses (GHM,
IoU-balanced) are traced and compiled; their EMA buffers must follow the eager ones. ``backend=
"eager"``/``"aot_eager"`` keep the tests fast: the failure was in the tracer, before any backend.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import detlosses

from .test_static_shapes import _all_four, _assert_same, _ternary


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on the graph breaks
        yield
    torch._dynamo.reset()


def test_ranking_losses_under_torch_compile_with_a_new_number_of_positives_each_call():
    """Three calls of a compiled function around the four losses, a different number of positives
    each time, at 40,000 logits (the CPU's bucketing grid, where tracing failed)."""
    compiled = torch.compile(lambda x, t: _all_four(x * 1.0, t), backend="eager")
    for call, p in enumerate((300, 410, 530)):
        logits, targets = _ternary(40_000, p, seed=call, dtype=torch.float32)  # (float32 edges: the failure)
        targets[:50] = -1.0
        _assert_same(compiled(logits, targets), _all_four(logits, targets), rtol=1e-6)


def test_modules_inside_a_compiled_training_step():
    """A compiled step: a linear head, then AP-Loss / aLRP Loss (its self-balance buffers traced)."""
    torch.manual_seed(0)
    heads = [torch.nn.Linear(8, 4, dtype=torch.float64) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    losses = [detlosses.ALRPLoss(), detlosses.ALRPLoss()]

    def step(head, loss, features, targets, errors):
        return loss(head(features), targets, errors) + detlosses.APLoss()(head(features), targets)

    compiled = torch.compile(step, backend="aot_eager")
    for call in range(3):
        g = torch.Generator().manual_seed(call)
        features = torch.randn(500, 8, generator=g, dtype=torch.float64)
        targets = (torch.rand(500, 4, generator=g) < 0.02 + 0.01 * call).double()
        errors = torch.rand(int(targets.sum()), generator=g, dtype=torch.float64)
        want = step(heads[0], losses[0], features, targets, errors)
        got = compiled(heads[1], losses[1], features, targets, errors)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        want_grads = torch.autograd.grad(want, list(heads[0].parameters()))
        got_grads = torch.autograd.grad(got, list(heads[1].parameters()))
        for a, b in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for a, b in zip(losses[1].self_balance.buffers(), losses[0].self_balance.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_elementwise_losses_are_compiled_like_eager(momentum=0.75):
    modules = [detlosses.GHMC(momentum=momentum), detlosses.GHMC(momentum=momentum)]
    ghmr = [detlosses.GHMR(momentum=momentum), detlosses.GHMR(momentum=momentum)]

    def losses(ghmc, ghmr, logits, targets, ious, deltas):
        labels = targets.clamp(min=0)
        return (ghmc(logits, labels, (targets >= 0).float()) + ghmr(deltas, deltas.detach() * 0.5)
                + detlosses.iou_balanced_focal_loss(logits, targets, ious)
                + detlosses.iou_balanced_smooth_l1_loss(deltas, deltas.detach() * 0.5, ious[:, 0]))

    compiled = torch.compile(losses, backend="aot_eager")
    for call in range(3):
        g = torch.Generator().manual_seed(call)
        logits = torch.randn(300, 5, generator=g)
        targets = (torch.rand(300, 5, generator=g) < 0.1).float()
        targets[:4] = -1.0
        ious, deltas = torch.rand(300, 5, generator=g), torch.randn(300, 4, generator=g)
        results = []
        for fn, ghmc, r in ((losses, modules[0], ghmr[0]), (compiled, modules[1], ghmr[1])):
            x, d = logits.clone().requires_grad_(), deltas.clone().requires_grad_()
            value = fn(ghmc, r, x, targets, ious, d)
            value.backward()
            results.append([value.detach(), x.grad, d.grad])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(modules[1].ema, modules[0].ema)
    torch.testing.assert_close(ghmr[1].ema, ghmr[0].ema)


def test_fullgraph_names_the_loss_and_why():
    from detlosses.losses._compiler import _OPTIONS

    compiled = torch.compile(lambda x, t: detlosses.ap_loss(x * 1.0, t), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="ap_loss") as raised:
        compiled(torch.randn(100), (torch.rand(100) < 0.1).float())
    if _OPTIONS:
        assert "reads its number of positives" in str(raised.value)
