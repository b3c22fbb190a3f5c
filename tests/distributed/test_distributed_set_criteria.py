"""Deformable DETR's ranking criteria under data parallelism: two gloo processes, one image each, rank
the union of their queries exactly as one process ranks the whole batch (issue 13: "the union of ranks'
queries is ranked").

The batch, matches and targets are the hand-made ones of ``tests/models/test_set_criteria_reference.py``
(2 decoder layers, 2 images of 5 queries, 3 classes); rank ``r`` holds image ``r``. Every ranking loss
on queries (pap, ap, alrp, rank_sort) must give each rank the whole batch's loss values, and each rank's
gradients must be the single-process gradients of its image times the world size (DDP averages them).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
LOSSES = ("pap", "ap", "alrp", "rank_sort")
pytestmark = pytest.mark.xdist_group("distributed")


def criterion_results(images: list[int]) -> dict:
    """Loss components and gradients (logits, boxes) of every ranking criterion on ``images``."""
    from tests.models import test_set_criteria_reference as T

    from detlosses.models.set_criteria import SetPredictions, build_set_criterion

    all_logits, all_boxes = T.inputs(0)
    index = torch.tensor(images)

    def matcher(logits, boxes, targets):
        for layer in range(all_logits.shape[0]):
            if torch.equal(logits, all_logits[layer, index]):
                return [T.MATCHES[layer][b] for b in images]
        raise AssertionError("unknown layer")

    out = {}
    for name in LOSSES:
        logits = all_logits[:, index].clone().requires_grad_(True)
        boxes = all_boxes[:, index].clone().requires_grad_(True)
        losses = build_set_criterion(name)(SetPredictions(logits, boxes, [T.TARGETS[b] for b in images], matcher))
        losses["loss"].backward()
        out[name] = ({k: float(v.detach()) for k, v in losses.items()}, logits.grad.clone(), boxes.grad.clone())
    return out


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.save(criterion_results([rank]), os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-set")
    mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, start_method="spawn", join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", LOSSES)
def test_set_criterion_two_ranks_equal_one_process_on_the_union(name, two_ranks):
    values, logits_grad, boxes_grad = criterion_results([0, 1])[name]
    for rank, result in enumerate(two_ranks):
        rank_values, rank_logits_grad, rank_boxes_grad = result[name]
        assert rank_values == pytest.approx(values, rel=1e-9, abs=1e-12), (name, rank)
        torch.testing.assert_close(rank_logits_grad / WORLD, logits_grad[:, rank:rank + 1], rtol=1e-7, atol=1e-13)
        torch.testing.assert_close(rank_boxes_grad / WORLD, boxes_grad[:, rank:rank + 1], rtol=1e-7, atol=1e-13)
