"""The proxy task of the search: a short training with sampled loss parameters, rewarded by AP.

As released (Tao et al., 2021): the training set is split into *search-train* and *search-val*
(seeded, saved once per search so every trial and worker uses the same split); each sample trains
the detector for a short budget with Parameterized AP Loss built from the sampled control points,
with the sampled box-gradient scale really applied (``reg_weight`` reaches the loss; the released
search set an attribute the head never read); the reward is COCO AP on search-val. A run whose loss
is NaN, or stuck at 1.0 for more than 50 iterations, is aborted with reward 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_json
from ..data import holdout_split, parse_data_spec
from ..losses.pap_params import PAPParams
from ..training import TrainConfig, train

__all__ = ["make_search_split", "proxy_config", "run_proxy"]


def make_search_split(data: str, split: str, fraction: float, seed: int, path: str | os.PathLike) -> Path:
    """Write (once) the search-train / search-val image ids of ``data``'s ``split``; returns the path."""
    path = Path(path)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("data") != data or saved.get("split") != split:
            raise ValueError(f"{path} holds a search split of {saved.get('data')}:{saved.get('split')}, "
                             f"not of {data}:{split}")
        return path
    dataset = parse_data_spec(data, split)
    if len(dataset) < 2:
        raise ValueError(f"{data}:{split} has {len(dataset)} image(s); the search needs at least 2")
    train_ids, val_ids = holdout_split(dataset, fraction, seed)
    payload = {"data": data, "split": split, "seed": seed, "val_fraction": fraction,
               "train_ids": train_ids, "val_ids": val_ids}
    return atomic_write_json(payload, path)


def proxy_config(base: TrainConfig, params: PAPParams | dict[str, PAPParams], split_file: str | os.PathLike,
                 budget: int, out: str | os.PathLike, seed: int) -> TrainConfig:
    """The training run of one sample: ``budget`` iterations, constant lr after a short warm-up.

    ``params``: one set, or one per stage (``{"rpn": ..., "rcnn": ...}`` for Faster R-CNN).
    """
    stages = params if isinstance(params, dict) else {"": params}
    options = {}
    for stage, stage_params in stages.items():
        if stage_params.control_points is None:
            raise ValueError("the proxy task needs control-point parameters")
        values = {"params": stage_params.control_points.tolist(), "reg_weight": float(stage_params.reg_weight)}
        if stage:
            options[stage] = values
        else:
            options.update(values)
    return dataclasses.replace(
        base,
        loss="pap",
        loss_options=options,
        pap_params=None,
        search_split=str(split_file),
        val_data=None,
        val_fraction=None,
        max_steps=int(budget),
        warmup_iters=min(base.warmup_iters, max(1, budget // 5)),
        lr_steps=[],
        val_every=10**6,  # validate once, at the end
        abort_on_divergence=True,
        out=str(out),
        seed=seed,
        progress_bar=False,
    )


def run_proxy(config: TrainConfig, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Train one sample; returns ``{"reward", "AP", "AP50", "diverged", "seconds_per_iteration"}``."""
    result = train(config, resume=(Path(config.out) / "checkpoints" / "last.ckpt").exists())
    metrics = result.metrics
    diverged = bool(metrics.get("diverged"))
    ap = float(metrics.get("AP") or 0.0)
    if not keep_checkpoints:
        shutil.rmtree(Path(config.out) / "checkpoints", ignore_errors=True)
    return {
        "reward": 0.0 if diverged else ap,
        "AP": ap,
        "AP50": float(metrics.get("AP50") or 0.0),
        "diverged": diverged,
        "seconds_per_iteration": float(metrics.get("seconds_per_iteration") or 0.0),
    }
