"""Score predicted segmentations against reference labels: per-case CSV, summary CSV/JSON, table.

python -m cascade.evaluate --predictions DIR --labels DIR [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from cascade.data.cases import Case
from cascade.data.discovery import scan_cases
from cascade.data.errors import CaseError
from cascade.data.labels import SCHEMES, LabelScheme
from cascade.data.validation import resolve_scheme, with_scheme
from cascade.io import write_text_atomic
from cascade.metrics import case_metrics, metric_keys, summarize

SUMMARY_FIELDS = ("mean", "median", "std", "ci_low", "ci_high")


class EvaluationError(ValueError):
    """A case that cannot be scored; the message is one line naming the file."""


def read_classes(path: Path, scheme: LabelScheme) -> tuple[np.ndarray, tuple[float, ...]]:
    """Label file -> (classes uint8 (X, Y, Z), voxel spacing in mm from the header)."""
    image = nib.load(path)
    if len(image.shape) != 3:
        raise EvaluationError(f"{path}: expected a 3D label volume, got shape {image.shape}")
    labels = np.asanyarray(image.dataobj)
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise EvaluationError(f"{path}: label values are not integers")
        labels = rounded
    # Also catches a file in the other label convention. Counting is 5x faster than np.unique.
    found = (
        np.flatnonzero(np.bincount(labels.ravel()))
        if labels.dtype == np.uint8
        else np.unique(labels)
    )
    unexpected = sorted(set(found.tolist()) - set(scheme.allowed_values))
    if unexpected:
        raise EvaluationError(
            f"{path}: unexpected label values {unexpected} for {scheme.name} "
            f"(allowed {list(scheme.allowed_values)})"
        )
    spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
    return scheme.to_classes(labels), spacing


def prediction_path(predictions: Path, case: Case) -> Path:
    """The prediction file of a case: predict's name for it, else the other supported naming."""
    preferred = predictions / case.output_name()
    if preferred.exists():
        return preferred
    for name in (f"{case.case_id}.nii.gz", f"{case.case_id}-seg.nii.gz"):
        if (predictions / name).exists():
            return predictions / name
    return preferred


def evaluate_case(case: Case, predictions: Path) -> dict[str, float]:
    """Metrics of one labelled case; raises EvaluationError for a missing or mismatched file."""
    path = prediction_path(predictions, case)
    if not path.exists():
        raise EvaluationError(f"{path}: prediction missing for case {case.case_id}")
    truth, spacing = read_classes(case.label, case.scheme)
    prediction, _ = read_classes(path, case.scheme)
    if prediction.shape != truth.shape:
        raise EvaluationError(
            f"{path}: shape {prediction.shape} does not match the label's {truth.shape} "
            f"({case.label})"
        )
    return case_metrics(prediction, truth, spacing, case.scheme.regions)


def summary_paths(out: Path) -> tuple[Path, Path]:
    """evaluation.csv -> evaluation_summary.csv, evaluation_summary.json (same folder)."""
    stem = out.name.removesuffix(".csv")
    return out.with_name(f"{stem}_summary.csv"), out.with_name(f"{stem}_summary.json")


def csv_text(fieldnames: Sequence[str], rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def format_table(summary: dict[str, dict[str, float]], cases: int, regions: Sequence[str]) -> str:
    """Dice and HD95 per region as `mean [CI] median`."""
    lines = [
        f"{cases} cases; mean [95% bootstrap CI of the mean] median",
        f"{'region':<8}{'Dice':<34}{'HD95 (mm)':<34}",
    ]
    for region in regions:
        dice, distance = summary[f"dice_{region}"], summary[f"hd95_{region}"]
        dice_text = (
            f"{dice['mean']:.4f} [{dice['ci_low']:.4f}, {dice['ci_high']:.4f}] {dice['median']:.4f}"
        )
        distance_text = (
            f"{distance['mean']:.2f} [{distance['ci_low']:.2f}, {distance['ci_high']:.2f}] "
            f"{distance['median']:.2f}"
        )
        lines.append(f"{region.upper():<8}{dice_text:<34}{distance_text:<34}")
    return "\n".join(lines)


def _dataset_scheme(cases: Sequence[Case], forced: str) -> LabelScheme:
    """The labels' scheme: forced, or detected from the namings and every label's values."""
    values = {}
    for case in cases:
        image = nib.load(case.label)
        values[case.case_id] = np.unique(np.rint(np.asanyarray(image.dataobj))).astype(int).tolist()
    return resolve_scheme(cases, values, forced)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.evaluate",
        description="Dice, HD95, sensitivity and specificity per region and case, with a summary.",
    )
    parser.add_argument(
        "--labels-scheme",
        dest="scheme",
        choices=("auto", *SCHEMES),
        default="auto",
        help="label scheme of the label files (default: detected, as cascade.check does)",
    )
    parser.add_argument("--predictions", type=Path, required=True, help="folder of predictions")
    parser.add_argument("--labels", type=Path, required=True, help="dataset folder with labels")
    parser.add_argument(
        "--out", type=Path, help="per-case CSV (default: <predictions>/evaluation.csv)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out or args.predictions / "evaluation.csv"
    if not args.predictions.is_dir():
        print(f"{args.predictions}: predictions folder not found", file=sys.stderr)
        return 1

    cases, problems = scan_cases(args.labels)
    failures = [str(problem) for problem in problems]
    labelled = [case for case in cases if case.label is not None]
    scheme = None
    if not labelled:
        failures.append(f"{args.labels}: no labelled cases found")
    else:
        try:
            scheme = _dataset_scheme(labelled, args.scheme)
        except (CaseError, EvaluationError) as error:
            failures.append(str(error))
            labelled = []
        else:
            labelled = with_scheme(labelled, scheme)

    rows: list[dict] = []
    for case in tqdm(labelled, desc="evaluate", unit="case"):
        try:
            rows.append({"case_id": case.case_id, **evaluate_case(case, args.predictions)})
        except EvaluationError as error:
            failures.append(str(error))

    if rows:
        summary = summarize(rows)
        summary_csv, summary_json = summary_paths(out)
        write_text_atomic(out, csv_text(("case_id", *metric_keys(scheme.regions)), rows))
        write_text_atomic(
            summary_csv,
            csv_text(("metric", *SUMMARY_FIELDS), [{"metric": k, **v} for k, v in summary.items()]),
        )
        report = {"cases": len(rows), "failed": failures, "metrics": summary}
        write_text_atomic(summary_json, json.dumps(report, indent=2) + "\n")
        print(format_table(summary, len(rows), scheme.region_names))
        print(f"wrote {out}, {summary_csv.name}, {summary_json.name}")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
