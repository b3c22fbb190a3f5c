"""Deformable DETR's ranking criteria under data parallelism: two gloo processes, one image each, rank
the union of their queries exactly as one process ranks the whole batch (issue 13: "the union of ranks'
queries is ranked").

The batch, matches and targets are the hand-made ones of ``tests/models/test_set_criteria_reference.py``
(2 decoder layers, 2 images of 5 queries, 3 classes); rank ``r`` holds image ``r``. Every ranking loss
on queries (pap, ap, alrp, rank_sort) must give each rank the whole batch's loss values, and each rank's
gradients must be the single-process gradients of its image times the world size (DDP averages them).
"""

from __future__ import annotations

import pytest
import torch
from tests.distributed.ranks import run_on_ranks

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


def _on_rank(rank: int) -> dict:
    return criterion_results([rank])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_on_ranks(_on_rank, tmp_path_factory.mktemp("dist-set"), WORLD)


@pytest.mark.parametrize("name", LOSSES)
def test_set_criterion_two_ranks_equal_one_process_on_the_union(name, two_ranks):
    values, logits_grad, boxes_grad = criterion_results([0, 1])[name]
    for rank, result in enumerate(two_ranks):
        rank_values, rank_logits_grad, rank_boxes_grad = result[name]
        assert rank_values == pytest.approx(values, rel=1e-9, abs=1e-12), (name, rank)
        torch.testing.assert_close(rank_logits_grad / WORLD, logits_grad[:, rank:rank + 1], rtol=1e-7, atol=1e-13)
        torch.testing.assert_close(rank_boxes_grad / WORLD, boxes_grad[:, rank:rank + 1], rtol=1e-7, atol=1e-13)


# --------------------------------------------------------------------------- the whole model, "set" and "pap"
MODEL_LOSSES = ("set", "pap")


def model_gradients(images: list[int]) -> dict:
    """Parameter gradients of the tiny Deformable DETR on ``images`` of the test batch, per loss."""
    from tests.models.test_deformable_detr import batch, tiny_detector

    all_images, all_targets = batch()
    out = {}
    for name in MODEL_LOSSES:
        detector = tiny_detector(name)
        detector.train()
        for module in detector.modules():  # batch statistics couple a batch's images (DDP keeps them per rank)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        losses = detector([all_images[b] for b in images], [all_targets[b] for b in images])
        losses["loss"].backward()
        out[name] = {key: p.grad.clone() for key, p in detector.named_parameters() if p.grad is not None}
    return out


def _model_on_rank(rank: int) -> dict:
    return model_gradients([rank])


@pytest.fixture(scope="module")
def two_model_ranks(tmp_path_factory):
    pytest.importorskip("transformers", reason="the deformable_detr model needs the detr extra (transformers)")
    return run_on_ranks(_model_on_rank, tmp_path_factory.mktemp("dist-detr"), WORLD)


@pytest.mark.parametrize("name", MODEL_LOSSES)
def test_model_ddp_average_equals_one_process_on_the_union(name, two_model_ranks):
    """DDP averages the ranks' parameter gradients: that average must be one process's gradient on both
    images. For ``set`` this needs Deformable DETR's all-reduced box count (image 0 has 2 boxes, image 1
    has 1: per-rank normalisers would weight image 1's boxes twice as much)."""
    single = model_gradients([0, 1])[name]
    ranks = [result[name] for result in two_model_ranks]
    assert set(ranks[0]) == set(ranks[1]) == set(single)
    # float32 through a deep backbone: relative to each tensor's norm, with a floor for the parameters whose
    # gradient is zero analytically (biases before GroupNorm, attention key biases) and float noise here
    floor = 1e-6 * max(float(grad.norm()) for grad in single.values())
    for key, grad in single.items():
        average = (ranks[0][key] + ranks[1][key]) / WORLD
        error = float((average - grad).norm())
        assert error <= 1e-4 * float(grad.norm()) + floor, (name, key, error, float(grad.norm()))
