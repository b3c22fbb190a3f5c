"""The static-shape path (what a CUDA graph records and replays) against the float64 references.

On the CPU ``force_static_shapes`` runs exactly the work a graph records (positives padded to a
power-of-two capacity, the padding masked out), without recording; on CUDA the graphs themselves
are recorded, replayed and compared with the eager path.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detlosses
from detlosses.losses import _graphs

from .strategies import DELTAS, ranking_batches
from .test_alrp_loss import check_against_reference as check_alrp
from .test_ap_loss import check_against_reference as check_ap
from .test_parameterized_ap_loss import compare as compare_pap
from .test_rank_sort_loss import check_against_reference as check_rank_sort

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _fresh_graphs():
    _graphs.set_cuda_graphs(True)
    _graphs.clear()
    yield
    _graphs.set_cuda_graphs(True)  # (clears them)


def test_capacity_is_a_power_of_two_of_at_least_64():
    assert [_graphs.capacity(c) for c in (1, 63, 64, 65, 128, 129, 4000)] == [64, 64, 64, 128, 128, 256, 4096]


@given(batch=ranking_batches(), delta=st.sampled_from(DELTAS), interpolate=st.booleans())
def test_ap_loss(batch, delta, interpolate):
    with _graphs.force_static_shapes():
        check_ap(batch, delta, interpolate)


@given(batch=ranking_batches(), delta=st.sampled_from(DELTAS))
def test_alrp_loss(batch, delta):
    with _graphs.force_static_shapes():
        check_alrp(batch, delta)


@given(batch=ranking_batches(continuous=True), delta=st.sampled_from(DELTAS))
def test_rank_sort_loss(batch, delta):
    with _graphs.force_static_shapes():
        check_rank_sort(batch, delta)


@given(batch=ranking_batches(max_size=160), form=st.sampled_from(["retinanet", "retinanet4", "linear", "square"]),
       seed=st.integers(0, 1000))
def test_parameterized_ap_loss(batch, form, seed):
    logits, targets, _ = batch
    logits = logits + 1e-3 * torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed),
                                        dtype=torch.float64)
    ious = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with _graphs.force_static_shapes():
        compare_pap(logits, targets, ious, form)


def _ternary(n, p, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    targets = torch.zeros(n)
    targets[torch.randperm(n, generator=g)[:p]] = 1.0
    return logits.to(device), targets.to(device)


def _all_four(logits, targets, seed=0):
    """Values and gradients of the four ranking losses (float64 copies)."""
    g = torch.Generator().manual_seed(seed)
    p = int((targets == 1).sum())
    errors = torch.rand(p, generator=g, dtype=torch.float64).to(logits.device)
    ious = torch.rand(logits.shape, generator=g, dtype=torch.float64).to(logits.device)
    iou_targets = targets * torch.rand(logits.shape, generator=g, dtype=torch.float64).clamp(min=0.05).to(
        logits.device)
    out = {}
    for name in ("ap", "alrp", "rank_sort", "pap"):
        x = logits.clone().requires_grad_(True)
        extra = None
        if name == "ap":
            value = detlosses.ap_loss(x, targets)
        elif name == "alrp":
            extra = errors.clone().requires_grad_(True)
            value = sum(detlosses.alrp_loss(x, targets, extra))
        elif name == "rank_sort":
            value = sum(detlosses.rank_sort_loss(x, iou_targets))
        else:
            extra = ious.clone().requires_grad_(True)
            value = detlosses.parameterized_ap_loss(x, targets, extra)
        value.backward()
        out[name] = [value.detach().double(), x.grad.double()] + ([] if extra is None else [extra.grad.double()])
    return out


def _assert_same(got, want, rtol=1e-7):
    for name in want:
        for a, b in zip(got[name], want[name], strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_one_capacity_serves_different_counts():
    """A later call with fewer positives in the same capacity leaves stale positions in the padding
    slots: they must not leak into any value or gradient."""
    with _graphs.force_static_shapes():
        _all_four(*_ternary(3000, 60, seed=1))  # fills 60 of the 64 slots
        logits, targets = _ternary(3000, 7, seed=2)
        got = _all_four(logits, targets)
    _assert_same(got, _all_four(logits, targets))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_converted_in_the_copy(dtype):
    """The graph copies half-precision logits into its float32 buffer (converting them there, with
    no float32 copy first): values and gradients as the eager path's."""
    logits, targets = _ternary(3000, 20, seed=6, dtype=dtype)
    with _graphs.force_static_shapes():
        got = _all_four(logits, targets)
    _assert_same(got, _all_four(logits, targets), rtol=1e-6)


