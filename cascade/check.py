"""Check a dataset before training: ``python -m cascade.check PATH [PATH ...]``.

Prints one table row per good case, a ``note`` line where a release quirk was read (which file
was taken as the segmentation), one ``ERROR <file>: <problem>`` line per bad case or folder, the
label scheme, and the counts. Exits 1 if any case is bad or no case is found. A dataset this
calls good trains: `cascade.train` runs the same checks. Cases are read one per process over the
job's cores (`cascade.cores`), rows printed in order.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cascade.cores import available_cores, map_in_processes
from cascade.data.cases import Case, CaseSummary
from cascade.data.discovery import scan_cases
from cascade.data.errors import CaseError
from cascade.data.labels import SCHEMES, LabelScheme
from cascade.data.validation import resolve_scheme, validate_case

_COLUMNS = ("case", "shape", "spacing (mm)", "label", "voxels per label value")
# Widths fit 240x240x155 and 0.9375x0.9375x1.2; longer values just push the row right.
_SHAPE_WIDTH = 13
_SPACING_WIDTH = 18


def _row(summary: CaseSummary) -> tuple[str, ...]:
    shape = "x".join(str(size) for size in summary.shape)
    spacing = "x".join(f"{zoom:.4g}" for zoom in summary.spacing)
    counts = " ".join(f"{value}:{count}" for value, count in summary.label_counts.items())
    return (
        summary.case_id,
        shape,
        spacing,
        "yes" if summary.labelled else "no",
        counts or "-",
    )


def _format(cells: Sequence[str], id_width: int) -> str:
    widths = (id_width, _SHAPE_WIDTH, _SPACING_WIDTH, 5)
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "  ".join(padded + list(cells[len(widths) :])).rstrip()


def check(
    path: Path, labels: str | None = None
) -> tuple[list[CaseSummary], list[CaseError], LabelScheme | None]:
    """Validate every case under the dataset `path`, printing rows as they are read (large
    datasets take minutes); returns the good cases' summaries, all problems and the label
    scheme (None when it cannot be settled)."""
    cases: list[Case]
    cases, problems = scan_cases(path)
    forced = SCHEMES.get(labels) if labels not in (None, "auto") else None
    summaries, good = [], []
    id_width = max([len(_COLUMNS[0])] + [len(case.case_id) for case in cases])
    if cases:
        print(_format(_COLUMNS, id_width), flush=True)
    jobs = [(case, forced) for case in cases]
    for case, summary in zip(
        cases, map_in_processes(_validated, jobs, available_cores()), strict=True
    ):
        if isinstance(summary, CaseError):
            problems.append(summary)
            continue
        summaries.append(summary)
        good.append(case)
        print(_format(_row(summary), id_width), flush=True)
        for note in summary.notes:
            print(f"note {case.case_id}: {note}", flush=True)

    scheme = None
    if good:
        values = {summary.case_id: tuple(summary.label_counts) for summary in summaries}
        try:
            scheme = resolve_scheme(good, values, labels)
        except CaseError as error:
            problems.append(error)
    return summaries, problems, scheme


def _validated(job: tuple[Case, LabelScheme | None]) -> CaseSummary | CaseError:
    """The summary of a good case, the problem of a bad one (it runs in worker processes)."""
    try:
        return validate_case(*job)
    except CaseError as error:
        return error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.check",
        description="Check BraTS/MSD cases (layout, NIfTI geometry, values, label scheme).",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="a case folder or a dataset folder"
    )
    parser.add_argument(
        "--labels",
        choices=("auto", *SCHEMES),
        default="auto",
        help="label scheme of the files (default: detected, as data.labels=auto)",
    )
    args = parser.parse_args(argv)

    summaries, problems = [], []
    for path in args.paths:  # each path is a dataset of its own, with its own scheme
        path_summaries, path_problems, scheme = check(path, args.labels)
        summaries += path_summaries
        problems += path_problems
        _print_scheme(path, scheme, args.labels)
    for problem in sorted(problems, key=lambda problem: str(problem.path)):
        print(f"ERROR {problem}")
    labelled = sum(summary.labelled for summary in summaries)
    print(
        f"{len(summaries)} good case(s): {labelled} labelled, {len(summaries) - labelled} "
        f"unlabelled; {len(problems)} problem(s)"
    )
    return 1 if problems or not summaries else 0


def _print_scheme(path: Path, scheme: LabelScheme | None, labels: str) -> None:
    if scheme is not None:
        how = "detected" if labels == "auto" else "forced"
        values = ", ".join(
            f"{value} {meaning}"
            for value, meaning in sorted(zip(scheme.file_values, scheme.file_meanings, strict=True))
            if value
        )
        regions = ", ".join(scheme.regions)
        print(f"{path}: label scheme {scheme.name} ({how}): {values}; regions {regions}")


if __name__ == "__main__":
    raise SystemExit(main())
