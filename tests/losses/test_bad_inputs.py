"""Every bad input raises a ValueError that names the problem."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

import detlosses
from detlosses.losses import weight_reduce_loss

X = torch.randn(6, 2)
T = torch.tensor([[1, 0], [0, 0], [1, -1], [0, 0], [0, 1], [0, 0]])
E = torch.rand(3)
U = torch.rand(6, 2)


@pytest.mark.parametrize("call", [
    lambda x, t: detlosses.ap_loss(x, t),
    lambda x, t: detlosses.alrp_loss(x, t, torch.rand(int((t == 1).sum()))),
    lambda x, t: detlosses.parameterized_ap_loss(x, t, torch.rand(6, 2)),
])
class TestTernaryLosses:
    def test_shape_mismatch(self, call):
        with pytest.raises(ValueError, match=r"targets must have the shape of logits \(6, 2\), got \(12,\)"):
            call(X, T.reshape(-1))

    @pytest.mark.parametrize("bad", [2, 0.5, -3])
    def test_target_outside_the_allowed_set(self, call, bad):
        t = T.clone().double()
        t[1, 1] = bad
        with pytest.raises(ValueError, match=f"value {bad:g} outside the allowed set"):
            call(X, t)

    @pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "Inf"), (-float("inf"), "Inf")])
    def test_non_finite_logits(self, call, bad, word):
        x = X.clone()
        x[2, 0] = bad
        with pytest.raises(ValueError, match=f"logits contains {word}"):
            call(x, T)

    def test_integer_logits(self, call):
        with pytest.raises(ValueError, match="logits must have a floating-point dtype"):
            call(torch.ones(6, 2, dtype=torch.long), T)

    def test_not_a_tensor(self, call):
        with pytest.raises(ValueError, match="logits must be a torch.Tensor"):
            call(X.tolist(), T)


def test_bad_delta():
    with pytest.raises(ValueError, match="delta must be a finite number >= 0"):
        detlosses.ap_loss(X, T, delta=-1)
    with pytest.raises(ValueError, match="delta must be a finite number >= 0"):
        detlosses.rank_sort_loss(X, T.double(), delta=float("nan"))


def test_loc_errors_problems():
    with pytest.raises(ValueError, match="loc_errors has 2 entries but targets has 3 positives"):
        detlosses.alrp_loss(X, T, torch.rand(2))
    with pytest.raises(ValueError, match="loc_errors must be 1-D"):
        detlosses.alrp_loss(X, T, torch.rand(3, 1))
    with pytest.raises(ValueError, match="loc_errors contains NaN"):
        detlosses.alrp_loss(X, T, torch.tensor([0.1, float("nan"), 0.2]))


def test_rank_sort_targets():
    t = T.double()
    t[0, 0] = 1.5
    with pytest.raises(ValueError, match=r"targets has value 1.5 > 1"):
        detlosses.rank_sort_loss(X, t)
    t[0, 0] = float("nan")
    with pytest.raises(ValueError, match="targets contains NaN"):
        detlosses.rank_sort_loss(X, t)


@pytest.mark.parametrize("params, message", [
    ("nonsense", "unknown params preset 'nonsense'"),
    (torch.rand(3, 12), r"must have shape \(5, 12\) or \(4, 12\)"),
    (torch.rand(5, 10), r"must have shape \(5, 12\) or \(4, 12\)"),
    ([[0, 0, 0.5, 0.2, 0.4, 0.3, 0.6, 0.5, 0.8, 0.7, 1, 1]] * 5, "x must be non-decreasing"),
    ([[0, 0, 0.2, 0.5, 0.4, 0.3, 0.6, 0.5, 0.8, 0.7, 1, 1]] * 5, "y must be non-decreasing"),
    ([[0.1, 0, 0.2, 0.2, 0.4, 0.3, 0.6, 0.5, 0.8, 0.7, 1, 1]] * 5, "x must start at 0 and end at 1"),
    ([[0, 0, 0.2, 0.2, 0.4, float("nan"), 0.6, 0.5, 0.8, 0.7, 1, 1]] * 5, "contains NaN"),
    ("x" * 0 + "[", "unknown params preset"),
])
def test_malformed_params(params, message):
    with pytest.raises(ValueError, match=message):
        detlosses.parameterized_ap_loss(X, T, U, params=params)


def test_pap_ious_and_topk():
    with pytest.raises(ValueError, match=r"ious must have the shape of logits \(6, 2\), or be 1-D with one "
                                         r"entry per positive, got \(2, 6\)"):
        detlosses.parameterized_ap_loss(X, T, torch.rand(2, 6))
    with pytest.raises(ValueError, match=r"ious has 6 entries but targets has 3 positives"):
        detlosses.parameterized_ap_loss(X, T, torch.rand(6))  # 1-D: one per positive
    with pytest.raises(ValueError, match=r"ious must lie in \[0, 1\], got 1.5"):
        detlosses.parameterized_ap_loss(X, T, torch.tensor([0.5, 1.5, 0.2]))
    bad = U.clone()
    bad[0, 0] = 1.5  # at a positive
    with pytest.raises(ValueError, match=r"ious at the positives must lie in \[0, 1\], got 1.5"):
        detlosses.parameterized_ap_loss(X, T, bad)
    with pytest.raises(ValueError, match="topk must be None or a positive integer"):
        detlosses.parameterized_ap_loss(X, T, U, topk=0)
    with pytest.raises(ValueError, match="reg_weight must be a finite number > 0"):
        detlosses.parameterized_ap_loss(X, T, U, reg_weight=-1.0)


def test_ghm_and_iou_balanced_inputs():
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        detlosses.GHMC(bins=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        detlosses.GHMR(momentum=1.0)
    with pytest.raises(ValueError, match="GHMC targets must be binary"):
        detlosses.GHMC()(torch.randn(4, 2), torch.full((4, 2), 0.5))
    with pytest.raises(ValueError, match=r"weight must have the shape of logits"):
        detlosses.GHMC()(torch.randn(4, 2), torch.zeros(4, 2), torch.ones(3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        detlosses.GHMC()(torch.randn(4, 2), torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match="pred contains NaN"):
        detlosses.GHMR()(torch.tensor([[float("nan")] * 4]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"ious must have shape \(6, 2\) or \(6,\)"):
        detlosses.iou_balanced_focal_loss(X, T.clamp_min(0), torch.rand(5))
    with pytest.raises(ValueError, match=r"ious must lie in \[0, 1\]"):
        detlosses.iou_balanced_smooth_l1_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="avg_factor can only be used"):
        detlosses.iou_balanced_smooth_l1_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.rand(2), avg_factor=2.0,
                                              reduction="sum")
    for bad, message in ((-1.0, "avg_factor must be a finite number >= 0, got -1.0"),
                         (float("nan"), "avg_factor must be a finite number >= 0, got nan"),
                         ("n", "avg_factor must be a number, got 'n'"),
                         (torch.tensor(-2.0), "avg_factor must be >= 0, got -2"),
                         (torch.tensor(float("inf")), "avg_factor contains Inf"),
                         (torch.tensor([3.0, float("nan")]), "avg_factor contains NaN")):
        with pytest.raises(ValueError, match=re.escape(message)):
            detlosses.iou_balanced_focal_loss(X, T, torch.rand(6, 2), avg_factor=bad)
        with pytest.raises(ValueError, match=re.escape(message)):
            detlosses.iou_balanced_smooth_l1_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.rand(2), avg_factor=bad)


def test_weight_reduce_loss_helper():
    """The public mmdetection-style helper: the same avg_factor rules as the losses built on it."""
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert weight_reduce_loss(loss, avg_factor=torch.tensor(2.0)).item() == 3.0
    assert weight_reduce_loss(torch.zeros(0)).item() == 0.0  # the mean of nothing
    assert weight_reduce_loss(torch.zeros(0), avg_factor=0.0).item() == 0.0
    with pytest.raises(ValueError, match="avg_factor must be >= 0, got -1"):
        weight_reduce_loss(loss, avg_factor=torch.tensor(-1.0))
    with pytest.raises(ValueError, match="avg_factor must be a finite number >= 0, got -3.0"):
        weight_reduce_loss(loss, avg_factor=-3)


def test_weights_of_the_elementwise_losses():
    """A weight of the loss's shape or one per anchor / box; anything else, NaN, Inf or a negative
    weight is named (before: a raw broadcasting error, or a NaN or negative loss)."""
    logits, targets, ious = torch.randn(10, 3), torch.zeros(10, 3), torch.rand(10, 3)
    deltas = torch.randn(10, 4)
    for bad, message in ((torch.ones(7), r"weight must have the shape of logits \(10, 3\) or \(10,\), got \(7,\)"),
                         ("w", "weight must be a torch.Tensor, got str"),
                         (torch.full((10, 3), float("nan")), "weight contains NaN"),
                         (torch.full((10,), float("inf")), "weight contains Inf"),
                         (-torch.ones(10, 3), "weight must be >= 0, got -1")):
        with pytest.raises(ValueError, match=message):
            detlosses.iou_balanced_focal_loss(logits, targets, ious, weight=bad)
        with pytest.raises(ValueError, match=message.replace("logits", "pred").replace("10, 3", "10, 4")):
            detlosses.iou_balanced_smooth_l1_loss(deltas, deltas * 0, ious[:, 0],
                                                  weight=bad if not isinstance(bad, Tensor) or bad.shape != (10, 3)
                                                  else bad[:, :1].expand(10, 4))
    with pytest.raises(ValueError, match=r"weight must have the shape of logits \(10, 3\) or \(10,\), got \(3,\)"):
        detlosses.GHMC()(logits, targets, torch.ones(3))


@pytest.mark.parametrize("bad, message", [(float("nan"), "weight contains NaN"), (float("inf"), "weight contains Inf"),
                                          (-1.0, "weight must be >= 0, got -1")])
def test_ghm_label_weights_are_checked(bad, message):
    """Before: a NaN weight gave GHM-R a NaN loss, an infinite one GHM-C a finite, wrong one."""
    with pytest.raises(ValueError, match=message):
        detlosses.ghmc_loss(torch.randn(10, 3), torch.zeros(10, 3), torch.full((10, 3), bad))
    with pytest.raises(ValueError, match=message):
        detlosses.ghmr_loss(torch.randn(10, 4), torch.zeros(10, 4), torch.full((10, 4), bad))