def test_padding_is_masked_out_of_every_sum():
    """Planted-bug guard: without the padding mask the padded copies of the first positive count
    as positives (checked to fail by making masked() a no-op)."""
    logits, targets = _ternary(2000, 3, seed=3)
    with _graphs.force_static_shapes():
        got = _all_four(logits, targets)
    _assert_same(got, _all_four(logits, targets))
    with _graphs.force_static_shapes(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(detlosses.losses._ranking.RankingBatch, "masked", lambda self, values, fill=0.0: values)
        broken = _all_four(logits, targets)
    with pytest.raises(AssertionError):
        _assert_same(broken, got)


def test_not_used_where_it_does_not_apply():
    logits, targets = _ternary(500, 10, seed=4)
    ious = torch.rand(500, dtype=torch.float64)
    with _graphs.force_static_shapes(), pytest.MonkeyPatch.context() as patch:
        seen = []
        original = _graphs._static_batch
        patch.setattr(_graphs, "_static_batch", lambda *a: seen.append(1) or original(*a))
        detlosses.parameterized_ap_loss(logits, targets, ious, topk=100)
        detlosses.parameterized_ap_loss(logits, targets, ious, params="sigmoid")
        assert not seen
        detlosses.parameterized_ap_loss(logits, targets, ious)
        assert seen


def test_switch():
    assert _graphs.cuda_graphs_enabled()
    _graphs.set_cuda_graphs(False)
    try:
        assert not _graphs.cuda_graphs_enabled()
        assert not detlosses.losses.cuda_graphs_enabled()
    finally:
        _graphs.set_cuda_graphs(True)


# ---------------------------------------------------------------------------------- CUDA graphs


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_graphs_match_the_eager_path(dtype):
    cases = [_ternary(300_000, p, seed=p, dtype=dtype, device="cuda") for p in (700, 900, 40, 700)]
    _graphs.set_cuda_graphs(False)
    want = [_all_four(*case) for case in cases]
    _graphs.set_cuda_graphs(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed recording warns
        got = [_all_four(*case) for case in cases]
    recorded = [g for g in _graphs._GRAPHS.values() if g is not None and g.graph is not None]
    assert len(recorded) == 8  # capacities 1024 and 64, four losses
    for a, b in zip(got, want, strict=True):
        _assert_same(a, b, rtol=1e-5 if dtype == torch.float32 else 1e-9)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graphs_on_a_device_that_is_not_the_current_one():
    """Tensors on cuda:1 while cuda:0 is current (``model.to("cuda:1")`` without ``set_device``):
    the graphs must record on cuda:1. ``torch.cuda.graph``'s default stream, made on cuda:0 by the
    first recording there, would capture nothing on cuda:1, and every replay would leave the first
    call's gradients in place."""
    with torch.cuda.device(0):
        _all_four(*_ternary(300_000, 700, seed=1, device="cuda:0"))  # records on cuda:0 first
        cases = [_ternary(300_000, p, seed=p, device="cuda:1") for p in (700, 900, 800)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an empty graph warns
            got = [_all_four(*case) for case in cases]
        assert any(key[2] == torch.device("cuda:1") for key, g in _graphs._GRAPHS.items() if g is not None)
        _graphs.set_cuda_graphs(False)
        want = [_all_four(*case) for case in cases]
    for a, b in zip(got, want, strict=True):
        _assert_same(a, b, rtol=1e-9)


@CUDA
def test_cuda_graph_outputs_are_copies():
    """Two calls before one backward: the first call's gradient must survive the second replay."""
    logits, targets = _ternary(100_000, 300, seed=5, device="cuda")
    x = logits.clone().requires_grad_(True)
    first = detlosses.ap_loss(x, targets)
    other = logits.flip(0).clone().requires_grad_(True)
    detlosses.ap_loss(other, targets)
    (grad,) = torch.autograd.grad(first, x)
    _graphs.set_cuda_graphs(False)
    y = logits.clone().requires_grad_(True)
    detlosses.ap_loss(y, targets).backward()
    torch.testing.assert_close(grad, y.grad, rtol=1e-9, atol=1e-12)


@CUDA
def test_failed_recording_falls_back_with_a_warning(monkeypatch):
    logits, targets = _ternary(50_000, 30, seed=6, device="cuda")

    def fail(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(_graphs._Recorded, "__init__", fail)
    with pytest.warns(RuntimeWarning, match="planted failure"):
        loss = detlosses.ap_loss(logits, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = detlosses.ap_loss(logits, targets)  # known to fail: eager, no second warning
    _graphs.set_cuda_graphs(False)
    torch.testing.assert_close(loss, detlosses.ap_loss(logits, targets))
    torch.testing.assert_close(again, loss)


@pytest.mark.parametrize("path", ["cpu_fast_path", "device_path", "static_shapes"])
@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool])
def test_integer_targets_equal_float_targets_on_every_path(path, dtype):
    """The detector criteria pass their ternary targets as int8 (a quarter of float32's bytes):
    the same values and gradients as float targets on the CPU's fast path, the device path and
    the static shapes a CUDA graph records (ignored entries included; booleans have none)."""
    from detlosses.ranking.engine import set_cpu_fast_paths

    logits, targets = _ternary(3000, 40, seed=7)
    if dtype != torch.bool:
        targets[torch.randperm(3000, generator=torch.Generator().manual_seed(8))[:60]] = -1.0
        assert int((targets == 1).sum()) > 30
    want = _all_four(logits, targets)
    set_cpu_fast_paths(path == "cpu_fast_path")
    try:
        if path == "static_shapes":
            with _graphs.force_static_shapes():
                got = _all_four(logits, targets.to(dtype))
        else:
            got = _all_four(logits, targets.to(dtype))
    finally:
        set_cpu_fast_paths(True)
    _assert_same(got, want)
