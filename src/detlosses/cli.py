"""The ``detlosses`` command line: train, eval, compare, search.

Options come from defaults, then ``--config FILE.yaml``, then ``--set key=value`` overrides, then
the explicit flags. Run ``detlosses <command> --help`` for each command.

Heavy modules (Lightning, the torchvision detectors, matplotlib, faster-coco-eval, Optuna, torch itself)
are imported inside the commands, so ``detlosses --help`` answers at once. Bad input ends in one
``error: ...`` line (exit code 2), never a traceback.
"""

from __future__ import annotations

import errno
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .training.config import TrainConfig, config_keys_help

HELP_WIDTH = 120
"""Width of ``--help`` when standard output is not a terminal (a terminal's own width is used otherwise)."""

_DEFAULTS = TrainConfig.defaults()


def _default(key: str) -> str:
    """`` (default: X)`` for a config key (the flags default to None so the config file can set them)."""
    value = _DEFAULTS[key]
    if isinstance(value, bool):
        value = str(value).lower()
    return f" (default: {value})"


app = typer.Typer(
    help="Exact ranking-based and balanced losses for one-stage detectors: train, evaluate, compare, search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of training options (any config key).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key: key=value, value read as YAML (repeatable; keys listed "
                               "below)."),
]
DataOpt = Annotated[
    str | None,
    typer.Option(help="Training data: synthetic[:images=N,size=S,seed=K] | coco:<ann.json>:<images> | "
                      "voc:<root>[:<split>] | yolo:<data.yaml>[:<split>]." + _default("data")),
]
ValDataOpt = Annotated[
    str | None,
    typer.Option(help="Validation data, same forms as --data (e.g. coco:<val.json>:<images>) (default: --data at "
                      "the 'val' split). Runs refuse validation images that are training images."),
]
TestDataOpt = Annotated[
    str | None,
    typer.Option(help="Test data for 'detlosses eval --split test', same forms as --data (default: --data at the "
                      "'test' split)."),
]
ValFractionOpt = Annotated[
    float | None,
    typer.Option(help="Hold this share of the training images out for validation (seeded by split_seed; the split "
                      "is written to <out>/data_split.json), e.g. 0.2."),
]
AllowTrainAsValOpt = Annotated[
    bool,
    typer.Option("--allow-train-as-val",
                 help="Measure on validation images that are also training images, on purpose."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(help="Detector: retinanet | fcos | faster_rcnn | ssd | deformable_detr (needs detlosses\\[detr])."
                      + _default("model")),
]
BackboneOpt = Annotated[
    str | None, typer.Option(help="Backbone with FPN: mobilenet_v2 | resnet18 | resnet50." + _default("backbone")),
]
PretrainedOpt = Annotated[
    bool | None,
    typer.Option("--pretrained-backbone/--no-pretrained-backbone",
                 help="ImageNet backbone via torchvision's weights API." + _default("pretrained_backbone")),
]
WeightsDirOpt = Annotated[
    Path | None,
    typer.Option(help="Seed the torch hub cache from this folder of .pth files first (offline machines)."),
]
EpochsOpt = Annotated[int | None, typer.Option(help="Training epochs." + _default("epochs"))]
BatchOpt = Annotated[int | None, typer.Option(help="Images per batch (per device)." + _default("batch_size"))]
SizeOpt = Annotated[
    int | None, typer.Option(help="Square image size for training and evaluation." + _default("image_size")),
]
LrOpt = Annotated[float | None, typer.Option(help="Base SGD learning rate." + _default("lr"))]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed." + _default("seed"))]
OutOpt = Annotated[Path | None, typer.Option(help="Output directory." + _default("out"))]
PrecisionOpt = Annotated[str | None, typer.Option(help="32 | 16-mixed | bf16-mixed." + _default("precision"))]
DevicesOpt = Annotated[int | None, typer.Option(help="Number of devices (processes)." + _default("devices"))]
StrategyOpt = Annotated[str | None, typer.Option(help="Lightning strategy, e.g. auto | ddp." + _default("strategy"))]
AcceleratorOpt = Annotated[
    str | None, typer.Option(help="auto | cpu | gpu | cuda | mps." + _default("accelerator")),
]

SET_KEYS_EPILOG = (
    "Config keys (for --set key=value and --config FILE.yaml; type and default):\n\n"
    + "\n".join(f"  {line}" for line in config_keys_help().splitlines())
)


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
    if metrics.get("num_gt") == 0:
        typer.echo("AP and LRP undefined: the evaluation data has no ground-truth box")
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
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return job()
    except (ValueError, FileNotFoundError, FileExistsError, MisconfigurationException) as err:
        _fail(str(err))
    except (PermissionError, IsADirectoryError, NotADirectoryError) as err:  # the environment, not a bug
        where = f": {err.filename}" if err.filename else ""
        _fail(f"{err.strerror or err}{where}")
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):  # disk full / read-only / over quota
            where = f" writing {err.filename}" if err.filename else ""
            _fail(f"{err.strerror}{where}")
        raise


