"""Whole-volume evaluation of the held-out cases (validation, test) and the run's outputs."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cascade.data.cases import Case, overlay_background
from cascade.data.labels import LabelScheme
from cascade.data.nifti import read_volume
from cascade.inference.cascade import CascadePredictor
from cascade.io import write_text_atomic
from cascade.metrics import case_metrics, summarize, volume_comparison
from cascade.viz import save_overlay

log = logging.getLogger(__name__)


def evaluate_cases(
    predictor: CascadePredictor, cases: list[Case], overlay_dir: Path | None, overlay_cases: int
) -> list[dict[str, object]]:
    """Per-case metrics of the cascade and, for comparison, of Stage 1 alone (after the same
    post-processing, so that the two differ by Stage 2 only), with the predicted and reference
    volume of every region (mL, from the label's voxel size)."""
    rows = []
    for index, case in enumerate(tqdm(cases, desc="evaluate", unit="case")):
        prediction = predictor.predict(case)
        truth_image, labels = read_volume(case.label)
        truth = case.scheme.to_classes(labels)
        spacing = truth_image.header.get_zooms()[:3]
        regions = case.scheme.regions
        cascade_metrics = case_metrics(prediction.classes, truth, spacing, regions)
        stage1_classes = predictor.postprocess(prediction.stage1_classes)
        stage1_metrics = case_metrics(stage1_classes, truth, spacing, regions)
        rows.append(
            {
                "case_id": case.case_id,
                **cascade_metrics,
                **{f"stage1_{key}": value for key, value in stage1_metrics.items()},
                **volume_comparison(prediction.classes, truth, spacing, regions),
                "seconds": prediction.timings["total"],
            }
        )
        if overlay_dir is not None and index < overlay_cases:
            flair = overlay_background(case, prediction.classes.shape)
            dice = " ".join(
                f"{region.upper()} {cascade_metrics[f'dice_{region}']:.2f}" for region in regions
            )
            title = f"{case.case_id}: Dice {dice}"
            save_overlay(
                overlay_dir / f"{case.case_id}.png", flair, prediction.classes, truth, title
            )
    return rows


def run_metrics(
    rows: list[dict[str, object]], scheme: LabelScheme, alpha: float
) -> dict[str, float]:
    """metrics.json: means over cases (BraTS empty-region rule) of each region of `scheme`,
    alpha, and Stage 1 alone."""
    regions = scheme.region_names
    numeric = [{k: v for k, v in row.items() if k not in ("case_id", "split")} for row in rows]
    summary = summarize(numeric)
    metrics: dict[str, float] = {}
    for prefix in ("", "stage1_"):
        for region in regions:
            metrics[f"{prefix}dice_{region}"] = summary[f"{prefix}dice_{region}"]["mean"]
            metrics[f"{prefix}hd95_{region}"] = summary[f"{prefix}hd95_{region}"]["mean"]
        metrics[f"{prefix}dice_mean"] = float(
            np.mean([metrics[f"{prefix}dice_{region}"] for region in regions])
        )
    for region in regions:
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


def format_metrics(metrics: dict[str, float], scheme: LabelScheme) -> str:
    regions = scheme.region_names
    lines = [f"{'':10}" + "".join(f"{region.upper():>8}" for region in regions) + f"{'mean':>8}"]
    for name, prefix in (("cascade", ""), ("stage 1", "stage1_")):
        dice = [metrics[f"{prefix}dice_{region}"] for region in regions] + [
            metrics[f"{prefix}dice_mean"]
        ]
        lines.append(f"{name + ' Dice':10}" + "".join(f"{value:8.3f}" for value in dice))
    hd95 = [metrics[f"hd95_{region}"] for region in regions]
    lines.append(f"{'HD95 mm':10}" + "".join(f"{value:8.2f}" for value in hd95))
    lines.append(f"alpha {metrics['alpha']:.3f}, {metrics['cases']} cases")
    return "\n".join(lines)
