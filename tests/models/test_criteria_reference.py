"""Every detector criterion pinned against a slow, obvious, dense float64 reference (issue 10, item 3).

The batch is hand-made: 2 images of 6 anchors, 3 classes, 5 positives (two ground truths matched
twice or once in image 0, two in image 1), one ignored anchor per image (IoU between the matcher's
thresholds: every class of it is ignored), the rest background. The same anchors serve both heads:
``head="retinanet"`` (torchvision's ``BoxCoder``, deltas) and ``head="fcos"`` (``BoxLinearCoder``,
size-normalised distances; every positive's location centre lies inside its ground truth).

The reference below is written from ``docs/losses.md`` and from what each criterion documents
(:mod:`detlosses.models.criteria`), not from the criteria's code: it rebuilds the class targets
with loops over the matcher's output, decodes/encodes every positive's box with explicit formulas,
computes IoU / GIoU (torchvision's ``eps = 1e-7`` convention) by hand, and evaluates every ranking
loss with explicit loops over the positives. For the error-driven ranking losses (AP, aLRP, Rank &
Sort) the reference writes down the spec's value and the spec's gradient and turns them into a
surrogate tensor (value, with exactly that gradient); everything else (focal, smooth-L1, GIoU,
GHM, the IoU-balanced weights, PAP's plain-autograd formula, aLRP's localisation term) is
differentiated by autograd on the reference formula. Values of every component and gradients
w.r.t. ``cls_logits`` and ``box_regression`` (and FCOS centerness) are compared in float64.
No loss function or helper of the package is called by the reference.

Two steps are run per criterion (different predictions), so the state is pinned too: aLRP's
self-balance weight after ``epoch_end``, GHM's EMA of the bin counts and its gradient-norm
histogram, Rank & Sort's per-step self-balance weight. Each criterion is checked with its defaults
and with non-default options (so that every option reaches the loss it belongs to).

Normalisers. Our criteria divide by the positives of the *whole batch*; torchvision's RetinaNet
head divides each image's sum by that image's positives and averages over the images. The two
agree on one image, and on several images with the same number of positives; in general ours is
``sum_b n_b L_b / sum_b n_b`` of torchvision's per-image losses ``L_b`` (all pinned below).
torchvision's FCOS head already normalises by the batch's positives, so it agrees on any batch.

Planted bugs: each was applied alone to ``criteria.py``, made this module fail (the tests named in
brackets), and was reverted:

* the positives' normaliser off by one, ``_positive_mean``: ``.clamp(min=1)`` -> ``.clamp(min=1) + 1``
  [focal, ap, iou_balanced, both torchvision comparisons, the no-positive test];
* aLRP's localisation errors halved, ``errors = 0.5 * batch.positive_giou_loss()`` [alrp];
  ``initial_weight`` not passed to ``ALRPLoss`` [alrp, non-default options];
* Rank & Sort's box weights replaced by ones [rank_sort]; its IoU targets left ternary (``targets``
  not replaced by the IoUs) [rank_sort]; its self-balance ``L_rank + L_sort`` not divided by
  ``L_box`` [rank_sort];
* PAP's ``reg_weight`` not passed on (the preset's 4.1231 always) [pap, ``reg_weight=2``]; the soft
  IoU ``1 - 0.5 * giou_loss`` -> ``1 - giou_loss`` [pap];
* GHM's bin normaliser: ignored anchors counted as valid (``targets >= -1``: GHM-C's ``tot`` and bin
  counts) [ghm]; the histogram accumulating GHM-C's EMA instead of the step's counts [ghm]; ``reg_mu`` not
  passed to GHM-R [ghm, non-default options];
* IoU-balanced: ``eta=self.eta`` -> ``eta=self.lam`` [iou_balanced, ``eta != lam``]; the box term's
  IoU weights dropped (``ious ** 0``) [iou_balanced];
* AP: ``beta=self.box_beta`` dropped (smooth-L1 with beta 1) [ap, RetinaNet]; ``interpolate`` ignored
  [ap, non-default options];
* focal: ignored anchors counted (``per_element.sum()``) [focal, torchvision]; ``gamma`` fixed at 2
  [focal, non-default options]; ``box_loss="auto"`` inverted between the heads [focal, ap, torchvision
  RetinaNet and FCOS].
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import generalized_box_iou_loss

from detlosses.models import DenseAssignment, build_criterion
from detlosses.models.criteria import FocalCriterion
from detlosses.models.detectors import FCOSCriterionHead

DT = torch.float64
C = 3
VALUE = dict(rtol=1e-10, atol=1e-12)  # float64 throughout: only summation order differs
GRAD = dict(rtol=1e-9, atol=1e-12)
# RankSortCriterion used to build its IoU targets and box weights in float32 even for float64 logits
# (~1e-8 relative off the float64 spec); it keeps the logits' precision now (the float64 test below
# pins that), and the main test still compares it at float32 resolution.
RANK_SORT_TOL = dict(rtol=1e-6, atol=1e-9)

# --------------------------------------------------------------------------- the hand-made batch
GT = [
    {"boxes": [[10.0, 10.0, 50.0, 50.0], [60.0, 20.0, 100.0, 80.0]], "labels": [1, 0]},
    {"boxes": [[20.0, 30.0, 70.0, 60.0], [5.0, 5.0, 25.0, 25.0]], "labels": [2, 0]},
]
ANCHORS = [
    [[12, 8, 52, 48], [6, 14, 46, 54], [58, 24, 98, 84], [60, 50, 100, 90], [0, 60, 30, 90], [70, 0, 110, 20]],
    [[22, 28, 72, 62], [4, 6, 24, 26], [40, 30, 90, 60], [80, 80, 120, 120], [0, 70, 40, 110], [90, 0, 110, 40]],
]
# matched ground-truth index, -1 background, -2 ignored (between the thresholds)
MATCHED = [[0, 0, 1, -2, -1, -1], [0, 1, -2, -1, -1, -1]]
NUM_POS = 5
ANCHOR_IOUS = [0.8223, 0.6807, 0.7964, 0.8182, 0.8223]  # of the positives' anchors with their boxes


def head_inputs(head: str, seed: int, images=(0, 1), ignored: bool = True) -> dict:
    """Leaf tensors (float64) of the head outputs and the matcher's results for ``images``."""
    g = torch.Generator().manual_seed(1000 + seed)
    B, A = 2, 6
    logits = (1.5 * torch.randn(B, A, C, generator=g, dtype=DT))
    noise = 0.1 * torch.randn(B, A, 4, generator=g, dtype=DT)
    regression = noise if head == "retinanet" else 0.5 + noise  # FCOS: about the location box itself
    ctrness = torch.randn(B, A, 1, generator=g, dtype=DT)
    idx = list(images)
    matched = [torch.tensor(MATCHED[b]) for b in idx]
    if not ignored:
        matched = [m.masked_fill(m == -2, -1) for m in matched]
    return {
        "cls_logits": logits[idx].clone().requires_grad_(True),
        "bbox_regression": regression[idx].clone().requires_grad_(True),
        "bbox_ctrness": ctrness[idx].clone().requires_grad_(True),
        "targets": [{"boxes": torch.tensor(GT[b]["boxes"], dtype=DT), "labels": torch.tensor(GT[b]["labels"])}
                    for b in idx],
        "anchors": [torch.tensor(ANCHORS[b], dtype=DT) for b in idx],
        "matched": matched,
        "head": head,
    }


