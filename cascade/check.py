"""Check BraTS case folders before training: ``python -m cascade.check PATH [PATH ...]``.

Prints one table row per good case and one ``ERROR <file>: <problem>`` line per bad case;
exits 1 if any case is bad or no case is found.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cascade.data.cases import Case, CaseError, CaseSummary, scan_cases, validate_case

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


def check(paths: Sequence[Path]) -> tuple[list[CaseSummary], list[CaseError]]:
    """Validate every case under `paths`, printing rows as they are read (large datasets
    take minutes); returns the good cases' summaries and all problems."""
    cases: list[Case] = []
    problems: list[CaseError] = []
    for path in paths:
        found, errors = scan_cases(path)
        cases.extend(found)
        problems.extend(errors)

    summaries = []
    id_width = max([len(_COLUMNS[0])] + [len(case.case_id) for case in cases])
    if cases:
        print(_format(_COLUMNS, id_width), flush=True)
    for case in cases:
        try:
            summary = validate_case(case)
        except CaseError as error:
            problems.append(error)
            continue
        summaries.append(summary)
        print(_format(_row(summary), id_width), flush=True)
    return summaries, problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.check",
        description="Check BraTS cases (file names, NIfTI geometry, values, labels).",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="a case folder or a dataset folder"
    )
    args = parser.parse_args(argv)

    summaries, problems = check(args.paths)
    for problem in sorted(problems, key=lambda problem: str(problem.path)):
        print(f"ERROR {problem}")
    print(f"{len(summaries)} good case(s), {len(problems)} problem(s)")
    return 1 if problems or not summaries else 0


if __name__ == "__main__":
    raise SystemExit(main())
