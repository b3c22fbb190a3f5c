"""Hypothesis strategies for batches of logits/targets with ties and edge cases."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

DELTAS = (0.0, 0.25, 0.5, 1.0, 2.0)


@st.composite
def ranking_batches(draw, continuous: bool = False, max_size: int = 240):
    """(logits float64 (n,) or (a, c), targets, description) covering ties and edge cases.

    Targets are ternary {1, 0, -1} or, if ``continuous``, IoU targets in (0, 1] / 0 / -1.
    """
    n = draw(st.integers(1, max_size))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    case = draw(st.sampled_from(["random", "random", "random", "single_positive", "no_negatives",
                                 "no_positives", "all_ignored_but_one"]))
    spread = draw(st.sampled_from([0.1, 1.0, 3.0]))
    logits = torch.randn(n, generator=g, dtype=torch.float64) * spread
    quantum = draw(st.sampled_from([None, 0.25, 0.5, 1.0]))
    if quantum is not None:  # exact ties, and differences exactly at +-delta
        logits = torch.round(logits / quantum) * quantum
    p_pos = draw(st.sampled_from([0.02, 0.1, 0.3, 0.7]))
    u = torch.rand(n, generator=g)
    targets = torch.zeros(n, dtype=torch.float64)
    targets[u < p_pos] = 1.0
    targets[(u >= p_pos) & (u < p_pos + 0.1)] = -1.0
    if case == "single_positive":
        targets[targets == 1] = 0.0
        targets[int(torch.randint(n, (1,), generator=g))] = 1.0
    elif case == "no_negatives":
        targets[targets == 0] = 1.0
    elif case == "no_positives":
        targets[targets == 1] = 0.0
    elif case == "all_ignored_but_one":
        targets[:] = -1.0
        targets[0] = 1.0
    if continuous:
        iou = torch.rand(n, generator=g, dtype=torch.float64).clamp_min(0.01)
        if draw(st.booleans()):  # tied IoU targets
            iou = torch.ceil(iou * 4) / 4
        targets = torch.where(targets == 1, iou, targets)
    if draw(st.booleans()) and n % 4 == 0:  # a (anchors, classes) layout
        logits, targets = logits.view(n // 4, 4), targets.view(n // 4, 4)
    if not continuous and draw(st.booleans()):
        targets = targets.to(torch.int64)
    return logits, targets, case