def coder(head: str):
    return BoxCoder((1.0, 1.0, 1.0, 1.0)) if head == "retinanet" else BoxLinearCoder(normalize_by_size=True)


def assignment(inputs: dict) -> DenseAssignment:
    outputs = {k: inputs[k] for k in ("cls_logits", "bbox_regression")}
    if inputs["head"] == "fcos":
        outputs["bbox_ctrness"] = inputs["bbox_ctrness"]
    return DenseAssignment.from_matches(inputs["targets"], outputs, inputs["anchors"], inputs["matched"],
                                        coder(inputs["head"]), head=inputs["head"])


# --------------------------------------------------------------------------- reference: boxes
def encode(anchor, gt, head):
    """The regression target of ``gt`` relative to ``anchor`` (4 numbers, by hand)."""
    ax1, ay1, ax2, ay2 = anchor
    gx1, gy1, gx2, gy2 = gt
    aw, ah = ax2 - ax1, ay2 - ay1
    acx, acy = ax1 + 0.5 * aw, ay1 + 0.5 * ah
    if head == "retinanet":
        gw, gh = gx2 - gx1, gy2 - gy1
        gcx, gcy = gx1 + 0.5 * gw, gy1 + 0.5 * gh
        return torch.stack([(gcx - acx) / aw, (gcy - acy) / ah, torch.log(gw / aw), torch.log(gh / ah)])
    return torch.stack([(acx - gx1) / aw, (acy - gy1) / ah, (gx2 - acx) / aw, (gy2 - acy) / ah])


def decode(reg, anchor, head):
    ax1, ay1, ax2, ay2 = anchor
    aw, ah = ax2 - ax1, ay2 - ay1
    acx, acy = ax1 + 0.5 * aw, ay1 + 0.5 * ah
    if head == "retinanet":
        cx, cy = reg[0] * aw + acx, reg[1] * ah + acy
        w, h = torch.exp(reg[2]) * aw, torch.exp(reg[3]) * ah
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h])
    return torch.stack([acx - reg[0] * aw, acy - reg[1] * ah, acx + reg[2] * aw, acy + reg[3] * ah])


def iou(p, g):
    iw = (torch.minimum(p[2], g[2]) - torch.maximum(p[0], g[0])).clamp(min=0)
    ih = (torch.minimum(p[3], g[3]) - torch.maximum(p[1], g[1])).clamp(min=0)
    inter = iw * ih
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)


