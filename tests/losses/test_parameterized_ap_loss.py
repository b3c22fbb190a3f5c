"""Parameterized AP Loss against a dense autograd reference; presets, params files, gradcheck."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import detlosses
from detlosses.losses.pap_params import (
    IDENTITY_THETA,
    PRESETS,
    PAPParams,
    control_points_from_theta,
    load_pap_params,
    resolve_params,
    save_pap_params,
)

from . import reference
from .strategies import ranking_batches

RETINANET = PRESETS["retinanet"].control_points
FORMS = ["retinanet", "retinanet4", "faster_rcnn_rpn", "linear", "square", "sigmoid"]


def reference_args(form):
    if form == "retinanet4":
        return "searched", RETINANET[:4].tolist()
    if form in ("linear", "square", "sigmoid"):
        return form, None
    return "searched", PRESETS[form].control_points.tolist()


def params_for(form):
    return RETINANET[:4] if form == "retinanet4" else form


def compare(logits, targets, ious, form, topk=None):
    x = logits.clone().requires_grad_(True)
    u = ious.clone().requires_grad_(True)
    loss = detlosses.parameterized_ap_loss(x, targets, u, params=params_for(form), topk=topk)
    xr = logits.clone().requires_grad_(True)
    ur = ious.clone().requires_grad_(True)
    kind, control = reference_args(form)
    ref = reference.parameterized_ap_loss(xr, targets, ur, kind, control, topk)
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    loss.backward()
    ref.backward()
    for got, want in ((x.grad, xr.grad), (u.grad, ur.grad)):
        want = torch.zeros_like(got) if want is None else want
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)


@given(batch=ranking_batches(max_size=160), form=st.sampled_from(FORMS), use_topk=st.booleans(),
       seed=st.integers(0, 1000))
def test_matches_dense_reference(batch, form, use_topk, seed):
    logits, targets, _ = batch
    # continuous logits (ties between distinct entries would sit on kinks of H2)
    logits = logits + 1e-3 * torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed),
                                        dtype=torch.float64)
    ious = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    topk = max(1, logits.numel() // 2) if use_topk else None
    compare(logits, targets, ious, form, topk)


@pytest.mark.parametrize("form", ["retinanet", "linear", "square"])
def test_large_batch(form):
    n, p = 60_000, 50
    g = torch.Generator().manual_seed(2)
    logits = -4.6 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    targets = torch.zeros(n, dtype=torch.long)
    targets[torch.randperm(n, generator=g)[:p]] = 1
    targets[torch.randperm(n, generator=g)[:500]] = -1
    ious = torch.rand(n, generator=g, dtype=torch.float64)
    compare(logits, targets, ious, form)


def test_released_topk_cut():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3000, generator=g, dtype=torch.float64)
    targets = (torch.rand(3000, generator=g) < 0.05).long()
    ious = torch.rand(3000, generator=g, dtype=torch.float64)
    compare(logits, targets, ious, "retinanet", topk=1000)


@pytest.mark.parametrize("form", ["retinanet", "faster_rcnn_rpn"])
def test_ious_on_the_control_points(form):
    """Soft IoUs exactly on the I-functions' control points (and at 0 and 1): the value and the
    one-sided slopes the released code takes there (the left segment at an inner point, the first
    at 0), for the loss and for the gradient of the ious."""
    knots = sorted({x for row in PRESETS[form].control_points[1:4].tolist() for x in row[0::2]} | {0.0, 1.0})
    g = torch.Generator().manual_seed(5)
    n = 4 * len(knots) + 40
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    targets = torch.zeros(n, dtype=torch.long)
    targets[: 2 * len(knots)] = 1
    ious = torch.rand(n, generator=g, dtype=torch.float64)
    ious[: 2 * len(knots)] = torch.tensor(knots * 2, dtype=torch.float64)
    compare(logits, targets, ious, form)


@pytest.mark.parametrize("form", ["retinanet", "linear", "square", "sigmoid", "four_functions"])
def test_written_out_gradients_pass_gradcheck(form):
    """The explicit gradients against finite differences: w.r.t. the ious for every form, and
    w.r.t. the logits (as points and as queries) where ``H1`` is the exact step, whose detached
    derivative is 0 anyway (elsewhere ``H1`` is detached by definition; the dense reference test
    checks those gradients)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, generator=g, dtype=torch.float64)
    targets = (torch.rand(60, generator=g) < 0.2).long()
    targets[torch.rand(60, generator=g) < 0.1] = -1
    targets[:2] = 1
    ious = 0.05 + 0.9 * torch.rand(60, generator=g, dtype=torch.float64)

    params = PAPParams("searched", RETINANET[:4]) if form == "four_functions" else form

    def f(x, u):
        return detlosses.parameterized_ap_loss(x, targets, u, params=params, reg_weight=1.0)

    logits.requires_grad_(form == "four_functions")
    assert torch.autograd.gradcheck(f, (logits, ious.requires_grad_()), eps=1e-7, atol=1e-6)


