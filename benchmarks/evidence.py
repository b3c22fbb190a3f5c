"""Tables and plot of docs/results.md from finished `detlosses compare` directories.

    python -m benchmarks.evidence --runs bccd=/work/runs/bccd --runs coco128=/work/runs/coco128 \
        --markdown /tmp/evidence.md --plot docs/img/results_ap_vs_focal.png --json /tmp/evidence.json

For every data set: mean ± std per loss over seeds (AP, AP50, AP75, oLRP, Spearman's rho of score and
IoU of the true positives, s/it), the per-seed AP differences against focal, and the papers' claims
(:data:`detlosses.reporting.evidence.PAPERS_CLAIMS`) with their verdicts.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from detlosses.reporting.evidence import PAPERS_CLAIMS, VARIANTS, evaluate_claim

METRICS = ("AP", "AP50", "AP75", "oLRP", "score_iou_spearman")
_RHO = re.compile(r"\*\*ρ = (-?[0-9.]+)\*\*")


def load_runs(directory: Path) -> list[dict[str, Any]]:
    """Every finished run (``<loss>-seed<k>/metrics.json``) of a compare directory."""
    runs = []
    for metrics_file in sorted(directory.glob("*-seed*/metrics.json")):
        loss, seed = metrics_file.parent.name.rsplit("-seed", 1)
        metrics = json.loads(metrics_file.read_text())
        if "score_iou_spearman" not in metrics:  # runs written before metrics.json carried it: their report's rho
            report = metrics_file.parent / "report.md"
            found = _RHO.search(report.read_text()) if report.is_file() else None
            metrics["score_iou_spearman"] = float(found.group(1)) if found else None
        runs.append({"loss": loss, "seed": int(seed), "metrics": metrics, "run_dir": str(metrics_file.parent)})
    return runs


def _fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "n/a"
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def dataset_section(name: str, runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    losses = list(dict.fromkeys(r["loss"] for r in sorted(runs, key=lambda r: (r["loss"] != "focal", r["loss"]))))
    lines = [f"### {name}: mean ± std over seeds", "",
             "| loss | seeds | AP | AP50 | AP75 | oLRP ↓ | Spearman ρ (score, IoU) | s / it (median) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    record: dict[str, Any] = {"losses": {}, "claims": []}
    for loss in losses:
        mine = [r for r in runs if r["loss"] == loss]
        cells = [_fmt([r["metrics"].get(m) for r in mine], 1.0 if m == "score_iou_spearman" else 100.0,
                      3 if m == "score_iou_spearman" else 1) for m in METRICS]
        cells.append(_fmt([r["metrics"].get("seconds_per_iteration") for r in mine], 1.0, 2))
        lines.append(f"| {loss} | {len(mine)} | " + " | ".join(cells) + " |")
        record["losses"][loss] = {m: [r["metrics"].get(m) for r in sorted(mine, key=lambda r: r["seed"])]
                                  for m in (*METRICS, "seconds_per_iteration")}
    present = [label for label in losses if label in VARIANTS]
    if present:
        lines += ["", "Controlled variants (one loss, other options): " + "; ".join(
            f"`{label}` = {VARIANTS[label][0]} with {VARIANTS[label][1]}" for label in present) + "."]
    seeds = sorted({r["seed"] for r in runs})
    header = "| loss | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |"
    lines += ["", "AP difference against focal per seed (AP points; same seed = same data order and initialisation):",
              "", header, "|---|" + "---:|" * (len(seeds) + 1)]
    by_key = {(r["loss"], r["seed"]): r["metrics"].get("AP") for r in runs}
    for loss in losses:
        if loss == "focal":
            continue
        diffs = [(by_key.get((loss, s)), by_key.get(("focal", s))) for s in seeds]
        cells = [f"{100 * (a - b):+.1f}" if a is not None and b is not None else "n/a" for a, b in diffs]
        defined = [a - b for a, b in diffs if a is not None and b is not None]
        mean = f"{100 * statistics.fmean(defined):+.1f}" if defined else "n/a"
        lines.append(f"| {loss} | " + " | ".join(cells) + f" | {mean} |")
    lines += ["", f"### {name}: the papers' claims", "",
              "| claim | published | ours: mean difference (95 % t interval), per seed | verdict |",
              "|---|---|---|---|"]
    for claim in PAPERS_CLAIMS:
        result = evaluate_claim(claim, runs)
        scale, unit = (1.0, "ρ") if claim.metric == "score_iou_spearman" else (100.0, claim.metric)
        if result.differences:
            half = f" ± {scale * result.half_width:.{3 if scale == 1 else 1}f}" if math.isfinite(result.half_width) \
                else ""
            per_seed = ", ".join(f"{scale * d:+.{3 if scale == 1 else 1}f}" for d in result.differences)
            ours = f"{scale * result.mean:+.{3 if scale == 1 else 1}f}{half} {unit} ({per_seed})"
        else:
            ours = "no paired runs"
        lines.append(f"| {claim.text} | {claim.published} | {ours} | {result.verdict} |")
        record["claims"].append({"claim": claim.text, "differences": result.differences, "mean": result.mean,
                                 "half_width": result.half_width, "verdict": result.verdict})
    return lines + [""], record


def plot(records: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(6 * len(records), 4), squeeze=False)
    for ax, (name, record) in zip(axes[0], records.items(), strict=True):
        focal = record["losses"].get("focal", {}).get("AP", [])
        names = [n for n in record["losses"] if n != "focal"]
        for i, loss in enumerate(names):
            values = record["losses"][loss]["AP"]
            diffs = [100 * (a - b) for a, b in zip(values, focal, strict=False) if a is not None and b is not None]
            ax.scatter([i] * len(diffs), diffs, color="C0", zorder=3)
            if diffs:
                ax.hlines(statistics.fmean(diffs), i - 0.3, i + 0.3, color="C3", zorder=4)
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_ylabel("AP − focal AP, same seed (points)")
        ax.set_title(f"{name}: per-seed difference to focal (red: mean)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", action="append", required=True, help="NAME=compare directory (repeatable)")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--plot", type=Path, help="write the per-seed difference plot here")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    lines: list[str] = []
    records: dict[str, dict[str, Any]] = {}
    for item in args.runs:
        name, _, directory = item.partition("=")
        runs = load_runs(Path(directory))
        if not runs:
            parser.error(f"no finished runs in {directory}")
        section, records[name] = dataset_section(name, runs)
        lines += section
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(records, indent=2, default=lambda v: None))
    if args.plot:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