def giou_loss(p, g, eps=1e-7):
    """``1 - GIoU`` with torchvision's ``eps`` in both denominators."""
    iw = (torch.minimum(p[2], g[2]) - torch.maximum(p[0], g[0])).clamp(min=0)
    ih = (torch.minimum(p[3], g[3]) - torch.maximum(p[1], g[1])).clamp(min=0)
    inter = iw * ih
    union = (p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    hull_w = torch.maximum(p[2], g[2]) - torch.minimum(p[0], g[0])
    hull = hull_w * (torch.maximum(p[3], g[3]) - torch.minimum(p[1], g[1]))
    return 1.0 - (inter / (union + eps) - (hull - union) / (hull + eps))


def smooth_l1(d, beta):
    return torch.where(d.abs() < beta, 0.5 * d * d / beta, d.abs() - 0.5 * beta)


def bce(x, t):
    return x.clamp(min=0) - x * t + torch.log1p(torch.exp(-x.abs()))


def focal(x, t, alpha, gamma):
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return a_t * (1 - p_t) ** gamma * bce(x, t)


class Ref:
    """The batch as the reference sees it: flat element lists and the positives, by explicit loops."""

    def __init__(self, inputs: dict):
        self.head = inputs["head"]
        self.logits = inputs["cls_logits"]
        self.reg = inputs["bbox_regression"]
        self.ctr = inputs["bbox_ctrness"]
        B, A, _ = self.logits.shape
        self.s_flat = self.logits.reshape(-1)
        self.t, self.elements = [], []  # per flat element: target 1 / 0 / -1 and (b, a, c)
        self.pos = []  # (b, a, label, flat element index) in (image, anchor) order
        for b in range(B):
            for a in range(A):
                m = int(inputs["matched"][b][a])
                label = int(inputs["targets"][b]["labels"][m]) if m >= 0 else None
                for c in range(C):
                    self.elements.append((b, a, c))
                    self.t.append(-1 if m == -2 else (1 if label == c else 0))
                if m >= 0:
                    self.pos.append((b, a, label, (b * A + a) * C + label,
                                     inputs["anchors"][b][a], inputs["targets"][b]["boxes"][m]))
        self.P = [i for i, t in enumerate(self.t) if t == 1]
        self.N = [j for j, t in enumerate(self.t) if t == 0]
        self.valid = [i for i, t in enumerate(self.t) if t >= 0]
        self.npos = len(self.pos)
        assert self.P == [p[3] for p in self.pos]

    def pred_box(self, k):
        b, a, _, _, anchor, _ = self.pos[k]
        return decode(self.reg[b, a], anchor, self.head)

    def gt(self, k):
        return self.pos[k][5]

    def deltas(self, k):
        b, a = self.pos[k][:2]
        return self.reg[b, a]

    def target_deltas(self, k):
        return encode(self.pos[k][4], self.pos[k][5], self.head)

    def giou_losses(self):
        return [giou_loss(self.pred_box(k), self.gt(k)) for k in range(self.npos)]

    def ious(self):
        return [float(iou(self.pred_box(k).detach(), self.gt(k))) for k in range(self.npos)]

    def focal_sum(self, alpha, gamma):
        return sum(focal(self.s_flat[i], float(self.t[i]), alpha, gamma) for i in self.valid)

    def box_sum(self, mode, beta=None):
        """Sum over the positives of L1 / smooth-L1 on deltas or of ``1 - GIoU`` on decoded boxes."""
        total = 0.0
        for k in range(self.npos):
            if mode == "giou":
                total = total + giou_loss(self.pred_box(k), self.gt(k))
            else:
                d = self.deltas(k) - self.target_deltas(k)
                total = total + (d.abs().sum() if beta is None else smooth_l1(d, beta).sum())
        return total

    def centerness(self):
        total = 0.0
        for k in range(self.npos):
            left, top, right, bottom = self.target_deltas(k)
            target = torch.sqrt(min(left, right) / max(left, right) * (min(top, bottom) / max(top, bottom)))
            b, a = self.pos[k][:2]
            total = total + bce(self.ctr[b, a, 0], target)
        return total / max(1, self.npos)


def surrogate(value: float, logits_flat, grad: list[float]):
    """A scalar equal to ``value`` whose gradient w.r.t. ``logits_flat`` is ``grad``."""
    g = torch.tensor(grad, dtype=DT)
    linear = (logits_flat * g).sum()
    return value + linear - linear.detach()


def H(x, delta):
    if delta == 0:
        return 1.0 if x >= 0 else 0.0
    return min(max(x / (2 * delta) + 0.5, 0.0), 1.0)


# --------------------------------------------------------------------------- reference: ranking losses
def ref_ap(s, t, delta, interpolate):
    P = [i for i, v in enumerate(t) if v == 1]
    N = [j for j, v in enumerate(t) if v == 0]
    n = len(P)
    grad = [0.0] * len(s)
    rank, prec = {}, {}
    for i in P:
        rank_pos = 1 + sum(H(s[k] - s[i], delta) for k in P if k != i)
        rank[i] = rank_pos + sum(H(s[j] - s[i], delta) for j in N)
        prec[i] = rank_pos / rank[i]
    maxp = {i: max(prec[k] for k in P if s[k] <= s[i]) for i in P} if interpolate else prec
    for i in P:
        scale = (1 - maxp[i]) / (1 - prec[i]) if prec[i] < maxp[i] else 1.0
        for j in N:
            grad[j] += scale * H(s[j] - s[i], delta) / rank[i] / n
        grad[i] -= (1 - maxp[i]) / n
    return 1 - sum(maxp.values()) / n, grad


def ref_alrp_cls(s, t, errors, delta, eps=1e-5):
    """Classification value, its gradient (``errors`` constant) and each positive's rank."""
    P = [i for i, v in enumerate(t) if v == 1]
    N = [j for j, v in enumerate(t) if v == 0]
    n = len(P)
    e = dict(zip(P, errors, strict=True))
    grad = [0.0] * len(s)
    rank, value = {}, 0.0
    for i in P:
        others = [k for k in P if k != i]
        nfp = sum(H(s[j] - s[i], delta) for j in N)
        rank[i] = 1 + sum(H(s[k] - s[i], delta) for k in others) + nfp
        value += nfp / rank[i] / n  # 1 - prec(i)
        if nfp > eps:
            g_i = -(sum(H(s[k] - s[i], delta) * e[k] for k in others) + nfp) / rank[i]
            grad[i] += g_i / n
            for j in N:
                grad[j] += H(s[j] - s[i], delta) * (-g_i) / nfp / n
    return value, grad, rank


def ref_rank_sort(s, t, y, delta, eps=1e-10):
    """``t``: 1 at positives (``y`` their IoU targets, in order), 0 negatives, -1 ignored."""
    P = [i for i, v in enumerate(t) if v == 1]
    N = [j for j, v in enumerate(t) if v == 0]
    n = len(P)
    y = dict(zip(P, y, strict=True))
    grad = [0.0] * len(s)
    ranking = sorting = 0.0
    for i in P:
        h = {k: H(s[k] - s[i], delta) for k in P}  # self included: H(0) = 1/2
        rank_pos = sum(h.values())
        nfp = sum(H(s[j] - s[i], delta) for j in N)
        rank_err = nfp / (rank_pos + nfp)
        current = sum(h[k] * (1 - y[k]) for k in P) / rank_pos
        above = [k for k in P if y[k] >= y[i]]
        target = sum(h[k] * (1 - y[k]) for k in above) / sum(h[k] for k in above)
        sort_err = current - target
        ranking += rank_err / n
        sorting += sort_err / n
        if nfp > eps:
            grad[i] -= rank_err / n
            for j in N:
                grad[j] += H(s[j] - s[i], delta) * rank_err / nfp / n
        missorted = [k for k in P if y[k] < y[i]]
        total = sum(h[k] for k in missorted)
        if total > eps:
            grad[i] -= sort_err / n
            for k in missorted:
                grad[k] += h[k] * sort_err / total / n
    return ranking, sorting, grad


# PAP control points (x0, y0, ..., x5, y5) of docs/losses.md, RetinaNet R50, order H2, I2, I3, I1, H1
PAP_RETINANET = {
    "H2": [0, 0, 0.4182, 0.0277, 0.4948, 0.2187, 0.6882, 0.2624, 0.802, 0.6688, 1, 1],
    "I2": [0, 0, 0.1279, 0.3696, 0.3056, 0.4708, 0.5198, 0.529, 0.6983, 0.6709, 1, 1],
    "I3": [0, 0, 0.0931, 0.0289, 0.3607, 0.5585, 0.4823, 0.7131, 0.6291, 0.8162, 1, 1],
    "I1": [0, 0, 0.4914, 0.1499, 0.5492, 0.1664, 0.6259, 0.3051, 0.7945, 0.6195, 1, 1],
    "H1": [0, 0, 0.413, 0.0798, 0.4356, 0.3571, 0.5361, 0.7063, 0.8097, 0.9083, 1, 1],
}
PAP_LINEAR = dict.fromkeys(PAP_RETINANET, [0, 0, 1, 1])
PAP_REG_WEIGHT = {"retinanet": 4.1231, "linear": 1.0}


def piecewise_linear(points, x):
    xs, ys = points[0::2], points[1::2]
    for k in range(len(xs) - 1):
        if float(x.detach()) <= xs[k + 1] or k == len(xs) - 2:
            return ys[k] + (ys[k + 1] - ys[k]) * (x - xs[k]) / (xs[k + 1] - xs[k])
    raise AssertionError


def ref_pap(s_flat, t, u, fns):
    """Plain autograd: ``s_flat`` flat logits, ``u`` soft IoUs of the positives (tensors, in order)."""
    P = [i for i, v in enumerate(t) if v == 1]
    S = [j for j, v in enumerate(t) if v >= 0]
    u_of = dict(zip(P, u, strict=True))
    total = 0.0
    for i in P:
        numerator, denominator = 0.0, 0.0
        for j in S:
            xt = ((s_flat[j] - s_flat[i]) / 2 + 0.5).clamp(0.0, 1.0)
            i2 = piecewise_linear(fns["I2"], u_of[j]) if j in u_of else 0.0
            numerator = numerator + piecewise_linear(fns["H2"], xt) * (1 - i2)
            denominator = denominator + piecewise_linear(fns["H1"], xt.detach())
        total = total + (1 - piecewise_linear(fns["I1"], u_of[i])
                         + piecewise_linear(fns["I3"], u_of[i]) * numerator / denominator)
    return total / len(P)


def ghm_weights(gs, bins, ema, updates, momentum, bias_correction):
    """Weights ``tot / density / n`` of the given (valid) gradient norms; updates ``ema`` in place."""
    index = [min(int(g * bins), bins - 1) for g in gs]
    counts = [index.count(b) for b in range(bins)]
    non_empty = [b for b in range(bins) if counts[b] > 0]
    if momentum > 0:
        for b in non_empty:
            ema[b] = momentum * ema[b] + (1 - momentum) * counts[b]
            updates[b] += 1
        density = [ema[b] / (1 - momentum ** updates[b]) if bias_correction and updates[b] else ema[b]
                   for b in range(bins)]
    else:
        density = counts
    return [len(gs) / density[b] / len(non_empty) for b in index], counts


# --------------------------------------------------------------------------- reference criteria
class Reference:
    """One criterion's expected outputs, step after step (state like the EMA kept here)."""

    def __init__(self, name: str, options: dict):
        self.name, self.o = name, dict(options)
        self.alrp_weight = float(self.o.get("initial_weight", 50.0))
        self.alrp_sums = [0.0, 0.0]
        bins, reg_bins = self.o.get("bins", 30), self.o.get("reg_bins", 10)
        self.ghm_state = ([0.0] * bins, [0] * bins, [0.0] * reg_bins, [0] * reg_bins)
        self.histogram = [0.0] * bins

    def box_mode(self, head):
        box_loss = self.o.get("box_loss", "auto")
        return ("delta" if head == "retinanet" else "giou") if box_loss == "auto" else box_loss

    def __call__(self, inputs: dict) -> dict:
        return getattr(self, self.name)(Ref(inputs))

    def focal(self, r):
        norm = max(1, r.npos)
        cls = r.focal_sum(self.o.get("alpha", 0.25), self.o.get("gamma", 2.0)) / norm
        box = r.box_sum(self.box_mode(r.head)) / norm
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}

    def ap(self, r):
        s = r.s_flat.detach().tolist()
        value, grad = ref_ap(s, r.t, self.o.get("delta", 1.0), self.o.get("interpolate", True))
        cls = surrogate(value, r.s_flat, grad)
        box = r.box_sum(self.box_mode(r.head), beta=self.o.get("box_beta", 1 / 9)) / max(1, r.npos)
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}

    def alrp(self, r):
        errors = r.giou_losses()
        value, grad, rank = ref_alrp_cls(r.s_flat.detach().tolist(), r.t, [float(e.detach()) for e in errors],
                                         self.o.get("delta", 1.0))
        cls = surrogate(value, r.s_flat, grad)
        order = sorted(range(r.npos), key=lambda k: -float(r.s_flat[r.P[k]].detach()))  # descending logit
        cumulative, loc = 0.0, 0.0
        for k in order:
            cumulative = cumulative + errors[k]
            loc = loc + cumulative / rank[r.P[k]] / r.npos
        self.alrp_sums[0] += float(cls.detach())
        self.alrp_sums[1] += float(loc.detach())
        return {"loss": cls + self.alrp_weight * loc, "loss_cls": cls, "loss_loc": loc}

    def alrp_epoch_end(self):
        cls_sum, loc_sum = self.alrp_sums
        self.alrp_weight = (loc_sum + cls_sum) / loc_sum
        return self.alrp_weight

    def rank_sort(self, r):
        y = r.ious()
        ranking, sorting, grad = ref_rank_sort(r.s_flat.detach().tolist(), r.t, y, self.o.get("delta", 0.5))
        rank_term = surrogate(ranking, r.s_flat, grad)
        weights, weighted = [], 0.0
        for k, (b, a, *_rest) in enumerate(r.pos):
            w = max(1 / (1 + math.exp(-float(r.logits[b, a, c].detach()))) for c in range(C))  # max score
            weights.append(w)
            weighted = weighted + w * giou_loss(r.pred_box(k), r.gt(k))
        box = weighted / sum(weights)
        balance = (ranking + sorting) / float(box.detach())
        self.rs_weight = balance
        return {"loss": rank_term + sorting + balance * box, "loss_rank": rank_term,
                "loss_sort": torch.tensor(sorting, dtype=DT), "loss_box": balance * box}

    def pap(self, r):
        params = self.o.get("params", "retinanet")
        reg_weight = self.o.get("reg_weight") or PAP_REG_WEIGHT[params]
        u = []
        for k in range(r.npos):
            soft = (1 + (1 - giou_loss(r.pred_box(k), r.gt(k)))) / 2  # (GIoU + 1) / 2
            u.append(soft.detach() + reg_weight * (soft - soft.detach()))  # box gradient x reg_weight
        loss = ref_pap(r.s_flat, r.t, u, PAP_RETINANET if params == "retinanet" else PAP_LINEAR)
        return {"loss": loss, "loss_pap": loss}

    def ghm(self, r):
        ema_c, upd_c, ema_r, upd_r = self.ghm_state
        bc = self.o.get("bias_correction", True)
        bins = self.o.get("bins", 30)
        x = [r.s_flat[i] for i in r.valid]
        t = [float(max(r.t[i], 0)) for i in r.valid]
        g = [abs(1 / (1 + math.exp(-float(xi.detach()))) - ti) for xi, ti in zip(x, t, strict=True)]
        w, counts = ghm_weights(g, bins, ema_c, upd_c, self.o.get("momentum", 0.75), bc)
        self.histogram = [h + c for h, c in zip(self.histogram, counts, strict=True)]
        cls = sum(wi * bce(xi, ti) for wi, xi, ti in zip(w, x, t, strict=True)) / len(x)
        if self.o.get("box_loss", "ghmr") == "delta":  # GHM-C + focal's L1, no GHM-R
            box = r.box_sum("delta") / max(1, r.npos)
            return {"loss": cls + box, "loss_cls": cls, "loss_box": box}
        mu = self.o.get("reg_mu", 0.02)
        d = [(r.deltas(k) - r.target_deltas(k))[q] for k in range(r.npos) for q in range(4)]
        g = [abs(float(di.detach())) / math.sqrt(float(di.detach()) ** 2 + mu * mu) for di in d]
        w, _ = ghm_weights(g, self.o.get("reg_bins", 10), ema_r, upd_r, self.o.get("reg_momentum", 0.7), bc)
        box = self.o.get("reg_loss_weight", 10.0) * sum(
            wi * (torch.sqrt(di * di + mu * mu) - mu) for wi, di in zip(w, d, strict=True)) / len(d)
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}

    def iou_balanced(self, r):
        eta, lam = self.o.get("eta", 1.5), self.o.get("lam", 1.5)
        alpha, gamma, beta = self.o.get("alpha", 0.25), self.o.get("gamma", 2.0), self.o.get("beta", 0.11)
        ious = r.ious()
        iou_of = dict(zip(r.P, ious, strict=True))
        fl = {i: focal(r.s_flat[i], float(r.t[i]), alpha, gamma) for i in r.valid}
        z = sum(float(fl[i].detach()) for i in r.P) / sum(float(fl[i].detach()) * iou_of[i] ** eta for i in r.P)
        cls = sum(fl[i] * (iou_of[i] ** eta * z if i in iou_of else 1.0) for i in r.valid) / r.npos
        sl1 = [smooth_l1(r.deltas(k) - r.target_deltas(k), beta) for k in range(r.npos)]
        plain = [float(v.sum().detach()) for v in sl1]
        z = sum(plain) / sum(v * ious[k] ** lam for k, v in enumerate(plain))  # keeps the plain total
        box = sum(v.sum() * ious[k] ** lam * z for k, v in enumerate(sl1)) / r.npos
        return {"loss": cls + box, "loss_cls": cls, "loss_box": box}


