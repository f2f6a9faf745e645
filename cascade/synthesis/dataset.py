"""The dataset writer: generated cases as a BraTS 2020-style folder, one process or many.

``python -m cascade.synthesis --out DIR --cases N [--generator phantom|realistic] [--shape X Y Z]
[--seed S] [--workers W] [--thick-slices P] [--faint-patches P] [--contrast-floor C]``. Case i
is drawn from its own seed, so a dataset grows without changing the cases it already has. Labels
use the BraTS 2020 values 0, 1, 2, 4.
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from filelock import FileLock
from tqdm import tqdm

from cascade.data.cases import MODALITIES
from cascade.io import atomic_path
from cascade.synthesis import phantom
from cascade.synthesis.anatomy import MissingExtraError, require_nilearn
from cascade.synthesis.fields import BRATS_SHAPE
from cascade.synthesis.variation import NO_VARIATION, ScanVariation


def case_seed(seed: int, index: int) -> int:
    """Independent seed of case `index` (0-based) of a dataset drawn with base `seed`."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(index,)).generate_state(1)[0])


def case_id(index: int) -> str:
    """Case id of the 0-based `index`: Synth_001, Synth_002, ..."""
    return f"Synth_{index + 1:03d}"


def lps_affine(shape: Sequence[int]) -> np.ndarray:
    """BraTS voxel-to-world matrix (1 mm, LPS storage) for a volume of `shape` (X, Y, Z)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def _case_files(folder: Path, name: str) -> dict[str, Path]:
    return {key: folder / f"{name}_{key}.nii.gz" for key in (*MODALITIES, "seg")}


def _save_atomic(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a .nii.gz atomically; its hidden temporary is never taken for a case (discovery
    skips hidden files)."""
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    # level 1 like nibabel's default; mtime 0 keeps the files identical across runs
    with (
        atomic_path(path) as temporary,
        open(temporary, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as compressed,
    ):
        compressed.write(image.to_bytes())


GENERATORS = ("phantom", "realistic")


def write_dataset(
    out: Path | str,
    cases: int,
    shape: Sequence[int] = BRATS_SHAPE,
    seed: int = 0,
    progress: bool = True,
    generator: str = "phantom",
    workers: int = 1,
    variation: ScanVariation = NO_VARIATION,
) -> list[Path]:
    """Write `cases` cases as <out>/Synth_<nnn>/Synth_<nnn>_{t1,t1ce,t2,flair,seg}.nii.gz.

    generator: "phantom" (the ellipsoid brains of `cascade.synthesis.phantom`) or "realistic"
    (MNI152 anatomy, `cascade.synthesis.realistic`, which needs the `synthesis` extra: a
    MissingExtraError says so before any case is written); `workers` processes generate cases in
    parallel; `variation` (realistic only): thick slices, faint bright patches, lower contrast
    (`cascade.synthesis.variation`).
    Cases whose five files all exist are kept as they are. Returns the case folders in order.
    Each file is renamed into place when complete, and a lock beside `out` makes runs that
    generate the same dataset at once wait for each other, so none reads a half-written case.
    """
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}: choose one of {', '.join(GENERATORS)}")
    if variation.changed() and generator != "realistic":
        raise ValueError(
            f"{', '.join(variation.changed())}: drawn by the realistic generator only, "
            f"not {generator}"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock"):
        folders = [out / case_id(index) for index in range(cases)]
        missing = [
            index
            for index, folder in enumerate(folders)
            if not all(path.is_file() for path in _case_files(folder, folder.name).values())
        ]
        if missing and generator == "realistic":
            require_nilearn()
        jobs = [(out, index, tuple(shape), seed, generator, variation) for index in missing]
        bar = tqdm(total=len(jobs), desc="synthetic cases", unit="case", disable=not progress)
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
                for _ in pool.map(_write_case, jobs):
                    bar.update()
        else:
            for job in jobs:
                _write_case(job)
                bar.update()
        bar.close()
        return folders


def _write_case(job: tuple[Path, int, tuple[int, ...], int, str, ScanVariation]) -> None:
    """Generate and write case `index` (a top-level function: it runs in worker processes)."""
    out, index, shape, seed, generator, variation = job
    name = case_id(index)
    folder = out / name
    files = _case_files(folder, name)
    folder.mkdir(parents=True, exist_ok=True)
    if generator == "realistic":
        from cascade.synthesis.realistic import generate_case

        images, label = generate_case(shape, case_seed(seed, index), variation)
    else:
        images, label = phantom.generate_case(shape, case_seed(seed, index))
    affine = lps_affine(shape)
    for modality, image in images.items():
        _save_atomic(image, affine, files[modality])
    _save_atomic(label, affine, files["seg"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.synthesis",
        description="Write synthetic BraTS 2020-style cases (images and labels).",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write into")
    parser.add_argument("--cases", type=int, required=True, help="number of cases")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=list(BRATS_SHAPE), metavar=("X", "Y", "Z")
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed; case i uses its own")
    parser.add_argument("--generator", choices=GENERATORS, default="phantom")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument(
        "--thick-slices",
        type=float,
        default=0.0,
        metavar="P",
        help="realistic: the probability of each sequence being acquired in 2.5-6 mm axial "
        "slices and resampled to the grid (default 0)",
    )
    parser.add_argument(
        "--faint-patches",
        type=float,
        default=0.0,
        metavar="P",
        help="realistic: the probability of a case having faint FLAIR- and T2-bright patches "
        "of healthy tissue (default 0)",
    )
    parser.add_argument(
        "--contrast-floor",
        type=float,
        default=1.0,
        metavar="C",
        help="realistic: shrink each sequence's contrast towards white matter by a factor "
        "drawn from [C, 1] (default 1: unchanged)",
    )
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    if min(args.shape) < phantom.MIN_SIZE:
        parser.error(f"--shape sizes must be at least {phantom.MIN_SIZE}")
    try:
        variation = ScanVariation(
            thick_slices=args.thick_slices,
            faint_patches=args.faint_patches,
            contrast_floor=args.contrast_floor,
        )
        folders = write_dataset(
            args.out,
            args.cases,
            args.shape,
            args.seed,
            generator=args.generator,
            workers=args.workers,
            variation=variation,
        )
    except MissingExtraError as error:
        print(f"error: {error}")
        return 2
    except ValueError as error:  # a setting write_dataset refuses before writing anything
        parser.error(str(error))
    print(f"{len(folders)} synthetic cases in {args.out}")
    return 0
