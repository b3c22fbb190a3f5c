"""ATSS: adaptive training sample selection (Zhang et al., "Bridging the Gap Between Anchor-based and
Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020), for anchor heads.

For every ground-truth box ``g``:

1. on every pyramid level, take the ``top_k`` anchors whose centres are closest (L2) to ``g``'s centre:
   the candidates ``C_g`` (``top_k`` x levels anchors; fewer on a level with fewer anchors);
2. the IoU threshold of ``g`` is ``t_g = mean(IoU(C_g, g)) + std(IoU(C_g, g))`` (sample std, as the
   authors' code);
3. a candidate is positive for ``g`` when its IoU is ``>= t_g`` and its centre lies inside ``g``
   (at least 0.01 pixel from every side, as released).

An anchor positive for several boxes goes to the one it overlaps most; every other anchor is
background (ATSS ignores none). The result uses torchvision's ``Matcher`` convention: the matched
box index, or ``-1`` for background, so :class:`~detlosses.models.assignment.DenseAssignment` and every
criterion take it unchanged. The aLRP and Rank & Sort papers report ATSS variants of their detectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["atss_match", "BACKGROUND_MATCH"]

BACKGROUND_MATCH = -1
"""torchvision ``Matcher.BELOW_LOW_THRESHOLD``: an anchor matched to no box."""


def _centres(boxes: Tensor) -> Tensor:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def atss_match(gt_boxes: Tensor, anchors: Tensor, anchors_per_level: Sequence[int], top_k: int = 9) -> Tensor:
    """Matched box index per anchor (``-1``: background) by ATSS.

    Args:
        gt_boxes: ``(G, 4)`` ground-truth boxes, ``xyxy``.
        anchors: ``(A, 4)`` anchors of one image, ``xyxy``, level after level.
        anchors_per_level: how many of ``anchors`` each pyramid level has (they sum to ``A``).
        top_k: candidates per level and box (9 in the paper).

    Returns:
        ``(A,)`` int64.
    """
    if sum(anchors_per_level) != anchors.shape[0]:
        raise ValueError(f"anchors_per_level {list(anchors_per_level)} sums to {sum(anchors_per_level)}, "
                         f"but there are {anchors.shape[0]} anchors")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    matched = torch.full((anchors.shape[0],), BACKGROUND_MATCH, dtype=torch.int64, device=anchors.device)
    if gt_boxes.numel() == 0:
        return matched
    ious = box_iou(gt_boxes, anchors)  # (G, A)
    distances = torch.cdist(_centres(gt_boxes), _centres(anchors))  # (G, A)
    candidates = []
    start = 0
    for count in anchors_per_level:
        k = min(top_k, count)
        if k:
            nearest = distances[:, start:start + count].topk(k, dim=1, largest=False).indices
            candidates.append(nearest + start)
        start += count
    candidates = torch.cat(candidates, dim=1)  # (G, K)
    candidate_ious = ious.gather(1, candidates)
    std = candidate_ious.std(dim=1, keepdim=True) if candidates.shape[1] > 1 else torch.zeros_like(
        candidate_ious[:, :1])
    threshold = candidate_ious.mean(dim=1, keepdim=True) + std
    centres = _centres(anchors)[candidates]  # (G, K, 2)
    inside = torch.minimum(centres - gt_boxes[:, None, :2], gt_boxes[:, None, 2:] - centres).min(dim=-1).values > 0.01
    positive = (candidate_ious >= threshold) & inside
    # IoU of each (box, anchor) pair that is positive; -1 elsewhere; each anchor takes its best box
    scores = torch.full_like(ious, -1.0)
    scores.scatter_(1, candidates, torch.where(positive, candidate_ious, torch.full_like(candidate_ious, -1.0)))
    best, box = scores.max(dim=0)
    return torch.where(best >= 0, box, matched)