OPTIONS = {
    "focal": [{}, {"alpha": 0.4, "gamma": 1.5}, {"box_loss": "giou"}, {"box_loss": "delta"}],
    "ap": [{}, {"delta": 0.5, "interpolate": False, "box_beta": 0.3}, {"box_loss": "giou", "box_beta": 0.3}],
    "alrp": [{}, {"delta": 0.7, "initial_weight": 10.0}],
    "rank_sort": [{}, {"delta": 0.3}],
    "pap": [{}, {"reg_weight": 2.0}, {"params": "linear"}],
    "ghm": [{}, {"bins": 7, "momentum": 0.5, "reg_mu": 0.05, "reg_bins": 5, "reg_momentum": 0.0,
                 "reg_loss_weight": 3.0, "bias_correction": True}, {"box_loss": "delta"}],
    "iou_balanced": [{}, {"eta": 2.0, "lam": 0.7, "beta": 0.3, "alpha": 0.4, "gamma": 1.5}],
}
CASES = [pytest.param(name, options, id=f"{name}-{i}") for name, sets in OPTIONS.items()
         for i, options in enumerate(sets)]


def grads(loss, inputs):
    return torch.autograd.grad(loss, [inputs["cls_logits"], inputs["bbox_regression"]], allow_unused=True,
                               retain_graph=True)


