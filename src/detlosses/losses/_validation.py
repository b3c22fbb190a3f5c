"""Input checks shared by the losses: every problem is a ``ValueError`` that names it.

Each check costs at most a couple of passes over the input (``aminmax`` finds NaN, Inf and the
value range at once), small next to the losses themselves. The ranking losses fuse all their
checks into the one host read they need anyway (the number of positives), see
:mod:`detlosses.losses._ranking`; the others can defer theirs to one read for several losses
(:func:`deferred_checks`). :func:`set_validate_args` turns the value checks off for speed,
as ``torch.distributions.Distribution.set_default_validate_args`` does (on by default); shape,
dtype and option checks, which cost nothing, always run.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "fused_checks",
    "read_with_checks",
    "deferred_checks",
    "set_validate_args",
    "validate_args_enabled",
    "check_tensor",
    "check_finite",
    "check_same_shape",
    "check_ternary_targets",
    "check_binary_targets",
    "check_continuous_targets",
    "check_unit_interval",
    "check_nonnegative",
    "check_class_indices",
    "class_index_rule",
    "check_bounded",
    "score_rule",
    "check_nonnegative_scalar",
    "BACKGROUND_LABEL",
    "IGNORED_LABEL",
]

#: per-anchor class indices: ``[0, C)`` a positive's class, these two the others (torchvision's matcher)
BACKGROUND_LABEL = -1
IGNORED_LABEL = -2


_VALIDATE_ARGS = True


def set_validate_args(value: bool) -> None:
    """Turn the checks of input *values* (NaN, Inf, target ranges) on or off for every loss.

    On by default. Off saves a few reductions per call; bad values then give undefined results.
    """
    global _VALIDATE_ARGS
    if value not in (True, False):
        raise ValueError(f"set_validate_args expects True or False, got {value!r}")
    _VALIDATE_ARGS = bool(value)


def validate_args_enabled() -> bool:
    """Whether the losses check the values of their inputs (see :func:`set_validate_args`)."""
    return _VALIDATE_ARGS


@functools.cache
def zero64(device: torch.device) -> Tensor:
    """A float64 zero on ``device`` (made once): stacked first, it makes a stack of reductions of
    any dtypes float64, so one host read returns them all exactly."""
    return torch.zeros((), dtype=torch.float64, device=device)


def check_tensor(value: object, name: str, *, floating: bool = False) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype, got {value.dtype}")
    return value


def check_finite(values: Tensor, name: str) -> None:
    """Raise if ``values`` holds NaN or +-Inf."""
    if not _VALIDATE_ARGS or values.numel() == 0 or not values.is_floating_point():
        return
    low, high = torch.aminmax(values.detach())
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"{name} contains NaN")
    if math.isinf(low) or math.isinf(high):
        raise ValueError(f"{name} contains Inf (values must be finite)")


def check_same_shape(values: Tensor, name: str, reference: Tensor, reference_name: str) -> None:
    if values.shape != reference.shape:
        raise ValueError(
            f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, "
            f"got {tuple(values.shape)}"
        )
    if values.device != reference.device:
        raise ValueError(f"{name} is on {values.device} but {reference_name} is on {reference.device}")


def check_ternary_targets(targets: Tensor, name: str = "targets") -> None:
    """Targets must be 1 (positive), 0 (negative) or -1 (ignored)."""
    if not _VALIDATE_ARGS or targets.numel() == 0:
        return
    if targets.dtype == torch.bool:
        return
    t = targets.detach()
    low, high = (float(v) for v in torch.aminmax(t))
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"{name} contains NaN; allowed values are 1 (positive), 0 (negative), -1 (ignored)")
    if low < -1 or high > 1:
        bad = low if low < -1 else high
        raise ValueError(
            f"{name} has value {bad:g} outside the allowed set {{1 (positive), 0 (negative), -1 (ignored)}}"
        )
    if t.is_floating_point():
        fractional = t != t.round()
        if bool(fractional.any()):
            bad = float(t[fractional][0])
            raise ValueError(
                f"{name} has value {bad:g} outside the allowed set {{1 (positive), 0 (negative), -1 (ignored)}}"
            )


def check_binary_targets(targets: Tensor, name: str = "targets") -> None:
    """Raise unless every target is 0 or 1."""
    if not _VALIDATE_ARGS or targets.numel() == 0:
        return
    if bool(((targets != 0) & (targets != 1)).any()):
        bad = targets[(targets != 0) & (targets != 1)].flatten()[:5].tolist()
        raise ValueError(f"{name} must be binary (0 or 1) per element; got values such as {bad}")


def check_continuous_targets(targets: Tensor, name: str = "targets") -> None:
    """Rank & Sort targets: ``(0, 1]`` positive (its IoU target), ``0`` negative, ``< 0`` ignored."""
    if not _VALIDATE_ARGS or targets.numel() == 0:
        return
    if not targets.is_floating_point():
        low, high = (float(v) for v in torch.aminmax(targets.detach()))
    else:
        low, high = (float(v) for v in torch.aminmax(targets.detach()))
        if math.isnan(low) or math.isnan(high):
            raise ValueError(f"{name} contains NaN")
    if high > 1.0:
        raise ValueError(
            f"{name} has value {high:g} > 1; positives carry their IoU target in (0, 1], "
            "negatives 0, ignored entries a negative value"
        )


def check_unit_interval(values: Tensor, name: str) -> None:
    """All values finite and in ``[0, 1]``."""
    if not _VALIDATE_ARGS or values.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(values.detach()))
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"{name} contains NaN")
    if low < 0.0 or high > 1.0:
        bad = low if low < 0.0 else high
        raise ValueError(f"{name} must lie in [0, 1], got {bad:g}")


def check_nonnegative(values: Tensor, name: str) -> None:
    """All values finite and ``>= 0`` (e.g. an ``avg_factor`` given as a tensor)."""
    if not _VALIDATE_ARGS or values.numel() == 0:
        return
    check_finite(values, name)
    low = float(values.detach().min())
    if low < 0.0:
        raise ValueError(f"{name} must be >= 0, got {low:g}")


def check_bounded(values: Tensor, name: str, limit: float) -> None:
    """All values finite and within ``(-limit, limit)`` (ranking scores: :func:`score_rule`)."""
    if not _VALIDATE_ARGS or values.numel() == 0:
        return
    check_finite(values, name)
    worst = float(values.detach().abs().max())
    if worst >= limit:
        raise ValueError(
            f"{name} reach {worst:.3g}: beyond +-{limit:.3g} the ranking loss's sums lose their precision; "
            "logits this large usually mean that the model has diverged"
        )


def score_rule(limit: float) -> str:
    """The value-check rule of ranking scores: finite and within ``(-limit, limit)``
    (:func:`check_bounded`; the limit: :meth:`~detlosses.ranking.HingeKernels.score_limit`)."""
    return f"{_BOUNDED_RULE}{float(limit)!r}"


def check_class_indices(labels: Tensor, name: str, num_classes: int) -> None:
    """Per-anchor class indices: each in ``[0, num_classes)`` (a positive's class), ``-1``
    (background) or ``-2`` (ignored)."""
    if not _VALIDATE_ARGS or labels.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(labels.detach()))
    if low < IGNORED_LABEL or high >= num_classes:
        bad = low if low < IGNORED_LABEL else high
        raise ValueError(
            f"{name} has class index {bad} outside [0, {num_classes}) and not -1 (background) or -2 (ignored)"
        )


def class_index_rule(num_classes: int) -> str:
    """The value-check rule of per-anchor class indices for ``num_classes`` classes
    (:func:`check_class_indices`)."""
    return f"{_CLASS_INDEX_RULE}{int(num_classes)}"


def check_nonnegative_scalar(value: float, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


Check = tuple[Tensor, str, str]
_SET_RULES = ("ternary", "binary")  # values from a small set of integers: a range, and no fraction
_CLASS_INDEX_RULE = "class index <"  # + the number of classes: class_index_rule
_BOUNDED_RULE = "finite within +-"  # + the limit: score_rule
_PENDING = threading.local()  # .groups: the checks a deferred_checks block holds (per thread)
Group = tuple[tuple[Check, ...], list[list[Tensor]]]  # the checks and, per check, its reductions


def pending_checks() -> list[Group] | None:
    """The checks held by this thread's :func:`deferred_checks` block (``None``: no block)."""
    return getattr(_PENDING, "groups", None)


def _reductions(values: Tensor, rule: str) -> list[Tensor]:
    """What one check reads back: ``[min, max]``, and for ``"ternary"``/``"binary"`` floating-point
    values the number of elements with a fraction (NaN and Inf have one): three passes over the
    values instead of one comparison per allowed value (boolean values: nothing, they are in the set)."""
    v = values.detach() if torch.is_grad_enabled() else values  # (under no_grad: no graph to cut)
    if rule in _SET_RULES and v.dtype == torch.bool:
        return []
    reductions = list(torch.aminmax(v))
    if rule in _SET_RULES and v.is_floating_point():
        reductions.append(torch.count_nonzero(torch.frac(v)))
    return reductions


def fused_checks(*checks: Check) -> None:
    """Value checks of several tensors in one host read (nothing when validation is off).

    Each check is ``(values, name, rule)`` with ``rule`` ``"finite"`` (no NaN/Inf), ``"unit"``
    (finite, in ``[0, 1]``), ``"nonnegative"`` (finite, ``>= 0``), ``"ternary"`` (1, 0 or -1), ``"binary"`` (0 or 1) or
    :func:`class_index_rule` (per-anchor class indices, -1 and -2 included) or :func:`score_rule`
    (finite ranking scores within a limit). Their reductions
    are stacked and read back at once — or, inside :func:`deferred_checks`, when the block ends;
    only when one fails are the detailed checks run, to name the problem.
    """
    if not _VALIDATE_ARGS:
        return
    group = _group(checks)
    if not group[0]:
        return
    pending = pending_checks()
    if pending is not None:
        pending.append(group)
        return
    _judge([group])


def _group(checks: tuple[Check, ...]) -> Group:
    """The non-empty checks and their reductions."""
    checks = tuple(c for c in checks if c[0].numel())
    return checks, [_reductions(values, rule) for values, _, rule in checks]


def read_with_checks(leading: list[Tensor], *checks: Check) -> list[float]:
    """``leading`` values (e.g. a count the caller needs) read back in the same host read as the
    value checks of ``checks`` (judged as :func:`fused_checks` judges them, at once: never deferred);
    returns the leading values. Nothing is checked when validation is off."""
    return _judge([_group(checks)] if _VALIDATE_ARGS else [], leading)


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    """Read the value checks of every loss called in the block at once, when it ends.

    A detector criterion that calls two losses (GHM-C and GHM-R, say) would otherwise read the
    device twice per step; each read makes the host wait for the device. A failed check raises
    its ``ValueError`` when the block ends (not if the block itself raised). Losses that must read
    the device anyway (the ranking losses: their number of positives) still check at once. The
    block holds the checks of its own thread only (``nn.DataParallel`` runs replicas in threads).
    """
    if pending_checks() is not None:  # nested: the outer block reads
        yield
        return
    _PENDING.groups = pending = []
    try:
        yield
    finally:
        _PENDING.groups = None
    if pending:
        _judge(pending)


def range_passes(rule: str, low: float, high: float) -> bool:
    """Whether the ``(min, max)`` read back of some values passes ``rule``: ``"finite"``, ``"unit"``
    (finite, in ``[0, 1]``), ``"nonnegative"`` (finite, ``>= 0``), ``"continuous"`` (Rank & Sort
    targets: no NaN, at most 1), ``"ternary"`` (from -1 to 1) or ``"binary"`` (from 0 to 1), for
    these two floating-point values must also have no fraction (read separately); or
    :func:`class_index_rule` (from -2 to the number of classes, exclusive); or :func:`score_rule`
    (finite, within its limit)."""
    if rule == "continuous":
        return not math.isnan(low) and high <= 1.0
    if rule.startswith(_CLASS_INDEX_RULE):
        return low >= IGNORED_LABEL and high < int(rule[len(_CLASS_INDEX_RULE):])
    if rule.startswith(_BOUNDED_RULE):
        limit = float(rule[len(_BOUNDED_RULE):])
        return math.isfinite(low) and math.isfinite(high) and -limit < low and high < limit
    if rule in _SET_RULES:
        return low >= (-1 if rule == "ternary" else 0) and high <= 1
    if not (math.isfinite(low) and math.isfinite(high)):
        return False
    return (rule != "unit" or (low >= 0.0 and high <= 1.0)) and (rule != "nonnegative" or low >= 0.0)


_EXPLAIN = {"ternary": check_ternary_targets, "binary": check_binary_targets, "unit": check_unit_interval,
            "continuous": check_continuous_targets, "finite": check_finite, "nonnegative": check_nonnegative}


def explain(values: Tensor, name: str, rule: str) -> None:
    """The detailed check of ``rule``, which names the problem: it raises if ``values`` fail it
    (run only once a fused read has failed: it reads the device itself)."""
    if rule.startswith(_CLASS_INDEX_RULE):
        check_class_indices(values, name, int(rule[len(_CLASS_INDEX_RULE):]))
        return
    if rule.startswith(_BOUNDED_RULE):
        check_bounded(values, name, float(rule[len(_BOUNDED_RULE):]))
        return
    _EXPLAIN[rule](values, name)


def _judge(groups: list[Group], leading: list[Tensor] | None = None) -> list[float]:
    """One host read of ``leading`` and every group's reductions; the detailed check of the first
    group that fails. Returns the leading values."""
    leading = leading or []
    reductions = [r for _, per_check in groups for reduced in per_check for r in reduced]
    if not reductions and not leading:  # boolean targets only: nothing to read
        return []
    # a float64 zero first makes the stack float64 whatever the dtypes of the reductions (exact)
    read = torch.stack([zero64((leading or reductions)[0].device), *leading, *reductions]).tolist()
    at = 1 + len(leading)
    for checks, per_check in groups:
        ok = True
        for (_, _, rule), reduced in zip(checks, per_check, strict=True):
            values, at = read[at: at + len(reduced)], at + len(reduced)
            if values:  # [min, max(, elements with a fraction)]
                ok = ok and range_passes(rule, values[0], values[1]) and values[2:] in ([], [0.0])
        if not ok:
            for values, name, rule in checks:
                explain(values, name, rule)
    return read[1:1 + len(leading)]
