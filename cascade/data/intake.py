"""One case from its files into the preprocessed cache, checked on the way from one read of its
images: the headers and the label first (the label settles the scheme the case is stored in),
then the images as TorchIO reads them for preprocessing, their voxels checked there."""

from __future__ import annotations

import dataclasses

import torchio as tio

from cascade.data.cache import PreprocessCache
from cascade.data.cases import MODALITIES, Case, load_subject
from cascade.data.errors import CaseError
from cascade.data.labels import LabelScheme, get_scheme, scheme_for_values
from cascade.data.validation import check_files, check_image_voxels, check_label, validate_case


def check_and_store_case(
    job: tuple[Case, PreprocessCache, str | None],
) -> tuple[tuple[int, ...], str | None]:
    """Check the case of `job` (case, cache, data.labels) and store it preprocessed unless it is
    current: (its label values, None) for a good case, ((), the problem in one line) for a bad
    one. It runs in worker processes, which import this light module only."""
    case, cache, labels = job
    try:
        grids, reference = check_files(case)
        counts = check_label(case, grids, reference)
        case = dataclasses.replace(case, scheme=_case_scheme(case, set(counts), labels))
        cache.build_case(case, _checked_subject)
    except CaseError as error:
        return (), str(error)
    return tuple(counts), None


def _case_scheme(case: Case, values: set[int], labels: str | None) -> LabelScheme:
    """The scheme to store a case in before the dataset's is settled: the forced one when its
    values fit, else the first of its naming that holds them. The cache rebuilds the rare case
    whose classes the dataset's scheme reads otherwise."""
    if labels not in (None, "auto") and values <= set(get_scheme(labels).file_values):
        return get_scheme(labels)
    return scheme_for_values(case.scheme.naming, values) or case.scheme


def _checked_subject(case: Case) -> tio.Subject:
    """The case's TorchIO subject, its images read once and their voxels checked."""
    try:
        subject = load_subject(case)
        subject.load()
    except CaseError:
        raise
    except Exception:
        validate_case(case)  # names the file and its defect in one line
        raise
    for modality in MODALITIES:
        check_image_voxels(case.images[modality], {modality: subject[modality].data.numpy()})
    return subject