def assert_same(out: dict, expected: dict, inputs_ours: dict, inputs_ref: dict, what: str,
                value_tol: dict = VALUE, grad_tol: dict = GRAD) -> None:
    assert set(out) == set(expected), what
    for key in expected:
        torch.testing.assert_close(out[key].detach().to(DT), torch.as_tensor(expected[key], dtype=DT).detach(),
                                   **value_tol, msg=lambda m, k=key: f"{what} {k}: {m}")
    for name, ours, ref in zip(("cls_logits", "bbox_regression"), grads(out["loss"], inputs_ours),
                               grads(expected["loss"], inputs_ref), strict=True):
        ours = torch.zeros_like(inputs_ours[name]) if ours is None else ours
        ref = torch.zeros_like(inputs_ref[name]) if ref is None else ref
        torch.testing.assert_close(ours, ref, **grad_tol, msg=lambda m, n=name: f"{what} d loss / d {n}: {m}")


def test_the_reference_box_formulas_are_torchvision_s():
    """The hand-written encode/decode/GIoU agree with torchvision on this batch (sanity of the reference)."""
    for head in ("retinanet", "fcos"):
        inputs = head_inputs(head, 0)
        r = Ref(inputs)
        anchors = torch.stack([p[4] for p in r.pos])
        gts = torch.stack([p[5] for p in r.pos])
        deltas = torch.stack([r.deltas(k) for k in range(r.npos)]).detach()
        ours_pred = torch.stack([r.pred_box(k) for k in range(r.npos)]).detach()
        ours_target = torch.stack([r.target_deltas(k) for k in range(r.npos)])
        if head == "retinanet":
            c = coder(head)
            torch.testing.assert_close(ours_target, c.encode_single(gts, anchors), **VALUE)
            torch.testing.assert_close(ours_pred, c.decode_single(deltas, anchors), **VALUE)
        else:
            c = coder(head)
            torch.testing.assert_close(ours_target, c.encode(anchors, gts), **VALUE)
            torch.testing.assert_close(ours_pred, c.decode(deltas, anchors), **VALUE)
        torch.testing.assert_close(torch.stack([giou_loss(p, g) for p, g in zip(ours_pred, gts, strict=True)]),
                                   generalized_box_iou_loss(ours_pred, gts), **VALUE)
        # the batch is what the docstring says: known IoUs of the anchors, a mix of positive IoUs
        assert r.npos == NUM_POS and len(r.valid) == 2 * 6 * C - 2 * C
        # positives IoU >= 0.5 with their box, ignored anchors in [0.4, 0.5), background below 0.4
        assert [round(float(iou(p[4], p[5])), 4) for p in r.pos] == ANCHOR_IOUS
        for b in range(2):
            for a in range(6):
                best = max(float(iou(inputs["anchors"][b][a], g)) for g in inputs["targets"][b]["boxes"])
                m = MATCHED[b][a]
                assert (best >= 0.5) if m >= 0 else (0.4 <= best < 0.5) if m == -2 else (best < 0.4)
        assert all(0.3 < v < 1.0 for v in r.ious())


