"""Score predicted segmentations against reference labels: per-case CSV, summary CSV/JSON, table.

python -m cascade.evaluate --predictions DIR --labels DIR [--out FILE]
    [--protocol brats2020|lesionwise] [--hd95 pooled|max_directed]

Protocols: brats2020 (default), whole-volume Dice, HD95, sensitivity and specificity per region
of the label scheme with the BraTS empty-region rule (cascade.metrics); lesionwise, the official
BraTS 2023+ lesion-wise evaluation through panoptica (cascade.lesionwise). Both add every
region's predicted and reference volume and the volume error (predicted - reference, mL).

A labelled case without a prediction is scored as the worst case: Dice 0, HD95 373.13 mm,
sensitivity 0, specificity 1 (metrics.missing_prediction_metrics), or the official parser's
0 / 373 in the lesion-wise protocol; its predicted volume counts as 0 mL. It is counted in the
summary, named on stderr, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cascade.data.cases import Case
from cascade.data.discovery import scan_cases
from cascade.data.errors import CaseError
from cascade.data.labels import SCHEMES, LabelScheme
from cascade.data.nifti import read_volume
from cascade.data.validation import label_counts, resolve_scheme, with_scheme
from cascade.io import write_text_atomic
from cascade.metrics import (
    HD95_CONVENTIONS,
    case_metrics,
    metric_keys,
    missing_prediction_metrics,
    summarize,
    volume_comparison,
    volume_keys,
)

SUMMARY_FIELDS = ("mean", "median", "std", "ci_low", "ci_high")
PROTOCOLS = ("brats2020", "lesionwise")


class EvaluationError(ValueError):
    """A case that cannot be scored; the message is one line naming the file."""


class Scorer:
    """A protocol's per-case scores (`metrics`, `worst_case`) followed by the volumes of its
    `regions`; subclasses set `regions`, `keys`, `id_column` and `hd95_convention`."""

    regions: dict[str, tuple[int, ...]]

    def metrics(
        self, prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
    ) -> dict[str, float]:
        raise NotImplementedError

    def worst_case(self) -> dict[str, float]:
        raise NotImplementedError

    def score(
        self, prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
    ) -> dict[str, float]:
        return {
            **self.metrics(prediction, truth, spacing),
            **volume_comparison(prediction, truth, spacing, self.regions),
        }

    def missing(self, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
        """The scores of a case without a prediction; its predicted volumes are 0."""
        return {**self.worst_case(), **volume_comparison(None, truth, spacing, self.regions)}


class RegionScorer(Scorer):
    """The brats2020 protocol: whole-volume metrics and volumes of the scheme's regions."""

    id_column = "case_id"

    def __init__(self, scheme: LabelScheme, hd95_convention: str = "pooled") -> None:
        self.regions = dict(scheme.regions)
        self.hd95_convention = hd95_convention
        self.keys = (*metric_keys(self.regions), *volume_keys(self.regions))

    def metrics(
        self, prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
    ) -> dict[str, float]:
        return case_metrics(prediction, truth, spacing, self.regions, self.hd95_convention)

    def worst_case(self) -> dict[str, float]:
        return missing_prediction_metrics(self.regions)

    def summary(self, rows: Sequence[dict]) -> tuple[dict, tuple[str, ...], list[dict]]:
        """(stats by column, summary CSV columns, summary CSV rows: one per metric)."""
        summary = summarize(rows)
        table = [{"metric": key, **stats} for key, stats in summary.items()]
        return summary, ("metric", *SUMMARY_FIELDS), table

    def table(self, summary: dict[str, dict[str, float]], cases: int) -> str:
        return format_table(summary, cases, tuple(self.regions))


def read_classes(path: Path, scheme: LabelScheme) -> tuple[np.ndarray, tuple[float, ...]]:
    """Label file -> (classes uint8 (X, Y, Z), voxel spacing in mm from the header), with the
    checks of training's label files (a readable 3D NIfTI, integral values of `scheme`)."""
    try:
        image, labels = read_volume(path)
        label_counts(path, labels, scheme)
    except CaseError as error:
        raise EvaluationError(str(error)) from None
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


