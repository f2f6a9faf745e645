"""Check that a case can be used, and settle a dataset's label scheme from its files.

`validate_case` reads every file of a case: readable NIfTI, 3D (4D with the channel count of
dataset.json for MSD), finite values, no all-zero or flat image, modalities overlapping in physical
space (they may lie on different grids: they are resampled onto one), the label on the reference
grid, label values integral and in the scheme. `resolve_scheme` then decides the dataset's scheme
from the namings and the label values of all its cases, or checks a forced one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np

from cascade.data.cases import MODALITIES, Case, CaseSummary
from cascade.data.errors import CaseError
from cascade.data.geometry import Grid, check_overlap, reference_modality
from cascade.data.labels import LabelScheme, get_scheme, scheme_for_values, schemes_for_naming
from cascade.data.nifti import load_header, read_voxels

# Largest affine difference (mm) still taken as the same voxel grid.
AFFINE_TOLERANCE_MM = 1e-3


def _check_finite(path, data: np.ndarray) -> None:
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise CaseError(path, f"{bad} voxels are NaN or Inf")


def _naming_values(scheme: LabelScheme) -> set[int]:
    """Every file value some scheme of `scheme`'s naming allows (2023 and 2024 share one)."""
    return {value for other in schemes_for_naming(scheme.naming) for value in other.file_values}


def label_counts(path, data: np.ndarray, scheme: LabelScheme | None = None) -> dict[int, int]:
    """Voxels per label value; CaseError for non-integral values or values outside `scheme`
    (None: the values are checked later, against the dataset's scheme)."""
    _check_finite(path, data)
    if np.issubdtype(data.dtype, np.integer) and data.min() >= 0 and data.max() <= 255:
        counts = np.bincount(data.ravel().astype(np.intp, copy=False), minlength=1)
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:  # floats (some releases store labels so), negatives or large integers
        values, counts = np.unique(data, return_counts=True)
        fractional = values[values != np.rint(values)]
        if fractional.size:
            shown = ", ".join(f"{value:g}" for value in fractional[:3])
            raise CaseError(path, f"label values {shown} are not integral")
        values = np.rint(values).astype(np.int64)
    if scheme is not None:
        invalid = scheme.invalid_values(values)
        if invalid:
            shown = ", ".join(f"{value:g}" for value in invalid[:5])
            raise CaseError(
                path,
                f"label values {shown} are not in the {scheme.name} scheme "
                f"{list(scheme.allowed_values)}",
            )
    return {
        int(value): int(count)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True)
    }


def _image_grids(case: Case) -> tuple[dict[str, Grid], dict[str, nib.Nifti1Image]]:
    """Each modality's grid and image header (a 4D file is read once for all modalities)."""
    grids, headers = {}, {}
    for modality, path in case.images.items():
        if case.channels is not None and modality != MODALITIES[0]:
            headers[modality], grids[modality] = headers[MODALITIES[0]], grids[MODALITIES[0]]
            continue
        headers[modality] = load_header(path, case.channel_count)
        grids[modality] = Grid.of(headers[modality])
    return grids, headers


def check_files(case: Case) -> tuple[dict[str, Grid], str]:
    """The headers of the case's images: readable NIfTI of the right dimensions, overlapping in
    physical space. Returns each modality's grid and the reference modality (CaseError else)."""
    grids, _, reference = _checked_headers(case)
    return grids, reference


def _checked_headers(case: Case) -> tuple[dict[str, Grid], dict[str, nib.Nifti1Image], str]:
    grids, headers = _image_grids(case)
    check_overlap(grids, case.images)
    return grids, headers, reference_modality(grids)


def check_image_voxels(path, channels: Mapping[str, np.ndarray]) -> None:
    """Finite values and some signal in each modality's voxels (`channels`: modality -> array
    read from `path`); CaseError else."""
    for name, channel in channels.items():
        _check_finite(path, channel)
        # Small negative values are normal (interpolation), so only "no signal at all" is flagged.
        if not channel.any():
            raise CaseError(path, f"{name} image is all zero")
        if _no_spread(channel[channel != 0]):
            raise CaseError(
                path,
                f"{name} image has no spread inside the brain (median absolute deviation 0: "
                "a constant or mask image?), cannot be normalised",
            )


def _no_spread(values: np.ndarray) -> bool:
    """Whether the robust z-score's scale (the median absolute deviation) of `values` is 0.
    One voxel in 8 decides first: a whole brain's median costs more than the rest of the check."""
    for sample in (values[::8], values):
        if sample.size and np.median(np.abs(sample - np.median(sample))) > 0:
            return False
    return True


def check_label(
    case: Case, grids: Mapping[str, Grid], reference: str, scheme: LabelScheme | None = None
) -> dict[int, int]:
    """Read the case's label (if any): on the reference grid, integral values in `scheme` (None:
    in the schemes of the case's naming). Returns voxels per file label value."""
    if case.label is None:
        return {}
    header = load_header(case.label)
    _check_on_grid(case.label, Grid.of(header), case.images[reference], grids[reference])
    data = read_voxels(case.label, header)
    if scheme is not None:
        return label_counts(case.label, data, scheme)
    counts = label_counts(case.label, data)
    _check_naming_values(case, counts)
    return counts


