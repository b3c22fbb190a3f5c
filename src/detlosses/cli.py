"""The ``detlosses`` command line: train, eval, compare, search.

Options come from defaults, then ``--config FILE.yaml``, then ``--set key=value`` overrides, then
the explicit flags. Run ``detlosses <command> --help`` for each command.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Exact ranking-based and balanced losses for one-stage detectors: train, evaluate, compare, search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of training options.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any config key: key=value (repeatable).")]
DataOpt = Annotated[
    str | None,
    typer.Option(help="Data: synthetic[:images=N,size=S,seed=K] | coco:<ann.json>:<images> | voc:<root> | "
                      "yolo:<data.yaml>."),
]
ModelOpt = Annotated[str | None, typer.Option(help="Detector: retinanet | fcos.")]
BackboneOpt = Annotated[str | None, typer.Option(help="Backbone with FPN: mobilenet_v2 | resnet18 | resnet50.")]
PretrainedOpt = Annotated[
    bool | None,
    typer.Option("--pretrained-backbone/--no-pretrained-backbone",
                 help="ImageNet backbone via torchvision's weights API."),
]
WeightsDirOpt = Annotated[
    Path | None,
    typer.Option(help="Seed the torch hub cache from this folder of .pth files first (offline machines)."),
]
EpochsOpt = Annotated[int | None, typer.Option(help="Training epochs.")]
BatchOpt = Annotated[int | None, typer.Option(help="Images per batch (per device).")]
SizeOpt = Annotated[int | None, typer.Option(help="Square image size for training and evaluation.")]
LrOpt = Annotated[float | None, typer.Option(help="Base SGD learning rate.")]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed.")]
OutOpt = Annotated[Path | None, typer.Option(help="Output directory.")]
PrecisionOpt = Annotated[str | None, typer.Option(help="32 | 16-mixed | bf16-mixed.")]
DevicesOpt = Annotated[int | None, typer.Option(help="Number of devices (processes).")]
StrategyOpt = Annotated[str | None, typer.Option(help="Lightning strategy, e.g. auto | ddp.")]
AcceleratorOpt = Annotated[str | None, typer.Option(help="auto | cpu | gpu.")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _build_config(config: Path | None, sets: list[str] | None, **flags: Any):
    from .training import apply_overrides, load_config

    overrides = apply_overrides({}, sets or [])
    for key, value in flags.items():
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    return load_config(config, overrides)


def _seed_weights(weights_dir: Path | None) -> None:
    if weights_dir is not None:
        from .models import seed_torch_hub_cache

        seed_torch_hub_cache(weights_dir)


def _print_metrics(metrics: dict[str, Any]) -> None:
    keys = ("AP", "AP50", "AP75", "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")
    parts = []
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not math.isnan(value):
            parts.append(f"{key} {100 * value:.1f}")
    spi = metrics.get("seconds_per_iteration")
    if isinstance(spi, (int, float)) and not math.isnan(spi):
        parts.append(f"{spi:.3f} s/it")
    typer.echo("  ".join(parts))


def _run(job) -> Any:
    import logging

    from .training import quiet_lightning

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("detlosses").setLevel(logging.INFO)
    logging.getLogger("detlosses.search").setLevel(logging.INFO)
    quiet_lightning()
    try:
        return job()
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        _fail(str(err))


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    loss: Annotated[str | None, typer.Option(help="focal | ap | alrp | rank_sort | pap | ghm | iou_balanced.")] = None,
    pap_params: Annotated[Path | None, typer.Option(help="Params file for --loss pap (from detlosses search).")] = None,
    pretrained_backbone: PretrainedOpt = None,
    weights_dir: WeightsDirOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    image_size: SizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    precision: PrecisionOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    accelerator: AcceleratorOpt = None,
) -> None:
    """Train a detector with one loss; evaluate it (COCO AP, LRP) and write report.md."""
    from .training import train as train_run

    def job():
        cfg = _build_config(
            config, set_, data=data, model=model, backbone=backbone, loss=loss, pap_params=pap_params,
            pretrained_backbone=pretrained_backbone, epochs=epochs, batch_size=batch_size, image_size=image_size,
            lr=lr, seed=seed, out=out, precision=precision, devices=devices, strategy=strategy,
            accelerator=accelerator,
        )
        _seed_weights(weights_dir)
        return train_run(cfg, resume=resume)

    result = _run(job)
    if result.report is not None or result.metrics:
        _print_metrics(result.metrics)
        typer.echo(f"run: {result.run_dir}" + (f"  report: {result.report}" if result.report else ""))


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A .ckpt written by detlosses train.")],
    data: DataOpt = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate (default: the run's val split).")] = None,
    out: OutOpt = None,
    batch_size: BatchOpt = None,
    accelerator: Annotated[str, typer.Option(help="auto | cpu | gpu.")] = "auto",
) -> None:
    """Evaluate a checkpoint: metrics.json (COCO AP and LRP) and report.md."""
    from .training import evaluate_checkpoint

    result = _run(lambda: evaluate_checkpoint(checkpoint, data=data, split=split, out=out, batch_size=batch_size,
                                              accelerator=accelerator))
    _print_metrics(result.metrics)
    typer.echo(f"metrics: {result.run_dir / 'metrics.json'}" + (f"  report: {result.report}" if result.report else ""))


def _csv_list(text: str, cast=str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        _fail(f"expected a comma-separated list, got {text!r}")
    try:
        return [cast(item) for item in items]
    except ValueError:
        _fail(f"could not read {text!r} as a list of {cast.__name__}")
    return []


@app.command()
def compare(
    losses: Annotated[str, typer.Option(help="Comma-separated loss names.")] = "focal,ap,alrp",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    pretrained_backbone: PretrainedOpt = None,
    weights_dir: WeightsDirOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    image_size: SizeOpt = None,
    lr: LrOpt = None,
    out: OutOpt = None,
    precision: PrecisionOpt = None,
    devices: DevicesOpt = None,
    accelerator: AcceleratorOpt = None,
) -> None:
    """Train the same detector on the same data with several losses and seeds; write comparison.md."""
    from .models import LOSS_NAMES
    from .training import compare as compare_runs

    loss_list = _csv_list(losses)
    unknown = [name for name in loss_list if name not in LOSS_NAMES]
    if unknown:
        _fail(f"unknown losses {unknown}; choose from {', '.join(LOSS_NAMES)}")
    seed_list = _csv_list(seeds, int)

    def job():
        cfg = _build_config(
            config, set_, data=data, model=model, backbone=backbone, pretrained_backbone=pretrained_backbone,
            epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr,
            out=out or Path("runs/compare"), precision=precision, devices=devices, accelerator=accelerator,
        )
        _seed_weights(weights_dir)
        return compare_runs(cfg, loss_list, seed_list, cfg.out)

    path, runs = _run(job)
    typer.echo("")
    typer.echo(path.read_text())
    typer.echo(f"comparison: {path}")
    for run in runs:
        report = Path(run["run_dir"]) / "report.md"
        if report.exists():
            typer.echo(f"report ({run['loss']}, seed {run['seed']}): {report}")


@app.command()
def search(
    data: DataOpt = None,
    rounds: Annotated[int, typer.Option(help="Search rounds (released: 40).")] = 40,
    samples_per_round: Annotated[int, typer.Option(help="Samples per round (released: 8).")] = 8,
    budget: Annotated[int, typer.Option(help="Training iterations of each sample's proxy run.")] = 200,
    sampler: Annotated[str, typer.Option(help="ppo (the paper's) | tpe | cmaes (Optuna's, for comparison).")] = "ppo",
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or journal:<file>; "
                          "default sqlite:///<out>/study.db. Workers on other machines can join the same study."),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes on this machine.")] = 1,
    study_name: Annotated[str, typer.Option(help="Study name inside the storage.")] = "pap-search",
    val_fraction: Annotated[float, typer.Option(help="Share of the training split held out as search-val.")] = 0.2,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    pretrained_backbone: PretrainedOpt = None,
    weights_dir: WeightsDirOpt = None,
    batch_size: BatchOpt = None,
    image_size: SizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
) -> None:
    """Search the Parameterized AP Loss functions (PPO on Optuna storage); writes best_params.json.

    Resumable: run the same command again after an interruption and it continues.
    """
    from .search import SAMPLERS, SearchConfig, run_search

    if sampler not in SAMPLERS:
        _fail(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")

    def job():
        base = _build_config(config, set_, data=data, model=model, backbone=backbone,
                             pretrained_backbone=pretrained_backbone, batch_size=batch_size, image_size=image_size,
                             lr=lr, seed=seed)
        _seed_weights(weights_dir)
        search_config = SearchConfig(
            base=base, out=str(out or Path("runs/search")), rounds=rounds, samples_per_round=samples_per_round,
            budget=budget, sampler=sampler, storage=storage, study_name=study_name, workers=workers,
            seed=base.seed, val_fraction=val_fraction,
        )
        return run_search(search_config)

    result = _run(job)
    typer.echo((result.out / "search.md").read_text())
    typer.echo(f"params file: {result.best_params}  (detlosses train --loss pap --pap-params {result.best_params})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``detlosses`` script."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
