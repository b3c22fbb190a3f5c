"""deferred_checks: several losses' value checks in one host read, errors still named."""

from __future__ import annotations

import pytest
import torch
from benchmarks.launches import count_operators

import detlosses
from detlosses.losses import GHMC, GHMR, _validation, deferred_checks


def _two_losses(logits, targets, pred, target):
    return GHMC(momentum=0.0)(logits, targets) + GHMR(momentum=0.0)(pred, target)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(200, 3, generator=g)
    targets = (torch.rand(200, 3, generator=g) < 0.1).float()
    pred, target = torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g)
    return logits, targets, pred, target


def test_one_read_for_two_losses_and_the_same_values():
    inputs = _inputs()
    alone = count_operators(lambda: _two_losses(*inputs))

    def deferred():
        with deferred_checks():
            return _two_losses(*inputs)

    together = count_operators(deferred)
    assert alone.syncs == 2 and together.syncs == 1
    torch.testing.assert_close(deferred(), _two_losses(*inputs), rtol=0, atol=0)


@pytest.mark.parametrize("where, name", [("logits", "logits"), ("pred", "pred"), ("targets", "GHMC targets")])
def test_a_failed_check_is_named_when_the_block_ends(where, name):
    logits, targets, pred, target = _inputs()
    if where == "logits":
        logits[3, 1] = float("nan")
    elif where == "pred":
        pred[2, 0] = float("inf")
    else:
        targets[0, 0] = 0.5
    with pytest.raises(ValueError, match=name), deferred_checks():
        _two_losses(logits, targets, pred, target)
    assert _validation.pending_checks() is None


def test_an_error_inside_the_block_is_not_masked_and_nothing_stays_pending():
    logits, targets, pred, target = _inputs()
    logits[0, 0] = float("nan")  # would fail the deferred check
    with pytest.raises(KeyError), deferred_checks():
        GHMC(momentum=0.0)(logits, targets)
        raise KeyError("the block's own error")
    assert _validation.pending_checks() is None
    _two_losses(*_inputs())  # reads at once again


def test_nested_blocks_read_once_at_the_outer_end():
    logits, targets, pred, target = _inputs()
    pred[0, 0] = float("nan")
    with pytest.raises(ValueError, match="pred"), deferred_checks():
        with deferred_checks():
            _two_losses(logits, targets, pred, target)
        assert len(_validation.pending_checks()) == 2  # still pending after the inner block


def test_validation_off_defers_nothing():
    logits, targets, pred, target = _inputs()
    pred[0, 0] = float("nan")
    detlosses.set_validate_args(False)
    try:
        with deferred_checks():
            _two_losses(logits, targets, pred, target)
            assert _validation.pending_checks() == []
    finally:
        detlosses.set_validate_args(True)


def test_a_criterion_names_a_bad_box_prediction():
    """A detector criterion defers its losses' checks to the end of its call: still a ValueError."""
    from benchmarks.launches import fake_detection_batch

    from detlosses.models import DenseAssignment, build_criterion

    fake = fake_detection_batch(images=1, anchors=2_000)
    head = {k: v.clone() for k, v in fake["head"].items()}
    head["bbox_regression"].view(-1)[: head["bbox_regression"].numel() // 2] = float("nan")
    batch = DenseAssignment.from_matches(fake["targets"], head, fake["anchors"], fake["matched"], fake["box_coder"])
    with pytest.raises(ValueError, match="pred"):
        build_criterion("ghm")(batch)
    assert _validation.pending_checks() is None


def test_a_block_holds_its_own_threads_checks_only():
    import threading

    logits, targets, pred, target = _inputs()
    pred[0, 0] = float("nan")
    errors = []

    def other_thread():  # no block here: its checks read at once and raise at once
        try:
            _two_losses(logits, targets, pred, target)
        except ValueError as error:
            errors.append(error)

    with deferred_checks():
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert _validation.pending_checks() == []
    assert len(errors) == 1 and "pred" in str(errors[0])


@pytest.mark.parametrize("rule, allowed", [("ternary", (-1, 0, 1)), ("binary", (0, 1))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.int8])
def test_set_rules_accept_exactly_their_values(rule, allowed, dtype):
    """"ternary"/"binary" read a range and (floating point) the elements with a fraction: every
    allowed value passes, anything else (a fraction, one beyond the range, NaN, Inf) is named."""
    good = torch.tensor(allowed * 50, dtype=dtype)
    _validation.fused_checks((good, "targets", rule))
    bad_values = [allowed[0] - 1, allowed[-1] + 1]
    if dtype.is_floating_point:
        bad_values += [0.5, -0.25, 1 - 2**-20, float("nan"), float("inf")]
    for bad in bad_values:
        values = good.clone()
        values[17] = bad
        with pytest.raises(ValueError, match="targets"):
            _validation.fused_checks((values, "targets", rule))
    _validation.fused_checks((torch.tensor([True, False]), "targets", rule))  # booleans are in any set