@app.command(epilog=SET_KEYS_EPILOG)
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    val_data: ValDataOpt = None,
    test_data: TestDataOpt = None,
    val_fraction: ValFractionOpt = None,
    allow_train_as_val: AllowTrainAsValOpt = False,
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    loss: Annotated[
        str | None,
        typer.Option(help="retinanet, fcos: focal (default) | ap | alrp | rank_sort | pap | ghm | iou_balanced; "
                          "faster_rcnn (both stages), ssd: ce (default: torchvision's own loss) | the same seven; "
                          "deformable_detr: set (default: its own set loss) | pap | ap | alrp | rank_sort."),
    ] = None,
    pap_params: Annotated[Path | None, typer.Option(help="Params file for --loss pap (from detlosses search).")] = None,
    recipe: Annotated[Path | None, typer.Option(
        help="A published recipe (configs/recipes/<model>_<loss>.yaml): its loss, lr per image, anchors, box "
             "coder and assigner on top of the other options (not with --lr).")] = None,
    pretrained_backbone: PretrainedOpt = None,
    weights_dir: WeightsDirOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    image_size: SizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last checkpoint (refused if there is none).")
    ] = False,
    resume_or_start: Annotated[
        bool, typer.Option(help="Continue the run in --out if there is one, else start it.")
    ] = False,
    precision: PrecisionOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    accelerator: AcceleratorOpt = None,
) -> None:
    """Train a detector with one loss; evaluate it (COCO AP, LRP) and write report.md."""
    from .training import train as train_run

    if recipe is not None and lr is not None:
        _fail("--lr and --recipe both set the learning rate: the recipe gives it per image; drop one")

    def job():
        from .training.recipes import apply_recipe, load_recipe

        chosen = load_recipe(recipe) if recipe is not None else None
        cfg = _build_config(
            config, set_, data=data, val_data=val_data, test_data=test_data, val_fraction=val_fraction,
            allow_train_as_val=allow_train_as_val or None, model=model or (chosen and chosen.model),
            backbone=backbone, loss=loss or (chosen and chosen.loss),
            pap_params=pap_params, pretrained_backbone=pretrained_backbone, epochs=epochs, batch_size=batch_size,
            image_size=image_size, lr=lr, seed=seed, out=out, precision=precision, devices=devices,
            strategy=strategy, accelerator=accelerator,
        )
        if chosen is not None:
            cfg = apply_recipe(cfg, chosen)
        _seed_weights(weights_dir)
        return train_run(cfg, resume=resume, resume_or_start=resume_or_start)

    result = _run(job)
    if not result.is_primary:  # data-parallel ranks other than 0 stay quiet
        return
    if result.report is not None or result.metrics:
        _print_metrics(result.metrics)
        typer.echo(f"run: {result.run_dir}" + (f"  report: {result.report}" if result.report else ""))


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="A .ckpt written by detlosses train.")],
    data: DataOpt = None,
    split: Annotated[
        str | None,
        typer.Option(help="Split to evaluate: 'test' is the run's test data (its --test-data, else --data at the "
                          "'test' split); another name reads --data (or the run's data) at that split (default: "
                          "the run's validation data)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: <run>/eval).")] = None,
    batch_size: BatchOpt = None,
    accelerator: Annotated[str, typer.Option(help="auto | cpu | gpu | cuda | mps.")] = "auto",
    allow_train_as_val: Annotated[
        bool, typer.Option("--allow-train-as-val", help="Evaluate on training images of the run, on purpose.")
    ] = False,
) -> None:
    """Evaluate a checkpoint: metrics.json (COCO AP and LRP) and report.md."""
    from .training import evaluate_checkpoint

    result = _run(lambda: evaluate_checkpoint(checkpoint, data=data, split=split, out=out, batch_size=batch_size,
                                              accelerator=accelerator, allow_train_as_val=allow_train_as_val))
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
    val_data: ValDataOpt = None,
    val_fraction: ValFractionOpt = None,
    allow_train_as_val: AllowTrainAsValOpt = False,
    model: ModelOpt = None,
    backbone: BackboneOpt = None,
    pretrained_backbone: PretrainedOpt = None,
    weights_dir: WeightsDirOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    image_size: SizeOpt = None,
    lr: LrOpt = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: runs/compare).")] = None,
    recipes: Annotated[Path | None, typer.Option(
        help="Directory of published recipes (e.g. configs/recipes): each loss trains with its paper's settings "
             "<model>_<loss>.yaml (lr per image, anchors, box coder, assigner) on the same data and budget.")] = None,
    precision: PrecisionOpt = None,
    devices: DevicesOpt = None,
    strategy: StrategyOpt = None,
    accelerator: AcceleratorOpt = None,
) -> None:
    """Train the same detector on the same data with several losses and seeds; write comparison.md.

    Finished runs in --out are reused (and unfinished ones resumed) only when they were trained with the
    same data and settings.
    """
    from .models import ALL_LOSS_NAMES
    from .training import compare as compare_runs

    loss_list = _csv_list(losses)
    unknown = [name for name in loss_list if name not in ALL_LOSS_NAMES]
    if unknown:
        _fail(f"unknown losses {unknown}; choose from {', '.join(ALL_LOSS_NAMES)}")
    seed_list = _csv_list(seeds, int)

    def job():
        cfg = _build_config(
            config, set_, data=data, val_data=val_data, val_fraction=val_fraction,
            allow_train_as_val=allow_train_as_val or None, model=model, backbone=backbone,
            pretrained_backbone=pretrained_backbone, epochs=epochs, batch_size=batch_size, image_size=image_size,
            lr=lr, out=out or Path("runs/compare"), precision=precision, devices=devices, strategy=strategy,
            accelerator=accelerator,
        )
        _seed_weights(weights_dir)
        return compare_runs(cfg, loss_list, seed_list, cfg.out, recipes=recipes)

    path, runs = _run(job)
    if path is None:  # a data-parallel rank other than 0
        return
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
        from .training.runner import check_output_dir

        search_out = check_output_dir(out or Path("runs/search"))
        _seed_weights(weights_dir)
        search_config = SearchConfig(
            base=base, out=str(search_out), rounds=rounds, samples_per_round=samples_per_round,
            budget=budget, sampler=sampler, storage=storage, study_name=study_name, workers=workers,
            seed=base.seed, val_fraction=val_fraction,
        )
        return run_search(search_config)

    result = _run(job)
    typer.echo((result.out / "search.md").read_text())
    typer.echo(f"params file: {result.best_params}  (detlosses train --loss pap --pap-params {result.best_params})")


def _widen_help() -> None:
    """Rich squeezes help to 80 columns when standard output is not a terminal: use :data:`HELP_WIDTH`
    there (``TERMINAL_WIDTH`` / ``COLUMNS`` still win when set)."""
    import typer.rich_utils as rich_utils

    if rich_utils.MAX_WIDTH is None and not os.environ.get("COLUMNS") and not sys.stdout.isatty():
        rich_utils.MAX_WIDTH = HELP_WIDTH


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``detlosses`` script."""
    _widen_help()
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
