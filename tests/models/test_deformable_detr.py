"""Deformable DETR (transformers) in the pipeline: end to end on synthetic data, output format, errors.

Needs the ``detr`` extra (``transformers``); skipped with that reason without it, except the test
of the message that says how to install it.
"""

from __future__ import annotations

import builtins
import sys

import pytest
import torch

from detlosses.models import DetectorConfig, build_detector
from detlosses.models.set_criteria import build_set_criterion

TINY = dict(num_queries=10, encoder_layers=1, decoder_layers=2, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
            attention_heads=4, num_feature_levels=2, n_points=2, dropout=0.0)


def tiny_detector(loss: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    config = DetectorConfig(model="deformable_detr", backbone="mobilenet_v2", num_classes=3, image_size=64,
                            model_options={**TINY, **options})
    return build_detector(config, build_set_criterion(loss))


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0], [35.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[12.0, 12.0, 52.0, 44.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


@pytest.mark.parametrize("loss", ["set", "pap"])
def test_tiny_model_trains_with_a_falling_loss(loss):
    pytest.importorskip("transformers", reason="the deformable_detr model needs the detr extra (transformers)")
    detector = tiny_detector(loss)
    detector.train()
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=1e-3)
    images, targets = batch()
    values = []
    for _ in range(8):
        losses = detector(images, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        values.append(float(losses["loss"].detach()))
    expected = {"set": {"loss", "loss_ce", "loss_bbox", "loss_giou"}, "pap": {"loss", "loss_pap", "loss_aux"}}[loss]
    assert set(losses) == expected
    assert min(values[-3:]) < values[0], values
    detector.eval()
    with torch.no_grad():
        outputs = detector(images)
    assert len(outputs) == 2
    for out in outputs:
        assert set(out) == {"boxes", "scores", "labels"}
        assert out["boxes"].shape[-1] == 4 and out["boxes"].shape[0] == out["scores"].shape[0] <= 30
        assert bool((out["scores"] > 0.05).all())  # the pipeline's score_thresh
    detector.score_thresh = 0.0  # Deformable DETR's own evaluation: the top 30 (query, class) pairs here
    with torch.no_grad():
        outputs = detector(images)
    for out in outputs:
        assert out["boxes"].shape == (30, 4) and out["scores"].shape == out["labels"].shape == (30,)
        assert bool((out["scores"][:-1] >= out["scores"][1:]).all())
        assert float(out["boxes"].min()) >= 0 and float(out["boxes"].max()) <= 64  # pixels of the input image
        assert bool((out["boxes"][:, 2:] >= out["boxes"][:, :2]).all())
        assert 0 <= int(out["labels"].min()) and int(out["labels"].max()) < 3


@pytest.mark.parametrize("loss", ["ap", "alrp", "rank_sort"])
def test_other_ranking_losses_run_on_the_matched_queries(loss):
    pytest.importorskip("transformers", reason="the deformable_detr model needs the detr extra (transformers)")
    detector = tiny_detector(loss)
    detector.train()
    images, targets = batch(1)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}  # a pure negative
    losses = detector(images, targets)
    assert "loss_aux" in losses and all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    head = detector.detr.class_embed[-1].weight.grad
    assert head is not None and float(head.abs().sum()) > 0


def test_resnet_backbone_and_state_dict_round_trip():
    pytest.importorskip("transformers", reason="the deformable_detr model needs the detr extra (transformers)")
    torch.manual_seed(0)
    config = DetectorConfig(model="deformable_detr", backbone="resnet18", num_classes=2, image_size=64,
                            model_options=TINY)
    first = build_detector(config, build_set_criterion("set"))
    second = build_detector(config, build_set_criterion("set"))
    second.load_state_dict(first.state_dict())
    first.eval()
    second.eval()
    images, _ = batch()
    with torch.no_grad():
        a, b = first(images), second(images)
    torch.testing.assert_close(a[0]["scores"], b[0]["scores"])


def test_bad_model_options_are_clear_errors():
    from detlosses.training import TrainConfig

    with pytest.raises(ValueError, match="unknown model_options \\['queries'\\]"):
        TrainConfig(model="deformable_detr", model_options={"queries": 5})
    with pytest.raises(ValueError, match="d_model must be a multiple of 32"):
        TrainConfig(model="deformable_detr", model_options={"d_model": 48})
    with pytest.raises(ValueError, match="model_options apply to deformable_detr only"):
        TrainConfig(model="retinanet", model_options={"num_queries": 5})
    with pytest.raises(ValueError, match="loss 'focal' does not apply to model 'deformable_detr'.*takes set, pap"):
        TrainConfig(model="deformable_detr", loss="focal")
    with pytest.raises(ValueError, match=r"loss 'set' does not apply to model 'retinanet' \(it is for deformable_detr"):
        TrainConfig(model="retinanet", loss="set")
    with pytest.raises(ValueError, match="optimizer must be"):
        TrainConfig(optimizer="adam")
    assert TrainConfig(model="deformable_detr").loss == "set"
    assert TrainConfig().loss == "focal"


def test_missing_transformers_says_how_to_install(monkeypatch):
    from detlosses.models.deformable_detr import require_transformers

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ValueError, match=r"pip install 'detlosses\[detr\]'"):
        require_transformers()


@pytest.mark.parametrize("args, message", [
    (["--model", "deformable_detr", "--loss", "focal"], "loss 'focal' does not apply to model 'deformable_detr'"),
    (["--model", "retinanet", "--loss", "set"], "loss 'set' does not apply to model 'retinanet'"),
    (["--model", "deformable_detr", "--set", "model_options={num_queries: 0}"], "num_queries must be an integer"),
])
def test_cli_bad_options_are_one_error_line(args, message, tmp_path, capsys):
    from detlosses.cli import main

    assert main(["train", "--data", "synthetic", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_search_proxy_config_builds_the_set_pap_criterion(tmp_path):
    """``detlosses search --model deformable_detr``: the proxy run's config is valid and its loss options
    (sampled control points, reg_weight) reach the set PAP criterion."""
    from detlosses.losses.pap_params import IDENTITY_THETA, PAPParams, control_points_from_theta
    from detlosses.models import build_model_criterion
    from detlosses.models.set_criteria import SetPAPCriterion
    from detlosses.search.proxy import proxy_config
    from detlosses.training import TrainConfig

    split = tmp_path / "split.json"
    split.write_text("{}")
    params = PAPParams("searched", control_points_from_theta([IDENTITY_THETA] * 5), 2.5)
    base = TrainConfig(model="deformable_detr", model_options={"num_queries": 10})
    config = proxy_config(base, params, split, budget=5, out=tmp_path / "proxy", seed=0)
    assert (config.model, config.loss) == ("deformable_detr", "pap")
    criterion = build_model_criterion(config.model, config.loss, **config.criterion_options())
    assert isinstance(criterion, SetPAPCriterion) and criterion.dense.pap.reg_weight == 2.5
