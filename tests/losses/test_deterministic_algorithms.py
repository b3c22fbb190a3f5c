"""Every loss under ``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic=True``).

In that mode an operator without a deterministic kernel raises (``torch.histc`` on CUDA: GHM's
histogram), and ``torch.empty`` fills its memory with NaN (on the CPU too), so a loss that read
memory it never wrote would change its result. On the CPU the losses must give what they give in
the default mode on every path; on CUDA they must run, and give the same bits twice.
"""

from __future__ import annotations

import pytest
import torch

import detlosses
from detlosses.losses import _graphs
from detlosses.losses.ghm import gradient_bin_counts
from detlosses.ranking.engine import set_cpu_fast_paths

from .test_static_shapes import _all_four, _assert_same, _ternary

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def deterministic():
    """Turns deterministic algorithms on inside ``with deterministic():``, restoring the mode after."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())

    class Mode:
        def __enter__(self):
            torch.use_deterministic_algorithms(True)

        def __exit__(self, *exc):
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])

    yield Mode
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _with_ignored(n, p, seed):
    logits, targets = _ternary(n, p, seed)
    targets[torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[: n // 50]] = -1.0
    return logits, targets


@pytest.mark.parametrize("path", ["cpu_fast_path", "device_path", "static_shapes"])
@pytest.mark.parametrize("n, p", [(3000, 40), (40_000, 300)])  # 40,000: the CPU's bucketing grid
def test_ranking_losses_are_unchanged_on_every_path(deterministic, path, n, p):
    logits, targets = _with_ignored(n, p, seed=3)
    set_cpu_fast_paths(path == "cpu_fast_path")
    try:
        want = _all_four(logits, targets)
        with deterministic():
            if path == "static_shapes":
                with _graphs.force_static_shapes():
                    got = _all_four(logits, targets)
            else:
                got = _all_four(logits, targets)
    finally:
        set_cpu_fast_paths(True)
    _assert_same(got, want, rtol=1e-12)


def _ghm_steps(module_kwargs, steps=3, n=600, c=5, seed=0):
    """Values, gradients and EMA state of a GHM-C module over a few steps."""
    module = detlosses.GHMC(**module_kwargs)
    out = []
    for step in range(steps):
        g = torch.Generator().manual_seed(seed + step)
        x = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_()
        target = (torch.rand(n, c, generator=g) < 0.1).to(torch.float64)
        weight = (torch.rand(n, c, generator=g) > 0.05).to(torch.float64)
        loss = module(x, target, weight)
        loss.backward()
        out += [loss.detach(), x.grad]
    return out + [module.ema.clone()]


@pytest.mark.parametrize("momentum", [0.0, 0.75])
@pytest.mark.parametrize("n", [600, 40_000])  # 40,000 x 5: the interleaved histogram copies (from 2^17)
def test_ghm_c_is_unchanged(deterministic, momentum, n):
    want = _ghm_steps(dict(momentum=momentum), n=n)
    with deterministic():
        got = _ghm_steps(dict(momentum=momentum), n=n)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_ghm_r_and_the_iou_balanced_losses_are_unchanged(deterministic):
    g = torch.Generator().manual_seed(5)
    pred, target = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
    weight = (torch.rand(500, 4, generator=g) > 0.3).float()
    logits, targets = _with_ignored(2000, 30, seed=9)
    logits, targets = logits.float().view(400, 5), targets.view(400, 5)
    ious, box_ious = torch.rand(400, 5, generator=g), torch.rand(500, generator=g)

    def run():
        x, p = logits.clone().requires_grad_(), pred.clone().requires_grad_()
        values = [detlosses.ghmr_loss(p, target, weight), detlosses.iou_balanced_focal_loss(x, targets, ious),
                  detlosses.iou_balanced_smooth_l1_loss(p, target, box_ious)]
        sum(values).backward()
        return [v.detach() for v in values] + [x.grad, p.grad]

    want = run()
    with deterministic():
        got = run()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1000, 1 << 17])  # one histogram; interleaved copies
def test_deterministic_bin_counts_equal_the_histogram(deterministic, n):
    """Under deterministic algorithms the counts come from an integer scatter, not ``histc``: the
    same counts, the invalid elements left out of every bin."""
    g = torch.Generator().manual_seed(n)
    grad_norms = torch.rand(n, generator=g)
    grad_norms[:7] = 1.0  # the last edge's own bin
    valid = torch.rand(n, generator=g) > 0.2
    edges = torch.linspace(0, 1, 31)
    edges[-1] += 1e-6
    index, counts = gradient_bin_counts(grad_norms, valid, edges)
    with deterministic():
        index_d, counts_d = gradient_bin_counts(grad_norms, valid, edges)
    assert torch.equal(index_d, index)
    assert counts_d.dtype == torch.float64
    assert torch.equal(counts_d, counts)
    assert counts_d.sum() == valid.sum()


@CUDA
def test_every_loss_runs_on_cuda_and_repeats_its_bits(deterministic):
    """``histc`` raises on CUDA in this mode; every loss must run and give the same bits twice
    (the engine's float64 sums are scattered in a fixed order then)."""
    logits, targets = _with_ignored(200_000, 600, seed=11)
    logits, targets = logits.float().cuda(), targets.cuda()
    with deterministic():
        first, second = _all_four(logits, targets), _all_four(logits, targets)
        ghm = [torch.autograd.grad(detlosses.ghmc_loss(x, targets.clamp(min=0), (targets >= 0).float()), x)[0]
               for x in (logits.clone().requires_grad_(), logits.clone().requires_grad_())]
    for name in first:
        for a, b in zip(first[name], second[name], strict=True):
            assert torch.equal(a, b), name
    assert torch.equal(ghm[0], ghm[1])
    _assert_same(first, _all_four(logits, targets), rtol=1e-5)
