"""Faster R-CNN's R-CNN stage under data parallelism: two gloo processes, one image each, rank the union
of their proposals exactly as one process ranks the whole batch (issue 11)."""

from __future__ import annotations

import pytest
import torch
from tests.distributed.ranks import run_on_ranks

WORLD = 2
LOSSES = ("ap", "alrp", "rank_sort", "pap")
pytestmark = pytest.mark.xdist_group("distributed")


def stage_results(images: list[int]) -> dict:
    """Loss components and gradients of the R-CNN stage on ``images`` (of the reference batch)."""
    from tests.models import test_two_stage_reference as T

    from detlosses.models import build_model_criterion

    counts = [len(T.PROPOSALS[b]) + len(T.RCNN_GT[b]["boxes"]) for b in range(2)]
    rows = torch.cat([torch.arange(sum(counts[:b]), sum(counts[:b + 1])) for b in images])
    out = {}
    for name in LOSSES:
        logits_all, reg_all = T.rcnn_outputs(0)
        logits = logits_all.detach()[rows].clone().requires_grad_(True)
        reg = reg_all.detach()[rows].clone().requires_grad_(True)
        heads = T.make_rcnn(build_model_criterion("faster_rcnn", name))
        heads.box_predictor.outputs = (logits, reg)
        heads.train()
        proposals = [torch.tensor(T.PROPOSALS[b], dtype=torch.float64) for b in images]
        targets = [{"boxes": torch.tensor(T.RCNN_GT[b]["boxes"], dtype=torch.float64),
                    "labels": torch.tensor(T.RCNN_GT[b]["labels"])} for b in images]
        _, losses = heads({}, proposals, [(128, 128)] * len(images), targets)
        losses["loss_rcnn"].backward()
        out[name] = ({k: float(v.detach()) for k, v in losses.items()}, logits.grad.clone(), reg.grad.clone(), rows)
    return out


def _on_rank(rank: int) -> dict:
    return stage_results([rank])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_on_ranks(_on_rank, tmp_path_factory.mktemp("dist2"), WORLD)


@pytest.mark.parametrize("name", LOSSES)
def test_rcnn_stage_two_ranks_equal_one_process_on_the_union(name, two_ranks):
    values, logits_grad, reg_grad, _ = stage_results([0, 1])[name]
    for rank, result in enumerate(two_ranks):
        rank_values, rank_logits_grad, rank_reg_grad, rows = result[name]
        assert rank_values == pytest.approx(values, rel=1e-9, abs=1e-12), (name, rank)
        # each rank's gradients are scaled by the world size to undo DDP's averaging
        torch.testing.assert_close(rank_logits_grad / WORLD, logits_grad[rows], rtol=1e-7, atol=1e-13)
        torch.testing.assert_close(rank_reg_grad / WORLD, reg_grad[rows], rtol=1e-7, atol=1e-13)
