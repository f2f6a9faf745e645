"""Whole-volume evaluation of the validation cases with the trained cascade, and its outputs."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from cascade.data.cases import Case
from cascade.data.labels import to_classes
from cascade.inference.cascade import CascadePredictor
from cascade.io import write_text_atomic
from cascade.metrics import case_metrics, summarize
from cascade.viz import save_overlay

log = logging.getLogger(__name__)

REGIONS = ("wt", "tc", "et")


def evaluate_cases(
    predictor: CascadePredictor, cases: list[Case], overlay_dir: Path | None, overlay_cases: int
) -> list[dict[str, object]]:
    """Per-case metrics of the cascade and, for comparison, of Stage 1 alone."""
    rows = []
    for index, case in enumerate(tqdm(cases, desc="evaluate", unit="case")):
        prediction = predictor.predict(case)
        truth_image = nib.load(case.label)
        truth = to_classes(np.asanyarray(truth_image.dataobj), case.convention)
        spacing = truth_image.header.get_zooms()[:3]
        cascade_metrics = case_metrics(prediction.classes, truth, spacing)
        stage1_metrics = case_metrics(prediction.stage1_classes, truth, spacing)
        rows.append(
            {
                "case_id": case.case_id,
                **cascade_metrics,
                **{f"stage1_{key}": value for key, value in stage1_metrics.items()},
                "seconds": prediction.timings["total"],
            }
        )
        if overlay_dir is not None and index < overlay_cases:
            flair = np.asanyarray(nib.load(case.images["flair"]).dataobj)
            dice = " ".join(
                f"{region.upper()} {cascade_metrics[f'dice_{region}']:.2f}" for region in REGIONS
            )
            title = f"{case.case_id}: Dice {dice}"
            save_overlay(
                overlay_dir / f"{case.case_id}.png", flair, prediction.classes, truth, title
            )
    return rows


def run_metrics(rows: list[dict[str, object]], alpha: float) -> dict[str, float]:
    """metrics.json: means over cases (BraTS empty-region rule), alpha, and Stage 1 alone."""
    numeric = [{k: v for k, v in row.items() if k != "case_id"} for row in rows]
    summary = summarize(numeric)
    metrics: dict[str, float] = {}
    for prefix in ("", "stage1_"):
        for region in REGIONS:
            metrics[f"{prefix}dice_{region}"] = summary[f"{prefix}dice_{region}"]["mean"]
            metrics[f"{prefix}hd95_{region}"] = summary[f"{prefix}hd95_{region}"]["mean"]
        metrics[f"{prefix}dice_mean"] = float(
            np.mean([metrics[f"{prefix}dice_{region}"] for region in REGIONS])
        )
    for region in REGIONS:
        metrics[f"dice_{region}_ci_low"] = summary[f"dice_{region}"]["ci_low"]
        metrics[f"dice_{region}_ci_high"] = summary[f"dice_{region}"]["ci_high"]
    metrics["alpha"] = alpha
    metrics["cases"] = len(rows)
    metrics["seconds_per_case"] = float(np.mean([row["seconds"] for row in rows]))
    return metrics


def write_outputs(run_dir: Path, rows: list[dict[str, object]], metrics: dict[str, float]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir / "per_case.csv", buffer.getvalue())
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def format_metrics(metrics: dict[str, float]) -> str:
    lines = [f"{'':10}{'WT':>8}{'TC':>8}{'ET':>8}{'mean':>8}"]
    for name, prefix in (("cascade", ""), ("stage 1", "stage1_")):
        dice = [metrics[f"{prefix}dice_{region}"] for region in REGIONS] + [
            metrics[f"{prefix}dice_mean"]
        ]
        lines.append(f"{name + ' Dice':10}" + "".join(f"{value:8.3f}" for value in dice))
    hd95 = [metrics[f"hd95_{region}"] for region in REGIONS]
    lines.append(f"{'HD95 mm':10}" + "".join(f"{value:8.2f}" for value in hd95))
    lines.append(f"alpha {metrics['alpha']:.3f}, {metrics['cases']} validation cases")
    return "\n".join(lines)