def evaluate_case(
    case: Case, predictions: Path, scorer=None
) -> tuple[dict[str, float], str | None]:
    """Scores of one labelled case (by default the brats2020 protocol's), and a one-line message
    where its prediction is missing, the scores then being the scorer's worst case. Raises
    EvaluationError for a mismatched file."""
    scorer = scorer if scorer is not None else RegionScorer(case.scheme)
    path = prediction_path(predictions, case)
    truth, spacing = read_classes(case.label, case.scheme)
    if not path.exists():
        message = f"{path}: prediction missing for case {case.case_id}, scored as the worst case"
        return scorer.missing(truth, spacing), message
    prediction, _ = read_classes(path, case.scheme)
    if prediction.shape != truth.shape:
        raise EvaluationError(
            f"{path}: shape {prediction.shape} does not match the label's {truth.shape} "
            f"({case.label})"
        )
    return scorer.score(prediction, truth, spacing), None


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
    """Dice and HD95 per region as `mean [CI] median`, and the mean volume error."""
    lines = [
        f"{cases} cases; mean [95% bootstrap CI of the mean] median",
        f"{'region':<8}{'Dice':<34}{'HD95 (mm)':<34}{'volume error (mL)':<18}",
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
        volume_error = summary[f"volume_error_ml_{region}"]["mean"]
        lines.append(f"{region.upper():<8}{dice_text:<34}{distance_text:<34}{volume_error:<+18.2f}")
    return "\n".join(lines)


def _dataset_scheme(cases: Sequence[Case], forced: str) -> LabelScheme:
    """The labels' scheme: forced, or detected from the namings and every label's values."""
    values = {}
    for case in cases:
        _, labels = read_volume(case.label)
        values[case.case_id] = tuple(label_counts(case.label, labels))
    return resolve_scheme(cases, values, forced)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.evaluate",
        description="Dice, HD95, sensitivity and specificity per region and case (or the BraTS "
        "lesion-wise metrics) and region volumes, with a summary.",
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
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="brats2020",
        help="brats2020: whole-volume metrics per region (default); lesionwise: the official "
        "BraTS 2023+ lesion-wise evaluation through panoptica (needs the eval extra)",
    )
    parser.add_argument(
        "--hd95",
        choices=HD95_CONVENTIONS,
        help="HD95 of the brats2020 protocol: pooled, the P95 of both directed surface distances "
        "together as medpy and the official evaluation (default); max_directed, the larger of "
        "the two directed P95s as MONAI",
    )
    args = parser.parse_args(argv)
    if args.protocol == "lesionwise" and args.hd95 is not None:
        parser.error("--hd95 applies to the brats2020 protocol; lesionwise uses pooled HD95")
    return args


def make_scorer(scheme: LabelScheme, protocol: str = "brats2020", hd95_convention=None):
    """The scorer of a protocol for cases of `scheme`; ImportError names the missing extra."""
    if protocol == "lesionwise":
        from cascade.lesionwise import LesionwiseScorer

        return LesionwiseScorer(scheme)
    return RegionScorer(scheme, hd95_convention or "pooled")


def write_outputs(out: Path, scorer, rows: list[dict], report: dict[str, object]) -> None:
    """Per-case CSV, summary CSV and JSON beside it, and the summary table on stdout."""
    summary, summary_fields, summary_rows = scorer.summary(rows)
    summary_csv, summary_json = summary_paths(out)
    write_text_atomic(out, csv_text((scorer.id_column, *scorer.keys), rows))
    write_text_atomic(summary_csv, csv_text(summary_fields, summary_rows))
    write_text_atomic(summary_json, json.dumps({**report, "metrics": summary}, indent=2) + "\n")
    print(scorer.table(summary, len(rows)))
    print(f"wrote {out}, {summary_csv.name}, {summary_json.name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out or args.predictions / "evaluation.csv"
    if not args.predictions.is_dir():
        print(f"{args.predictions}: predictions folder not found", file=sys.stderr)
        return 1

    cases, problems = scan_cases(args.labels)
    failures = [str(problem) for problem in problems]
    labelled = [case for case in cases if case.label is not None]
    scheme = scorer = None
    if not labelled:
        failures.append(f"{args.labels}: no labelled cases found")
    else:
        try:
            scheme = _dataset_scheme(labelled, args.scheme)
            scorer = make_scorer(scheme, args.protocol, args.hd95)
        except (CaseError, EvaluationError, ImportError) as error:
            failures.append(str(error))
            labelled = []
        else:
            labelled = with_scheme(labelled, scheme)

    rows: list[dict] = []
    missing: list[str] = []
    for case in tqdm(labelled, desc="evaluate", unit="case"):
        try:
            scores, missing_message = evaluate_case(case, args.predictions, scorer)
        except EvaluationError as error:
            failures.append(str(error))
            continue
        rows.append({scorer.id_column: case.case_id, **scores})
        if missing_message is not None:
            missing.append(case.case_id)
            failures.append(missing_message)

    if rows:
        report = {
            "protocol": args.protocol,
            "hd95_convention": scorer.hd95_convention,
            "cases": len(rows),
            "missing": missing,
            "failed": failures,
        }
        write_outputs(out, scorer, rows, report)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