@pytest.mark.parametrize("head", ["retinanet", "fcos"])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_criterion_matches_the_dense_reference(name, options, head):
    criterion = build_criterion(name, **options)
    reference = Reference(name, options)
    for step in range(2):
        ours_in, ref_in = head_inputs(head, step), head_inputs(head, step)
        out = criterion(assignment(ours_in))
        expected = reference(ref_in)
        tol = (RANK_SORT_TOL, RANK_SORT_TOL) if name == "rank_sort" else (VALUE, GRAD)
        assert_same(out, expected, ours_in, ref_in, f"{name}{options} {head} step {step}", *tol)
        if name == "rank_sort":
            torch.testing.assert_close(criterion.extra_logs()["sb_weight"].to(DT),
                                       torch.tensor(reference.rs_weight, dtype=DT), **RANK_SORT_TOL)
        if name == "alrp":
            assert float(criterion.extra_logs()["sb_weight"]) == pytest.approx(reference.alrp_weight, rel=1e-12)
    if name == "alrp":  # self-balance: (mean L_loc + mean L_cls) / mean L_loc over the epoch's steps
        assert criterion.epoch_end()["sb_weight"] == pytest.approx(reference.alrp_epoch_end(), rel=1e-10)
        ours_in, ref_in = head_inputs(head, 2), head_inputs(head, 2)
        assert_same(criterion(assignment(ours_in)), reference(ref_in), ours_in, ref_in, f"alrp {head} new epoch")
    if name == "ghm":  # valid elements' gradient norms binned over the epoch
        criterion.epoch_end()
        edges, counts = criterion.gradient_norm_histogram()
        assert counts == reference.histogram and sum(counts) == 2 * (2 * 6 * C - 2 * C)
        assert edges == [i / len(counts) for i in range(len(counts) + 1)]
    if name == "pap":
        expected_weight = options.get("reg_weight") or PAP_REG_WEIGHT[options.get("params", "retinanet")]
        assert criterion.extra_logs()["reg_weight"] == pytest.approx(expected_weight)


