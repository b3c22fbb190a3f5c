"""The Parameterized AP search of Faster R-CNN: both heads' sets (RPN and R-CNN) at once (issue 11)."""

from __future__ import annotations

import json

import pytest
import torch

from detlosses.losses.pap_params import load_two_stage_pap_params
from detlosses.models import build_model_criterion
from detlosses.search import SearchConfig, SearchSpace, run_search
from detlosses.search.proxy import proxy_config
from detlosses.training import TrainConfig

BASE = dict(data="synthetic:images=12,size=64", image_size=64, batch_size=4, fpn_channels=16, lr=0.005,
            warmup_iters=1, progress_bar=False, model="faster_rcnn")


def test_two_stage_space_decodes_one_set_per_stage(tmp_path):
    space = SearchConfig(base=TrainConfig(**BASE), out=str(tmp_path)).space
    assert space.stages == ("rpn", "rcnn") and space.dimension == 82
    assert space.names[0] == "rpn_H2_0" and space.names[41] == "rcnn_H2_0" and space.names[-1] == "rcnn_reg_weight"
    theta = space.initial_mean()
    theta[40], theta[81] = 0.75, 0.25  # reg_weight 10^0.5 for the RPN, 10^-0.5 for the R-CNN head
    stages = space.to_stage_params(theta)
    assert stages["rpn"].reg_weight == pytest.approx(10 ** 0.5)
    assert stages["rcnn"].reg_weight == pytest.approx(10 ** -0.5)
    with pytest.raises(ValueError, match="one set per stage"):
        space.to_params(theta)
    assert SearchSpace().dimension == 41  # one-stage searches are unchanged
    (tmp_path / "split.json").write_text("{}")
    config = proxy_config(TrainConfig(**BASE), stages, tmp_path / "split.json", 3, tmp_path / "trial", 0)
    assert config.loss == "pap" and set(config.loss_options) == {"rpn", "rcnn"}
    criterion = build_model_criterion(config.model, config.loss, **config.loss_options)
    assert criterion.rpn.pap.reg_weight == pytest.approx(10 ** 0.5)
    assert criterion.rcnn.pap.reg_weight == pytest.approx(10 ** -0.5)
    torch.testing.assert_close(criterion.rcnn.pap.params.control_points, stages["rcnn"].control_points)


@pytest.mark.slow
@pytest.mark.xdist_group("search")
def test_micro_faster_rcnn_search_writes_a_two_stage_params_file(tmp_path):
    result = run_search(SearchConfig(base=TrainConfig(**BASE), out=str(tmp_path / "s"), rounds=1, samples_per_round=2,
                                     budget=1, poll_interval=0.2))
    stages = load_two_stage_pap_params(result.best_params)
    assert set(stages) == {"rpn", "rcnn"} and all(p.control_points.shape == (5, 12) for p in stages.values())
    assert len(json.loads((result.out / "rounds.json").read_text())["rounds"]) == 1
    assert "rpn reg_weight" in (result.out / "search.md").read_text()
    criterion = build_model_criterion("faster_rcnn", "pap", params_file=str(result.best_params))
    assert criterion.rpn.pap.reg_weight == pytest.approx(stages["rpn"].reg_weight)