def summarise(
    case: Case, grids: Mapping[str, Grid], reference: str, counts: Mapping[int, int]
) -> CaseSummary:
    """What checking `case` found; shape and spacing are those of the reference grid."""
    return CaseSummary(
        case_id=case.case_id,
        shape=grids[reference].shape,
        spacing=grids[reference].spacing,
        labelled=case.label is not None,
        label_counts=dict(counts),
        notes=case.notes + _resampling_notes(grids, reference),
    )


def validate_case(case: Case, scheme: LabelScheme | None = None) -> CaseSummary:
    """Read every file of `case` and check it is usable; raise CaseError for the first defect.

    Label values are checked against `scheme`, or (None) against the schemes of the case's naming.
    The summary's shape and spacing are those of the reference grid the case is read on.
    """
    grids, headers, reference = _checked_headers(case)
    checked_files = set()
    for modality, path in case.images.items():
        if path in checked_files:
            continue
        checked_files.add(path)
        data = read_voxels(path, headers[modality])
        if case.channels is None:
            channels = {modality: data}
        else:
            channels = {name: data[..., index] for name, index in case.channels.items()}
        check_image_voxels(path, channels)
    return summarise(case, grids, reference, check_label(case, grids, reference, scheme))


def _describe(grid: Grid) -> str:
    shape = "x".join(str(size) for size in grid.shape)
    return f"{shape} at {'x'.join(f'{zoom:.4g}' for zoom in grid.spacing)} mm"


def _resampling_notes(grids: Mapping[str, Grid], reference: str) -> tuple[str, ...]:
    """One note per modality on a grid of its own: preprocessing resamples it onto the
    reference's (geometry.align_modalities), which a user should know of."""
    return tuple(
        f"{modality} lies on a grid of its own ({_describe(grid)}): resampled onto the "
        f"{reference} grid ({_describe(grids[reference])})"
        for modality, grid in grids.items()
        if not grid.same_as(grids[reference])
    )


def _check_naming_values(case: Case, counts: Mapping[int, int]) -> None:
    allowed = _naming_values(case.scheme)
    invalid = sorted(set(counts) - allowed)
    if invalid:
        names = "/".join(scheme.name for scheme in schemes_for_naming(case.scheme.naming))
        raise CaseError(
            case.label,
            f"label values {', '.join(map(str, invalid))} not in the {names} scheme "
            f"{sorted(allowed)} (force another with data.labels=<scheme>)",
        )


def _check_on_grid(path, grid: Grid, reference_path, reference: Grid) -> None:
    if grid.shape != reference.shape:
        raise CaseError(
            path, f"shape {grid.shape} differs from {reference_path.name} {reference.shape}"
        )
    if grid.orientation != reference.orientation:
        raise CaseError(
            path,
            f"orientation {grid.orientation} differs from {reference_path.name} "
            f"{reference.orientation}",
        )
    if not grid.same_as(reference, AFFINE_TOLERANCE_MM):
        difference = float(np.abs(grid.matrix() - reference.matrix()).max())
        raise CaseError(
            path, f"affine differs from {reference_path.name} by up to {difference:.4g} mm"
        )


def resolve_scheme(
    cases: Sequence[Case],
    label_values: Mapping[str, Iterable[int]],
    forced: str | None = None,
) -> LabelScheme:
    """The label scheme of a dataset: `forced` (checked against every case's values), or the
    first scheme of the cases' file naming that holds every label value found.

    `label_values` maps case id -> distinct file values of its label (labelled cases only).
    Raises CaseError naming a file for mixed namings or values no scheme holds.
    """
    if not cases:
        raise ValueError("resolve_scheme: no cases")
    if forced not in (None, "auto"):
        scheme = get_scheme(forced)
        for case in cases:
            invalid = sorted(set(label_values.get(case.case_id, ())) - set(scheme.file_values))
            if invalid:
                raise CaseError(
                    case.label,
                    f"label values {', '.join(map(str, invalid))} are not in the forced "
                    f"{scheme.name} scheme {list(scheme.allowed_values)}",
                )
        return scheme
    by_naming: dict[str, Case] = {}
    for case in cases:
        by_naming.setdefault(case.scheme.naming, case)
    if len(by_naming) > 1:
        (first_naming, first), (second_naming, second) = list(by_naming.items())[:2]
        raise CaseError(
            second.folder,
            f"{second_naming} files mixed with {first_naming} files ({first.case_id}) in one "
            "dataset: two label schemes; keep one release per dataset folder",
        )
    naming = next(iter(by_naming))
    found = {int(value) for values in label_values.values() for value in values}
    scheme = scheme_for_values(naming, found)
    if scheme is None:  # validate_case already rejects such values; this is a safety net
        raise CaseError(cases[0].folder, f"label values {sorted(found)} fit no {naming} scheme")
    return scheme


def with_scheme(cases: Sequence[Case], scheme: LabelScheme) -> list[Case]:
    """The cases, read in `scheme` from now on."""
    return [dataclasses.replace(case, scheme=scheme) for case in cases]
