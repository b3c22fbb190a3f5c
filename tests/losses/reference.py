"""Slow, obvious dense references of every loss, written from ``../shared/docs/losses.md``.

Float64, explicit ``P x N`` matrices and Python loops where the spec describes one; nothing here
is shared with the library's implementation (no imports from ``detlosses``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def smoothed_step(x: Tensor, delta: float) -> Tensor:
    """``H(x) = clamp(x / (2 delta) + 1/2, 0, 1)``; ``delta = 0``: ``[x >= 0]``."""
    if delta == 0:
        return (x >= 0).to(torch.float64)
    return torch.clamp(x / (2 * delta) + 0.5, 0.0, 1.0)


def _split(logits: Tensor, targets: Tensor, positive):
    s = logits.detach().to(torch.float64).reshape(-1)
    t = targets.reshape(-1)
    pos = positive(t).nonzero().squeeze(1)
    neg = (t == 0).nonzero().squeeze(1)
    return s, t, pos, neg


def ap_loss(logits: Tensor, targets: Tensor, delta: float = 1.0, interpolate: bool = True):
    """(value, gradient w.r.t. logits) of AP-Loss."""
    s, t, pos, neg = _split(logits, targets, lambda v: v == 1)
    grad = torch.zeros_like(s)
    if pos.numel() == 0:
        return torch.zeros((), dtype=torch.float64), grad.view(logits.shape)
    sp, sn = s[pos], s[neg]
    n_pos = pos.numel()
    rank_pos = torch.empty(n_pos, dtype=torch.float64)
    n_fp = torch.empty(n_pos, dtype=torch.float64)
    for i in range(n_pos):
        others = torch.cat([sp[:i], sp[i + 1:]])
        rank_pos[i] = 1 + smoothed_step(others - sp[i], delta).sum()
        n_fp[i] = smoothed_step(sn - sp[i], delta).sum()
    rank = rank_pos + n_fp
    prec = rank_pos / rank
    maxp = prec.clone()
    scale = torch.ones_like(prec)
    if interpolate:
        for i in range(n_pos):  # max precision over positives at or below s_i
            below = sp <= sp[i]
            maxp[i] = prec[below].max()
            if prec[i] < maxp[i]:
                scale[i] = (1 - maxp[i]) / (1 - prec[i])
    neg_grad = torch.zeros(sn.numel(), dtype=torch.float64)
    for i in range(n_pos):
        neg_grad += scale[i] * smoothed_step(sn - sp[i], delta) / rank[i]
    grad[neg] = neg_grad / n_pos
    grad[pos] = -(1 - maxp) / n_pos
    return 1 - maxp.mean(), grad.view(logits.shape)


def alrp_loss(logits: Tensor, targets: Tensor, loc_errors: Tensor, delta: float = 1.0, eps: float = 1e-5):
    """(classification, localisation, gradient w.r.t. logits, gradient w.r.t. loc_errors)."""
    s, t, pos, neg = _split(logits, targets, lambda v: v == 1)
    e = loc_errors.detach().to(torch.float64)
    grad = torch.zeros_like(s)
    n_pos = pos.numel()
    if n_pos == 0:
        zero = torch.zeros((), dtype=torch.float64)
        return zero, zero, grad.view(logits.shape), torch.zeros_like(e)
    sp, sn = s[pos], s[neg]
    h_pp = smoothed_step(sp[None, :] - sp[:, None], delta)  # [i, k] = H(s_k - s_i)
    h_pp.fill_diagonal_(0.0)
    h_pn = smoothed_step(sn[None, :] - sp[:, None], delta)
    rank_pos = 1 + h_pp.sum(1)
    n_fp = h_pn.sum(1)
    rank = rank_pos + n_fp
    cls = 1 - (rank_pos / rank).mean()
    pos_grad = torch.zeros(n_pos, dtype=torch.float64)
    neg_grad = torch.zeros(sn.numel(), dtype=torch.float64)
    for i in range(n_pos):
        if n_fp[i] > eps:
            pos_grad[i] = -((h_pp[i] * e).sum() + n_fp[i]) / rank[i]
            neg_grad += h_pn[i] * (-pos_grad[i]) / n_fp[i]
    grad[pos] = pos_grad / n_pos
    grad[neg] = neg_grad / n_pos
    # localisation: descending logits, ties in flatten order; rank detached
    order = sorted(range(n_pos), key=lambda i: (-float(sp[i]), i))
    e_req = e.clone().requires_grad_(True)
    cumulative = torch.cumsum(e_req[order], 0)
    loc = (cumulative / rank[order]).mean()
    (loc_grad,) = torch.autograd.grad(loc, e_req)
    return cls, loc.detach(), grad.view(logits.shape), loc_grad


def rank_sort_loss(logits: Tensor, targets: Tensor, delta: float = 0.5, eps: float = 1e-10):
    """(ranking, sorting, gradient of ranking, gradient of sorting) w.r.t. logits."""
    s, t, pos, neg = _split(logits, targets, lambda v: v > 0)
    y_all = targets.detach().to(torch.float64).reshape(-1)
    grad_r = torch.zeros_like(s)
    grad_s = torch.zeros_like(s)
    n_pos = pos.numel()
    if n_pos == 0:
        zero = torch.zeros((), dtype=torch.float64)
        return zero, zero, grad_r.view(logits.shape), grad_s.view(logits.shape)
    sp, sn, y = s[pos], s[neg], y_all[pos]
    rank_err = torch.zeros(n_pos, dtype=torch.float64)
    sort_err = torch.zeros(n_pos, dtype=torch.float64)
    g_pos_r = torch.zeros(n_pos, dtype=torch.float64)
    g_pos_s = torch.zeros(n_pos, dtype=torch.float64)
    g_neg = torch.zeros(sn.numel(), dtype=torch.float64)
    for i in range(n_pos):
        h_p = smoothed_step(sp - sp[i], delta)  # self included
        h_n = smoothed_step(sn - sp[i], delta)
        rank_pos, n_fp = h_p.sum(), h_n.sum()
        rank_err[i] = n_fp / (rank_pos + n_fp)
        current = (h_p * (1 - y)).sum() / rank_pos
        at_least = (y >= y[i]).to(torch.float64)
        target = (at_least * h_p * (1 - y)).sum() / (at_least * h_p).sum()
        sort_err[i] = current - target
    for i in range(n_pos):
        h_p = smoothed_step(sp - sp[i], delta)
        h_n = smoothed_step(sn - sp[i], delta)
        n_fp = h_n.sum()
        if n_fp > eps:
            g_pos_r[i] -= rank_err[i]
            g_neg += h_n * rank_err[i] / n_fp
        missorted = (y < y[i]).to(torch.float64) * h_p
        if missorted.sum() > eps:
            g_pos_s[i] -= sort_err[i]
            g_pos_s += missorted * sort_err[i] / missorted.sum()
    grad_r[pos] = g_pos_r / n_pos
    grad_r[neg] = g_neg / n_pos
    grad_s[pos] = g_pos_s / n_pos
    return rank_err.mean(), sort_err.mean(), grad_r.view(logits.shape), grad_s.view(logits.shape)


def piecewise_linear(x: Tensor, xs: list[float], ys: list[float]) -> Tensor:
    """The released ``_linear``: ``x in (x_k, x_{k+1}]`` uses segment ``k``."""
    cx = torch.tensor(xs, dtype=x.dtype)
    cy = torch.tensor(ys, dtype=x.dtype)
    index = (x[..., None] > cx).sum(-1) + (cx == 0).sum() * (x == 0) - 1
    return (cy[index + 1] - cy[index]) / (cx[index + 1] - cx[index]) * (x - cx[index]) + cy[index]


def parameterized_ap_loss(logits: Tensor, targets: Tensor, ious: Tensor, form: str, control=None, topk=None):
    """Differentiable dense Parameterized AP Loss (autograd reference).

    ``logits`` and ``ious`` may require grad; ``control`` is a (5, 12) / (4, 12) list for ``searched``.
    """
    t = targets.reshape(-1)
    s = logits.reshape(-1).to(torch.float64)
    u_all = torch.where(t == 1, ious.reshape(-1).to(torch.float64), torch.zeros_like(s))
    pos = t == 1
    if int(pos.sum()) == 0:
        return s[:0].sum()
    sp, up = s[pos], u_all[pos]
    valid = t != -1
    cand, cand_u = s[valid], u_all[valid]
    if topk is not None and cand.numel() > topk:
        cand, idx = torch.topk(cand, topk)
        cand_u = cand_u[idx]
    diff = cand[:, None] - sp[None, :]
    xt = torch.clamp(diff / 2 + 0.5, 0, 1)
    if form == "searched":
        ctrl = [row for row in control]

        def f(v, k):
            return piecewise_linear(v, ctrl[k][0::2], ctrl[k][1::2])

        h1 = torch.sign(diff) / 2 + 0.5 if len(ctrl) == 4 else f(xt, 4).detach()
        h2, i2, i3, i1 = f(xt, 0), f(cand_u, 1), f(up, 2), f(up, 3)
    elif form == "linear":
        h1, h2, i2, i3, i1 = xt.detach(), xt, cand_u, up, up
    elif form == "square":
        h1, h2, i2, i3, i1 = (xt**2).detach(), xt**2, cand_u**2, up**2, up**2
    elif form == "sigmoid":
        h1 = torch.sigmoid(diff).detach()
        h2 = torch.sigmoid(diff)
        i2, i3, i1 = torch.sigmoid(2 * cand_u - 1), torch.sigmoid(2 * up - 1), torch.sigmoid(2 * up - 1)
    else:
        raise ValueError(form)
    h1_sum = h1.sum(0)  # 0 when no candidate ranks near or above: then no ratio term (spec)
    ratio = (h2 * (1 - i2)[:, None] * i3[None, :]).sum(0) / torch.where(h1_sum > 0, h1_sum, 1.0)
    per_positive = (1 - i1) + torch.where(h1_sum > 0, ratio, 0.0)
    return per_positive.sum() / sp.numel()


def ghm_weights_loop(g: Tensor, valid: Tensor, tot: float, edges: Tensor, ema: list[float] | None, momentum: float):
    """Released GHM weighting: a loop over bins (mmdetection ``ghm_loss.py``)."""
    weights = torch.zeros_like(g, dtype=torch.float64)
    n = 0
    for i in range(edges.numel() - 1):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num = int(inds.sum())
        if num > 0:
            if momentum > 0:
                ema[i] = momentum * ema[i] + (1 - momentum) * num
                weights[inds] = tot / ema[i]
            else:
                weights[inds] = tot / num
            n += 1
    if n > 0:
        weights = weights / n
    return weights


def ghmc(pred: Tensor, target: Tensor, label_weight: Tensor, bins: int, ema, momentum: float):
    edges = torch.arange(bins + 1, dtype=torch.float32) / bins
    edges[-1] += 1e-6
    x = pred.to(torch.float64)
    g = (torch.sigmoid(x.detach()) - target).abs()
    valid = label_weight > 0
    tot = max(float(valid.sum()), 1.0)
    w = ghm_weights_loop(g, valid, tot, edges.to(torch.float64), ema, momentum)
    loss = F.binary_cross_entropy_with_logits(x, target.to(torch.float64), reduction="none")
    return (loss * w).sum() / tot


def ghmr(pred: Tensor, target: Tensor, label_weight: Tensor, mu: float, bins: int, ema, momentum: float):
    edges = torch.arange(bins + 1, dtype=torch.float32) / bins
    edges[-1] = 1e3
    diff = pred.to(torch.float64) - target.to(torch.float64)
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    g = (diff / torch.sqrt(mu * mu + diff * diff)).abs().detach()
    valid = label_weight > 0
    tot = max(float(label_weight.sum()), 1.0)
    w = ghm_weights_loop(g, valid, tot, edges.to(torch.float64), ema, momentum)
    return (loss * w).sum() / tot


def iou_balanced_focal(logits: Tensor, targets: Tensor, ious: Tensor, eta=1.5, alpha=0.25, gamma=2.0):
    """Sum over elements; weights detached."""
    x = logits.to(torch.float64)
    t = targets.to(torch.float64)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    fl = ce * (1 - p_t) ** gamma * (alpha * t + (1 - alpha) * (1 - t))
    with torch.no_grad():
        pos = t == 1
        w_iou = ious.to(torch.float64) ** eta
        z = fl[pos].sum() / (fl[pos] * w_iou[pos]).sum()
        w = torch.where(pos, w_iou * z, torch.ones_like(x))
    return (fl * w).sum()


def iou_balanced_smooth_l1(pred: Tensor, target: Tensor, ious: Tensor, lam=1.5, beta=0.11, normalize=True):
    d = (pred.to(torch.float64) - target.to(torch.float64)).abs()
    sl1 = torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    with torch.no_grad():
        w = (ious.to(torch.float64) ** lam)[:, None].expand_as(sl1)
        if normalize:
            w = w * sl1.sum() / (sl1 * w).sum()
    return (sl1 * w).sum()
