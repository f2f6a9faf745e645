"""Tabulate a Hydra multirun: ``python -m cascade.report multirun/2026-11-24/10-00-00``.

One row per configuration (the jobs' overrides as columns); jobs that differ only in ``seed`` are
grouped into mean and standard deviation. Writes ``report.md`` and ``report.csv`` into the folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

import yaml

from cascade.io import write_text_atomic

_REGION_DICE = re.compile(r"dice_(?P<region>[a-z]+)")


def metric_keys(metrics: dict[str, object]) -> list[str]:
    """The headline metrics of a metrics.json: Dice of each region it has (wt, tc, et, and rc
    for BraTS 2024), the mean Dice, HD95 of each region, alpha."""
    regions = [
        match["region"]
        for key in metrics
        if (match := _REGION_DICE.fullmatch(key)) and match["region"] != "mean"
    ]
    return [
        *(f"dice_{region}" for region in regions),
        "dice_mean",
        *(f"hd95_{region}" for region in regions),
        "alpha",
    ]


def read_jobs(sweep_dir: Path) -> list[tuple[dict[str, str], dict[str, float]]]:
    """(overrides, metrics) of every finished job under a multirun folder."""
    jobs = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        overrides_file = metrics_file.parent / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        settings = dict(item.lstrip("+").split("=", 1) for item in overrides)
        jobs.append((settings, json.loads(metrics_file.read_text())))
    return jobs


def group_by_configuration(jobs) -> list[dict[str, object]]:
    """Table rows: the settings that vary (seed excluded), n seeds, mean and sd per metric."""
    varying = sorted(
        {key for settings, _ in jobs for key in settings if key != "seed"}
        - {key for key in jobs[0][0] if all(s.get(key) == jobs[0][0][key] for s, _ in jobs)}
    )
    groups: dict[tuple, list[dict[str, float]]] = {}
    for settings, metrics in jobs:
        groups.setdefault(tuple(settings.get(key, "") for key in varying), []).append(metrics)
    keys = metric_keys(jobs[0][1])
    rows = []
    for values, runs in sorted(groups.items()):
        row: dict[str, object] = dict(zip(varying, values, strict=True))
        row["seeds"] = len(runs)
        for key in keys:
            series = [run[key] for run in runs if run.get(key) is not None]
            if series:
                row[key] = statistics.fmean(series)
                row[f"{key}_sd"] = statistics.stdev(series) if len(series) > 1 else 0.0
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, object]]) -> str:
    metrics = [key for key in metric_keys(rows[0]) if key in rows[0]]
    settings = [key for key in rows[0] if key not in metrics and not key.endswith("_sd")]
    lines = [
        "| " + " | ".join(settings + metrics) + " |",
        "|" + "---|" * (len(settings) + len(metrics)),
    ]
    for row in rows:
        cells = [str(row[key]) for key in settings]
        cells += [
            f"{row[key]:.3f} ± {row[key + '_sd']:.3f}" if key in row else "" for key in metrics
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder")
    args = parser.parse_args(argv)
    jobs = read_jobs(args.sweep_dir)
    if not jobs:
        print(f"{args.sweep_dir}: no job with a metrics.json (has the sweep finished?)")
        return 1
    rows = group_by_configuration(jobs)
    markdown = to_markdown(rows)
    write_text_atomic(args.sweep_dir / "report.md", markdown)
    write_text_atomic(args.sweep_dir / "report.csv", to_csv(rows))
    print(markdown, end="")
    print(f"{len(jobs)} jobs in {len(rows)} configurations -> {args.sweep_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
