"""The ranking losses in the form their authors released them: a Python loop over positives.

Written from ``../shared/docs/losses.md`` with the released structure (per positive: differences
to every positive and every *relevant* negative, clamp, sums; negatives' gradients accumulated
row by row), device-agnostic. They are the benchmark's baseline: same values and gradients as
:mod:`detlosses`, ``O(P N)`` time with ``P`` sequential steps.

``limit`` processes only the first ``limit`` positives (in the released ascending-logit order),
so the benchmark can time a few iterations of a loop that would take hours and extrapolate.
Parameterized AP Loss was released without a loop, as a dense ``|S| x P`` matrix over the top
``1e5`` candidates; :func:`pap_loss_dense` is that form (``limit`` keeps the first columns).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _relevant(logits: Tensor, targets: Tensor, delta: float, positive: Tensor):
    fg_logits = logits[positive]
    threshold = fg_logits.min() - delta
    relevant_bg = (targets == 0) & (logits >= threshold)
    return fg_logits, relevant_bg, logits[relevant_bg]


def _h(x: Tensor, delta: float) -> Tensor:
    if delta == 0:
        return (x >= 0).to(x.dtype)
    return torch.clamp(x / (2 * delta) + 0.5, min=0, max=1)


class APLossLoop(torch.autograd.Function):
    """Interpolated AP-Loss, released loop form (cccorn/AP-loss, aLRP repo's APLoss)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, delta: float = 1.0, limit: int | None = None):  # type: ignore[override]
        grads = torch.zeros_like(logits)
        positive = targets == 1
        fg_logits, relevant_bg, bg_logits = _relevant(logits, targets, delta, positive)
        fg_num = fg_logits.numel()
        bg_grad = torch.zeros_like(bg_logits)
        fg_grad = torch.zeros_like(fg_logits)
        prec = torch.zeros_like(fg_logits)
        max_prec = 0.0
        order = torch.argsort(fg_logits)
        for ii in order[:limit]:
            fg_rel = _h(fg_logits - fg_logits[ii], delta)
            fg_rel[ii] = 0
            bg_rel = _h(bg_logits - fg_logits[ii], delta)
            rank_pos = 1 + fg_rel.sum()
            fp_num = bg_rel.sum()
            rank = rank_pos + fp_num
            current = rank_pos / rank
            if max_prec <= current:
                max_prec = current
                bg_grad += bg_rel / rank
            else:
                bg_grad += bg_rel / rank * ((1 - max_prec) / (1 - current))
            fg_grad[ii] = -(1 - max_prec)
            prec[ii] = max_prec
        grads[positive] = fg_grad
        grads[relevant_bg] = bg_grad
        grads /= fg_num
        ctx.save_for_backward(grads)
        return 1 - prec.mean()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (grads,) = ctx.saved_tensors
        return grads * grad_out, None, None, None


class ALRPLossLoop(torch.autograd.Function):
    """aLRP classification part, released loop form (kemaloksuz/aLRPLoss)."""

    @staticmethod
    def forward(ctx, logits, targets, loc_errors, delta: float = 1.0, eps: float = 1e-5, limit=None):  # type: ignore[override]
        grads = torch.zeros_like(logits)
        positive = targets == 1
        fg_logits, relevant_bg, bg_logits = _relevant(logits, targets, delta, positive)
        fg_num = fg_logits.numel()
        bg_grad = torch.zeros_like(bg_logits)
        fg_grad = torch.zeros_like(fg_logits)
        rank = torch.zeros_like(fg_logits)
        prec = torch.zeros_like(fg_logits)
        order = torch.argsort(fg_logits)
        for ii in order[:limit]:
            fg_rel = _h(fg_logits - fg_logits[ii], delta)
            fg_rel[ii] = 0
            bg_rel = _h(bg_logits - fg_logits[ii], delta)
            rank_pos = 1 + fg_rel.sum()
            fp_num = bg_rel.sum()
            rank[ii] = rank_pos + fp_num
            prec[ii] = rank_pos / rank[ii]
            if fp_num > eps:
                fg_grad[ii] = -((fg_rel * loc_errors).sum() + fp_num) / rank[ii]
                bg_grad += bg_rel * (-fg_grad[ii] / fp_num)
        grads[positive] = fg_grad
        grads[relevant_bg] = bg_grad
        grads /= fg_num
        ctx.save_for_backward(grads)
        ctx.mark_non_differentiable(rank, order)
        return 1 - prec.mean(), rank, order

    @staticmethod
    def backward(ctx, grad_out, *_):  # type: ignore[override]
        (grads,) = ctx.saved_tensors
        return grads * grad_out, None, None, None, None, None


def alrp_loss_loop(logits, targets, loc_errors, delta=1.0, limit=None):
    """(classification, localisation) as the released head computes them."""
    cls, rank, order = ALRPLossLoop.apply(logits, targets, loc_errors.detach(), delta, 1e-5, limit)
    descending = order.flip(0)
    loc = (torch.cumsum(loc_errors[descending], 0) / rank[descending].detach()).mean()
    return cls, loc


class RankSortLoop(torch.autograd.Function):
    """Rank & Sort Loss, released loop form (kemaloksuz/RankSortLoss)."""

    @staticmethod
    def forward(ctx, logits, targets, delta: float = 0.5, eps: float = 1e-10, limit=None):  # type: ignore[override]
        grads = torch.zeros_like(logits)
        positive = targets > 0
        fg_logits = logits[positive]
        fg_targets = targets[positive]
        fg_num = fg_logits.numel()
        threshold = fg_logits.min() - delta
        relevant_bg = (targets == 0) & (logits >= threshold)
        bg_logits = logits[relevant_bg]
        bg_grad = torch.zeros_like(bg_logits)
        sorting_error = torch.zeros_like(fg_logits)
        ranking_error = torch.zeros_like(fg_logits)
        fg_grad = torch.zeros_like(fg_logits)
        order = torch.argsort(fg_logits)
        for ii in order[:limit]:
            fg_rel = _h(fg_logits - fg_logits[ii], delta)
            bg_rel = _h(bg_logits - fg_logits[ii], delta)
            rank_pos = fg_rel.sum()
            fp_num = bg_rel.sum()
            rank = rank_pos + fp_num
            ranking_error[ii] = fp_num / rank
            current = (fg_rel * (1 - fg_targets)).sum() / rank_pos
            iou_rel = fg_targets >= fg_targets[ii]
            target_order = iou_rel * fg_rel
            target = (target_order * (1 - fg_targets)).sum() / target_order.sum()
            sorting_error[ii] = current - target
            if fp_num > eps:
                fg_grad[ii] -= ranking_error[ii]
                bg_grad += bg_rel * (ranking_error[ii] / fp_num)
            missorted = (~iou_rel) * fg_rel
            denom = missorted.sum()
            if denom > eps:
                fg_grad[ii] -= sorting_error[ii]
                fg_grad += missorted * (sorting_error[ii] / denom)
        grads[positive] = fg_grad / fg_num
        grads[relevant_bg] = bg_grad / fg_num
        ctx.save_for_backward(grads)
        return ranking_error.mean(), sorting_error.mean()

    @staticmethod
    def backward(ctx, grad_rank, grad_sort):  # type: ignore[override]
        (grads,) = ctx.saved_tensors
        return grads * grad_rank, None, None, None, None


def _linear(x: Tensor, ctrl: Tensor) -> Tensor:
    cx, cy = ctrl[0::2], ctrl[1::2]
    index = (x[..., None] > cx).sum(-1) + (cx == 0).sum() * (x == 0) - 1
    return (cy[index + 1] - cy[index]) / (cx[index + 1] - cx[index]) * (x - cx[index]) + cy[index]


def pap_loss_dense(logits, targets, ious, ctrl: Tensor, topk: int = 100_000, limit=None):
    """Parameterized AP Loss, released dense form (searched control points, top-k candidates)."""
    pos = targets == 1
    pos_logits, pos_ious = logits[pos], ious[pos]
    if limit is not None:
        pos_logits, pos_ious = pos_logits[:limit], pos_ious[:limit]
    valid = targets != -1
    all_logits = logits[valid]
    all_ious = torch.where(targets == 1, ious, torch.zeros_like(ious))[valid]
    if all_logits.numel() > topk:
        all_logits, idx = torch.topk(all_logits, topk)
        all_ious = all_ious[idx]
    diff = all_logits[:, None] - pos_logits[None, :]
    norm = torch.clamp(diff / 2 + 0.5, 0, 1)
    h1 = _linear(norm, ctrl[4]).detach()
    h2 = _linear(norm, ctrl[0])
    i2 = _linear(all_ious, ctrl[1])[:, None]
    i3 = _linear(pos_ious, ctrl[2])[None, :]
    i1 = _linear(pos_ious, ctrl[3])
    loss = (1 - i1) + (h2 * (1 - i2) * i3).sum(0) / h1.sum(0)
    return loss.sum() / pos_logits.numel()