@pytest.mark.parametrize("head", ["retinanet", "fcos"])
def test_rank_sort_keeps_float64_precision(head):
    ours_in, ref_in = head_inputs(head, 0), head_inputs(head, 0)
    out = build_criterion("rank_sort")(assignment(ours_in))
    assert_same(out, Reference("rank_sort", {})(ref_in), ours_in, ref_in, f"rank_sort {head} float64")


def test_focal_matches_torchvision_retinanet_head_on_one_image():
    head = RetinaNetHead(in_channels=4, num_anchors=1, num_classes=C).double()
    for image in (0, 1):
        ours_in = head_inputs("retinanet", 0, images=(image,))
        tv_in = head_inputs("retinanet", 0, images=(image,))
        out = FocalCriterion()(assignment(ours_in))
        tv = head.compute_loss(tv_in["targets"], {k: tv_in[k] for k in ("cls_logits", "bbox_regression")},
                               tv_in["anchors"], tv_in["matched"])
        expected = {"loss": tv["classification"] + tv["bbox_regression"], "loss_cls": tv["classification"],
                    "loss_box": tv["bbox_regression"]}
        assert_same(out, expected, ours_in, tv_in, f"focal vs torchvision RetinaNet, image {image}")
        ref_in = head_inputs("retinanet", 0, images=(image,))
        assert_same(out, Reference("focal", {})(ref_in), ours_in, ref_in, f"focal vs reference, image {image}")


