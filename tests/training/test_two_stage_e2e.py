"""Faster R-CNN and SSD end to end on tiny synthetic data (train -> checkpoint -> eval -> report, resume),
and the settings that do not apply to them refused with one clear error (issue 11)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from detlosses.cli import app
from detlosses.losses.pap_params import PRESETS, save_pap_params, save_two_stage_pap_params
from detlosses.models import DetectorConfig, build_detector, build_model_criterion, supported_losses
from detlosses.training import TrainConfig, evaluate_checkpoint, quiet_lightning, train

TINY = dict(data="synthetic:images=8,size=64", image_size=64, batch_size=4, epochs=1, warmup_iters=1,
            progress_bar=False, log_every=1, lr=0.005)


@pytest.fixture(autouse=True)
def _quiet():
    quiet_lightning()
    torch.set_num_threads(1)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "loss", "extra"), [
    ("faster_rcnn", "alrp", {"fpn_channels": 16}),
    ("ssd", "ap", {}),
])
def test_train_eval_report(tmp_path, model, loss, extra):
    config = TrainConfig(model=model, loss=loss, out=str(tmp_path / "run"), **TINY, **extra)
    result = train(config)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    for key in ("AP", "AP50", "oLRP", "oLRP_FN"):
        assert 0.0 <= metrics[key] <= 1.0
    assert (result.run_dir / "report.md").is_file()
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    if model == "faster_rcnn":
        assert "train/loss_rpn_step" in header and "train/loss_rcnn_step" in header
    if loss == "alrp":  # one self-balance weight per stage, updated at the epoch end
        assert "train/rpn_sb_weight" in header and "train/rcnn_sb_weight" in header
    evaluated = evaluate_checkpoint(result.run_dir / "checkpoints" / "last.ckpt", out=tmp_path / "eval")
    assert evaluated.metrics["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    if loss == "alrp":  # the checkpoint holds each stage's self-balance weight (what a resume restores)
        state = torch.load(result.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        weights = [k for k in state["state_dict"] if k.startswith("criterion.") and "self_balance" in k]
        assert any(k.startswith("criterion.rpn.") for k in weights)
        assert any(k.startswith("criterion.rcnn.") for k in weights)

def test_default_loss_is_torchvision_s_for_the_new_models():
    assert TrainConfig().loss == "focal"
    assert TrainConfig(model="faster_rcnn").loss == "ce" and TrainConfig(model="ssd").loss == "ce"
    assert "ce" not in supported_losses("retinanet")
    assert set(supported_losses("faster_rcnn")) == set(supported_losses("ssd")) == {
        "ce", "focal", "ap", "alrp", "rank_sort", "pap", "ghm", "iou_balanced"}


@pytest.mark.parametrize(("settings", "message"), [
    (dict(model="retinanet", loss="ce"), "loss 'ce' does not apply to model 'retinanet'.*faster_rcnn, ssd"),
    (dict(model="fcos", loss="ce"), "does not apply to model 'fcos'"),
    (dict(model="faster_rcnn", loss="nope"), "unknown loss 'nope'"),
])
def test_losses_a_model_does_not_take_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize(("settings", "message"), [
    (dict(model="ssd", backbone="resnet18"), "MobileNetV2 backbone.*resnet18"),
    (dict(model="ssd", head_norm="none"), "head_norm='none' does not apply to ssd"),
    (dict(model="ssd", anchor_scale=8.0), "anchor_scale=8.0 does not apply to ssd"),
    (dict(model="ssd", fpn_channels=64), "fpn_channels=64 does not apply to ssd"),
    (dict(model="ssd", trainable_layers=2), "trainable_layers=2 does not apply to ssd"),
    (dict(model="faster_rcnn", head_norm="none"), "head_norm='none' does not apply to faster_rcnn"),
])
def test_settings_that_do_not_apply_are_refused(settings, message):
    config = DetectorConfig(num_classes=2, image_size=64, **settings)
    with pytest.raises(ValueError, match=message):
        build_detector(config, build_model_criterion(config.model, "ce"))


def test_bad_two_stage_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="loss 'ce'.*takes no loss_options"):
        build_model_criterion("faster_rcnn", "ce", delta=1.0)
    with pytest.raises(ValueError, match="RPN stage: bad options for loss 'alrp'"):
        build_model_criterion("faster_rcnn", "alrp", rpn={"nope": 1})
    with pytest.raises(ValueError, match="rpn_weight must be a number >= 0"):
        build_model_criterion("faster_rcnn", "alrp", rpn_weight=-1)
    one = save_pap_params(PRESETS["retinanet"], tmp_path / "one.json")
    with pytest.raises(ValueError, match="holds one set of parameters.*faster_rcnn needs"):
        build_model_criterion("faster_rcnn", "pap", params_file=str(one))
    two = save_two_stage_pap_params({"rpn": PRESETS["faster_rcnn_rcnn"], "rcnn": PRESETS["faster_rcnn_rpn"]},
                                    tmp_path / "two.json")
    criterion = build_model_criterion("faster_rcnn", "pap", params_file=str(two))
    assert criterion.rpn.pap.reg_weight == pytest.approx(7.1324)
    assert criterion.rcnn.pap.reg_weight == pytest.approx(1.6950)


def test_cli_errors_and_help(tmp_path):
    runner = CliRunner()
    for args, message in [
        (["--model", "retinanet", "--loss", "ce"], "does not apply to model 'retinanet'"),
        (["--model", "ssd", "--backbone", "resnet18"], "MobileNetV2 backbone"),
    ]:
        result = runner.invoke(app, ["train", "--data", "synthetic:images=4,size=64", "--image-size", "64",
                                     "--out", str(tmp_path / "run"), *args])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert message in result.output
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "faster_rcnn" in text and "ssd" in text and "ce (default" in text
