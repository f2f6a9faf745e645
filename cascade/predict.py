"""Segment new patients: ``python -m cascade.predict --checkpoint CKPT --input PATH --output DIR``.

Several checkpoints after ``--checkpoint`` (or one that holds an ensemble, ``ensemble_members``)
are run as one ensemble: every member's probabilities are averaged before the argmax.

PATH is a case folder or a dataset folder of any supported release. Each case is written as
``<case-id>.nii.gz`` (``<case-id>-seg.nii.gz`` for the 2023 naming) on the input's exact grid,
with its affine and header and labels in the input's convention; a case on another grid than the
model's is resampled to it and back. ``volumes.csv`` beside them gives each region's predicted
volume in mL. A bad case is reported in one line and skipped.

The post-processing stored with the model (``postprocessing`` in the training config) is applied
by default; ``--min-enhancing-voxels N`` replaces its enhancing-tumor threshold (0: off), and
``--no-postprocessing`` writes the networks' own argmax, to score what the model itself predicts.

On a CPU the networks run in bf16 where the CPU computes it natively (AVX-512 BF16, AMX), with
one torch thread per core the job may use (``cascade.cores``); ``--exact`` runs them in fp32.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cascade.checkpoint import CheckpointError, build_predictor, join_models, load_checkpoint
from cascade.cores import size_inference
from cascade.data.cases import overlay_background
from cascade.data.discovery import scan_cases
from cascade.data.errors import CaseError
from cascade.data.nifti import write_segmentation
from cascade.data.validation import validate_case
from cascade.io import write_text_atomic
from cascade.metrics import region_volumes_ml
from cascade.viz import save_overlay


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.predict", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        required=True,
        help="cascade.ckpt from a training run; several: one ensemble of all their members "
        "(trained with the same settings, e.g. the seeds of a sweep)",
    )
    parser.add_argument(
        "--input", type=Path, required=True, help="a case folder or a dataset folder"
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the segmentations")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average over mirrorings: Stage 1 its 4 in-plane, Stage 2 all 8 (slower)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available"
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="on a CPU, run the networks in fp32 instead of the faster bf16 (where the CPU has it)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: one per core available to this job)",
    )
    postprocessing = parser.add_mutually_exclusive_group()
    postprocessing.add_argument(
        "--no-postprocessing",
        action="store_true",
        help="write the networks' own output: neither the largest-component rule nor the "
        "enhancing-tumor threshold stored with the model",
    )
    postprocessing.add_argument(
        "--min-enhancing-voxels",
        type=non_negative,
        default=None,
        metavar="N",
        help="enhancing tumor below N voxels becomes necrosis, instead of the stored threshold "
        "(0: off)",
    )
    parser.add_argument("--overlays", action="store_true", help="also write <case-id>.png overlays")
    parser.add_argument(
        "--overwrite", action="store_true", help="predict cases already in --output"
    )
    return parser.parse_args(argv)


VOLUMES_FILE = "volumes.csv"


def write_volumes(path: Path, volumes: dict[str, dict[str, object]]) -> None:
    """Each region's predicted volume (mL, from the input's voxel size) per case, merged with the
    rows of cases predicted earlier into the same folder; written atomically."""
    rows = {}
    if path.is_file():
        with path.open(newline="") as stream:
            rows = {row["case_id"]: row for row in csv.DictReader(stream)}
    rows.update(volumes)
    fields = list(dict.fromkeys(key for row in rows.values() for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[case_id] for case_id in sorted(rows))
    write_text_atomic(path, buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but no CUDA device is available")
        return 2
    try:
        models = [load_checkpoint(path) for path in args.checkpoint]
        model = join_models(models, args.checkpoint)
    except CheckpointError as error:
        print(f"error: {error}")
        return 2
    size_inference(args.threads)
    predictor = build_predictor(
        model,
        device,
        tta=args.tta or None,
        cpu_bf16=not args.exact,
        min_enhancing_voxels=0 if args.no_postprocessing else args.min_enhancing_voxels,
        largest_tumor_component=False if args.no_postprocessing else None,
    )
    cases, problems = scan_cases(args.input)
    for problem in problems:
        print(f"skipped: {problem}")
    failed = len(problems)
    written = skipped = 0
    volumes: dict[str, dict[str, object]] = {}
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
        regions = model.scheme.regions
        volumes[case.case_id] = {
            "case_id": case.case_id,
            "file": target.name,
            **region_volumes_ml(prediction.classes, meta.input_grid.spacing, regions),
        }
        if args.overlays:
            flair = overlay_background(case, prediction.classes.shape)
            save_overlay(
                args.output / f"{case.case_id}.png", flair, prediction.classes, title=case.case_id
            )
    if volumes:
        write_volumes(args.output / VOLUMES_FILE, volumes)
    print(f"{written} written, {skipped} already there, {failed} failed -> {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