def test_focal_batch_normaliser_relates_to_torchvision_s_per_image_one():
    """Ours: ``sum_b n_b L_b / sum_b n_b``; torchvision: ``mean_b L_b`` (``L_b`` its per-image loss)."""
    head = RetinaNetHead(in_channels=4, num_anchors=1, num_classes=C).double()

    def torchvision_loss(images, matched=None):
        x = head_inputs("retinanet", 0, images=images)
        if matched is not None:
            x["matched"] = matched
        out = head.compute_loss(x["targets"], {k: x[k] for k in ("cls_logits", "bbox_regression")}, x["anchors"],
                                x["matched"])
        return (out["classification"] + out["bbox_regression"]).detach()

    per_image = [float(torchvision_loss((b,))) for b in (0, 1)]
    counts = [3, 2]
    ours = float(FocalCriterion()(assignment(head_inputs("retinanet", 0)))["loss"].detach())
    assert ours == pytest.approx(sum(n * v for n, v in zip(counts, per_image, strict=True)) / sum(counts),
                                 rel=1e-12)
    assert ours != pytest.approx(float(torchvision_loss((0, 1))), rel=1e-3)  # they differ here ...
    # ... and agree on two images with the same number of positives (image 0 with one fewer)
    same = [torch.tensor([0, -1, 1, -2, -1, -1]), torch.tensor(MATCHED[1])]
    x = head_inputs("retinanet", 0)
    x["matched"] = same
    ours = float(FocalCriterion()(assignment(x))["loss"].detach())
    assert ours == pytest.approx(float(torchvision_loss((0, 1), matched=same)), rel=1e-12)


def test_fcos_focal_with_centerness_matches_torchvision_and_the_reference():
    """FCOS: focal + GIoU (the criterion) + centerness (the head), against torchvision's FCOS head."""
    torch.manual_seed(0)
    ours_head = FCOSCriterionHead(32, 1, C, FocalCriterion()).double()
    tv_head = FCOSHead(32, 1, C).double()
    ours_in, tv_in, ref_in = (head_inputs("fcos", 1, ignored=False) for _ in range(3))
    keys = ("cls_logits", "bbox_regression", "bbox_ctrness")
    out = ours_head.compute_loss(ours_in["targets"], {k: ours_in[k] for k in keys}, ours_in["anchors"],
                                 ours_in["matched"])
    tv = tv_head.compute_loss(tv_in["targets"], {k: tv_in[k] for k in keys}, tv_in["anchors"], tv_in["matched"])
    reference = Reference("focal", {})(ref_in)
    reference["loss_ctrness"] = Ref(ref_in).centerness()
    reference["loss"] = reference["loss"] + reference["loss_ctrness"]
    expected_tv = {"loss": tv["classification"] + tv["bbox_regression"] + tv["bbox_ctrness"],
                   "loss_cls": tv["classification"], "loss_box": tv["bbox_regression"],
                   "loss_ctrness": tv["bbox_ctrness"]}
    for expected, what in ((expected_tv, "torchvision FCOS"), (reference, "reference")):
        assert set(out) == set(expected)
        for key in expected:
            torch.testing.assert_close(out[key].detach(), expected[key].detach(), **VALUE, msg=f"{what} {key}")
    gours = torch.autograd.grad(out["loss"], [ours_in[k] for k in keys])
    for expected, x in ((expected_tv, tv_in), (reference, ref_in)):
        for ours_g, ref_g in zip(gours, torch.autograd.grad(expected["loss"], [x[k] for k in keys]), strict=True):
            torch.testing.assert_close(ours_g, ref_g, **GRAD)


@pytest.mark.parametrize("name", ["focal", "ap", "iou_balanced", "ghm"])
def test_no_positive_batch_normalises_by_one(name):
    """Without positives the normaliser is 1 (``max(1, |P|)``): focal's loss is the plain focal sum."""
    x = head_inputs("retinanet", 0)
    x["matched"] = [torch.full((6,), -1), torch.tensor([-1, -1, -2, -1, -1, -1])]
    out = build_criterion(name)(assignment(x))
    assert all(torch.isfinite(v) for v in out.values())
    values = {k: v.detach() for k, v in out.items()}
    if name in ("focal", "iou_balanced"):  # negatives weigh 1 in both
        torch.testing.assert_close(values["loss_cls"], Ref(x).focal_sum(0.25, 2.0).detach(), **VALUE)
    if name == "ap":  # a ranking loss without positives is 0 (docs/losses.md)
        assert float(values["loss_cls"]) == 0.0
    assert float(values["loss_box"]) == 0.0
    out["loss"].backward()
    assert torch.isfinite(x["cls_logits"].grad).all()