def test_gradcheck_wrt_ious():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(60, generator=g, dtype=torch.float64)
    targets = (torch.rand(60, generator=g) < 0.2).long()
    ious = (0.05 + 0.9 * torch.rand(60, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda u: detlosses.parameterized_ap_loss(logits, targets, u, params="retinanet"), (ious,), eps=1e-7
    )


def test_reg_weight_scales_only_the_box_gradient():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(80, generator=g, dtype=torch.float64)
    targets = (torch.rand(80, generator=g) < 0.2).long()
    ious = torch.rand(80, generator=g, dtype=torch.float64)
    grads = []
    for reg_weight in (1.0, 4.0):
        x, u = logits.clone().requires_grad_(), ious.clone().requires_grad_()
        loss = detlosses.parameterized_ap_loss(x, targets, u, reg_weight=reg_weight)
        loss.backward()
        grads.append((loss.detach(), x.grad, u.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    torch.testing.assert_close(4.0 * grads[0][2], grads[1][2])
    module = detlosses.ParameterizedAPLoss("retinanet")
    assert module.reg_weight == pytest.approx(4.1231)


def test_no_positive():
    x = torch.randn(30, requires_grad=True)
    u = torch.rand(30, requires_grad=True)
    loss = detlosses.parameterized_ap_loss(x, torch.zeros(30), u)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(30)) and torch.equal(u.grad, torch.zeros(30))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(("form", "topk", "reg_weight"), [("retinanet", None, 1.0), ("linear", 500, 4.0),
                                                           ("square", None, 2.5)])
def test_one_soft_iou_per_positive_equals_ious_shaped_like_the_logits(form, topk, reg_weight, fast):
    """``ious`` given per positive (in ``targets.flatten()`` order) is the same loss as the same
    values placed at the positives of a logits-shaped tensor: value and every gradient."""
    from detlosses.ranking.engine import set_cpu_fast_paths

    g = torch.Generator().manual_seed(11)
    logits = -4.0 + torch.randn(4, 9000, generator=g, dtype=torch.float64)  # the grid, from 32,768 points
    targets = torch.zeros(4, 9000, dtype=torch.long)
    targets.view(-1)[torch.randperm(36000, generator=g)[:80]] = 1
    targets.view(-1)[torch.randperm(36000, generator=g)[:300]] = -1
    positions = (targets.view(-1) == 1).nonzero().view(-1)
    per_positive = torch.rand(positions.numel(), generator=g, dtype=torch.float64)
    dense = torch.rand(logits.shape, generator=g, dtype=torch.float64)  # other entries: ignored
    dense.view(-1)[positions] = per_positive
    set_cpu_fast_paths(fast)
    try:
        results = []
        for ious in (dense, per_positive):
            x, u = logits.clone().requires_grad_(True), ious.clone().requires_grad_(True)
            loss = detlosses.parameterized_ap_loss(x, targets, u, params=form, topk=topk, reg_weight=reg_weight)
            loss.backward()
            results.append((loss, x.grad, u.grad.reshape(-1)))
    finally:
        set_cpu_fast_paths(True)
    (loss_d, x_d, u_d), (loss_p, x_p, u_p) = results
    torch.testing.assert_close(loss_p, loss_d, rtol=0, atol=0)
    torch.testing.assert_close(x_p, x_d, rtol=0, atol=0)
    torch.testing.assert_close(u_p, u_d[positions], rtol=0, atol=0)
    assert torch.count_nonzero(u_d) <= positions.numel()  # (the dense form: no gradient off the positives)


@pytest.mark.parametrize("use_topk", [False, True])
def test_a_positive_without_h1_mass_has_no_ratio_term(use_topk):
    """A searched ``H1`` may be 0 at ``xt = 1/2`` (a positive against itself): then a positive with
    no candidate near or above it has ``sum_S H1 = 0`` even without ``topk``, and its ratio term is
    0 (value and gradients finite), while the others keep theirs."""
    control = RETINANET.clone()
    control[4] = torch.tensor([0, 0, 0.6, 0, 0.7, 0.2, 0.8, 0.5, 0.9, 0.8, 1, 1], dtype=torch.float64)
    params = PAPParams("searched", control)
    assert importlib.import_module("detlosses.losses.parameterized_ap_loss")._form_of(params).self_h1 == 0.0
    g = torch.Generator().manual_seed(9)
    logits = torch.cat([torch.tensor([6.0, -4.6], dtype=torch.float64),
                        -4.6 + 0.3 * torch.randn(60, generator=g, dtype=torch.float64)])
    targets = torch.zeros(62, dtype=torch.long)
    targets[:2] = 1
    ious = torch.rand(62, generator=g, dtype=torch.float64)
    x, u = logits.clone().requires_grad_(True), ious.clone().requires_grad_(True)
    loss = detlosses.parameterized_ap_loss(x, targets, u, params=params, topk=40 if use_topk else None)
    loss.backward()
    xr, ur = logits.clone().requires_grad_(True), ious.clone().requires_grad_(True)
    expected = reference.parameterized_ap_loss(xr, targets, ur, "searched", control.tolist(), 40 if use_topk else None)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    expected.backward()
    # the isolated positive's term is 1 - I1(u_0) alone: no gradient reaches its logit from it
    assert torch.isfinite(x.grad).all() and torch.isfinite(u.grad).all()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(u.grad, ur.grad, rtol=1e-7, atol=1e-12)


def test_identity_theta_gives_the_identity():
    points = control_points_from_theta([IDENTITY_THETA] * 5)
    for row in points:
        xs, ys = row[0::2], row[1::2]
        torch.testing.assert_close(xs, ys)
        torch.testing.assert_close(xs, torch.tensor([0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64),
                                   atol=1e-3, rtol=0)


def test_theta_mapping_is_monotone_and_validates():
    theta = torch.rand(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    points = control_points_from_theta(theta)
    resolve_params(points)  # passes validation
    with pytest.raises(ValueError, match=r"\(functions, 8\)"):
        control_points_from_theta(torch.rand(5, 7))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        control_points_from_theta(torch.full((5, 8), 1.5))


def test_params_file_round_trip(tmp_path):
    theta = torch.rand(5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = PAPParams("searched", control_points_from_theta(theta), 2.5, {"reward": 0.3})
    path = save_pap_params(params, tmp_path / "best.json")
    loaded = load_pap_params(path)
    assert loaded.reg_weight == 2.5 and loaded.metadata == {"reward": 0.3}
    torch.testing.assert_close(loaded.control_points, params.control_points, atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(100, generator=g, dtype=torch.float64)
    targets = (torch.rand(100, generator=g) < 0.1).long()
    ious = torch.rand(100, generator=g, dtype=torch.float64)
    a = detlosses.parameterized_ap_loss(logits, targets, ious, params=loaded)
    b = detlosses.parameterized_ap_loss(logits, targets, ious, params=loaded.control_points)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("content, message", [
    ("not json", "not readable JSON"),
    ('{"format": "other"}', "missing or wrong 'format'"),
    ('{"format": "detlosses-pap-params/1", "functions": {"H2": []}}', "must list the functions"),
])
def test_bad_params_files(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_pap_params(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_pap_params(tmp_path / "missing.json")
