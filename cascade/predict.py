"""Segment new patients: ``python -m cascade.predict --checkpoint CKPT --input PATH --output DIR``.

PATH is a case folder or a dataset folder of any supported release. Each case is written as
``<case-id>.nii.gz`` (``<case-id>-seg.nii.gz`` for the 2023 naming) on the input's exact grid,
with its affine and header and labels in the input's convention; a case on another grid than the
model's is resampled to it and back. A bad case is reported in one line and skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cascade.checkpoint import CheckpointError, build_predictor, load_checkpoint
from cascade.data.cases import read_modality
from cascade.data.discovery import scan_cases
from cascade.data.errors import CaseError
from cascade.data.nifti import write_segmentation
from cascade.data.validation import validate_case
from cascade.viz import save_overlay


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.predict", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="cascade.ckpt from a training run"
    )
    parser.add_argument(
        "--input", type=Path, required=True, help="a case folder or a dataset folder"
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the segmentations")
    parser.add_argument("--tta", action="store_true", help="average over 8 mirrorings (slower)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available"
    )
    parser.add_argument("--overlays", action="store_true", help="also write <case-id>.png overlays")
    parser.add_argument(
        "--overwrite", action="store_true", help="predict cases already in --output"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but no CUDA device is available")
        return 2
    try:
        model = load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        print(f"error: {error}")
        return 2
    predictor = build_predictor(model, device, tta=args.tta or None)
    cases, problems = scan_cases(args.input)
    for problem in problems:
        print(f"skipped: {problem}")
    failed = len(problems)
    written = skipped = 0
    for case in tqdm(cases, desc="predict", unit="case"):
        target = args.output / case.output_name()
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            # a label, if there is one, is not read: predicting needs none
            unlabelled = dataclasses.replace(case, label=None)
            validate_case(unlabelled)
            prediction = predictor.predict(unlabelled)
        except CaseError as error:
            tqdm.write(f"skipped: {error}")
            failed += 1
            continue
        meta = prediction.meta
        write_segmentation(target, prediction.labels, meta.nifti_header(), np.asarray(meta.affine))
        written += 1
        if args.overlays:
            flair = read_modality(case, "flair")
            save_overlay(
                args.output / f"{case.case_id}.png", flair, prediction.classes, title=case.case_id
            )
    print(f"{written} written, {skipped} already there, {failed} failed -> {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
