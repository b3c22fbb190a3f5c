"""Two gloo processes, each with half of a batch, against one process on the whole batch."""

from __future__ import annotations

import pytest
import torch
from tests.distributed.ranks import run_on_ranks

import detlosses

WORLD = 2
pytestmark = pytest.mark.xdist_group("distributed")


def make_batch(seed: int = 0, images: int = 4, anchors: int = 3000, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = -4.6 + 0.6 * torch.randn(images, anchors, classes, generator=g, dtype=torch.float64)
    logits = torch.round(logits * 64) / 64  # ties within and across ranks
    targets = torch.zeros(images, anchors, classes, dtype=torch.long)
    targets[torch.rand(images, anchors, classes, generator=g) < 0.004] = 1
    targets[torch.rand(images, anchors, classes, generator=g) < 0.01] = -1
    targets[1] = torch.where(targets[1] == 1, 0, targets[1])  # a rank-local image without positives
    ious = torch.rand(images, anchors, classes, generator=g, dtype=torch.float64)
    # distinct offsets for the top-k case (ties at the cut are kept whole under data parallelism)
    jitter = 1e-9 * torch.randperm(logits.numel(), generator=g).to(torch.float64).view_as(logits)
    return logits, targets, ious, jitter


def _errors(targets: torch.Tensor, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(targets.numel(), generator=g, dtype=torch.float64)[: int((targets == 1).sum())]


def run_losses(logits, targets, ious, jitter, errors, distributed):
    """Values and gradients of every distributed-aware loss on (a share of) the batch."""
    out = {}
    iou_targets = torch.where(targets == 1, ious, targets.double())

    def grads(fn, *inputs):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        values = fn(*leaves)
        total = sum(values) if isinstance(values, tuple) else values
        total.backward()
        return ([float(v.detach()) for v in values] if isinstance(values, tuple) else [float(values.detach())],
                [leaf.grad.clone() for leaf in leaves])

    out["ap"] = grads(lambda x: detlosses.ap_loss(x, targets, distributed=distributed), logits)
    out["ap_delta0"] = grads(lambda x: detlosses.ap_loss(x, targets, delta=0.0, distributed=distributed), logits)
    out["alrp"] = grads(lambda x, e: tuple(detlosses.alrp_loss(x, targets, e, distributed=distributed)),
                        logits, errors)
    out["rank_sort"] = grads(lambda x: tuple(detlosses.rank_sort_loss(x, iou_targets, distributed=distributed)),
                             logits)
    for params in ("retinanet", "linear"):
        out[f"pap_{params}"] = grads(
            lambda x, u, p=params: detlosses.parameterized_ap_loss(x, targets, u, params=p, reg_weight=2.0,
                                                                     distributed=distributed),
            logits, ious)
    out["pap_per_positive"] = grads(  # one soft IoU per positive (the aLRP errors serve: in [0, 1])
        lambda x, u: detlosses.parameterized_ap_loss(x, targets, u, reg_weight=2.0, distributed=distributed),
        logits, errors)
    out["pap_topk"] = grads(
        lambda x, u: detlosses.parameterized_ap_loss(x + jitter, targets, u, topk=2000, distributed=distributed),
        logits, ious)
    ghmc = detlosses.GHMC(momentum=0.75, distributed=distributed)
    valid = (targets >= 0).double()
    out["ghmc"] = grads(lambda x: ghmc(x.reshape(-1, 3), targets.clamp(min=0).reshape(-1, 3).double(),
                                       valid.reshape(-1, 3)), logits)
    out["ghmc_ema"] = ([float(v) for v in ghmc.ema], [])
    out["iou_focal"] = grads(  # a plain sum: each rank returns its share, with the union's normaliser
        lambda x: detlosses.iou_balanced_focal_loss(x, targets, ious, reduction="sum", distributed=distributed),
        logits)
    # per-anchor class indices (an anchor's first positive class; -2 where it has an ignored entry)
    labels = torch.where((targets == 1).any(-1), (targets == 1).int().argmax(-1),
                         torch.where((targets == -1).any(-1), -2, -1))
    out["iou_focal_labels"] = grads(
        lambda x: detlosses.iou_balanced_focal_loss(x, labels, ious[..., 0], reduction="sum",
                                                    distributed=distributed), logits)
    ghmr = detlosses.GHMR(distributed=distributed)
    out["ghmr"] = grads(lambda x: ghmr(x.reshape(-1, 3), ious.reshape(-1, 3)), logits)
    return out


def _on_rank(rank: int) -> dict:
    logits, targets, ious, jitter = make_batch()
    errors_all = _errors(targets)
    per = logits.shape[0] // WORLD
    share = slice(rank * per, (rank + 1) * per)
    counts_before = int((targets[: share.start] == 1).sum())
    local_errors = errors_all[counts_before: counts_before + int((targets[share] == 1).sum())]
    out = run_losses(logits[share], targets[share], ious[share], jitter[share], local_errors, True)
    if rank == 0:  # the default ranks this rank's tensors alone: called on one rank only, it cannot hang
        out["local_only"] = float(detlosses.ap_loss(logits[share], targets[share]))
    return out


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    return run_on_ranks(_on_rank, tmp_path_factory.mktemp("dist"), WORLD)


@pytest.fixture(scope="module")
def single_results():
    logits, targets, ious, jitter = make_batch()
    return run_losses(logits, targets, ious, jitter, _errors(targets), False)


NAMES = ["ap", "ap_delta0", "alrp", "rank_sort", "pap_retinanet", "pap_linear", "pap_per_positive", "pap_topk",
         "ghmc", "ghmr"]


@pytest.mark.parametrize("name", NAMES)
def test_two_ranks_equal_one_process_on_the_union(name, two_rank_results, single_results):
    values, grads = single_results[name]
    per = make_batch()[0].shape[0] // WORLD
    for rank, result in enumerate(two_rank_results):
        rank_values, rank_grads = result[name]
        assert rank_values == pytest.approx(values, rel=1e-9, abs=1e-12), (name, rank)
        for got, want in zip(rank_grads, grads, strict=True):
            if want.dim() == 3:  # per-element inputs (logits, IoUs): this rank's images
                want = want[rank * per:(rank + 1) * per]
            else:  # per-positive inputs (aLRP errors): this rank's positives
                counts = [int((make_batch()[1][r * per:(r + 1) * per] == 1).sum()) for r in range(WORLD)]
                start = sum(counts[:rank])
                want = want[start:start + counts[rank]]
            # each rank's gradients are scaled by the world size to undo DDP's averaging
            torch.testing.assert_close(got / WORLD, want, rtol=1e-7, atol=1e-13, msg=f"{name} rank {rank}")


def test_the_default_is_this_process_alone(two_rank_results):
    logits, targets, _, _ = make_batch()
    per = logits.shape[0] // WORLD
    expected = float(detlosses.ap_loss(logits[:per], targets[:per], distributed=False))
    assert two_rank_results[0]["local_only"] == pytest.approx(expected, rel=1e-12)


def test_ghm_histogram_state_is_the_union_state(two_rank_results, single_results):
    for result in two_rank_results:
        assert result["ghmc_ema"][0] == pytest.approx(single_results["ghmc_ema"][0], rel=1e-12)


@pytest.mark.parametrize("name", ["iou_focal", "iou_focal_labels"])  # per-element targets, per-anchor labels
def test_iou_balanced_focal_uses_the_union_normaliser(name, two_rank_results, single_results):
    values, grads = single_results[name]
    per = make_batch()[0].shape[0] // WORLD
    total = sum(result[name][0][0] for result in two_rank_results)
    assert total == pytest.approx(values[0], rel=1e-9)
    for rank, result in enumerate(two_rank_results):
        torch.testing.assert_close(result[name][1][0], grads[0][rank * per:(rank + 1) * per],
                                   rtol=1e-7, atol=1e-13)
