"""Writing segmentations back as NIfTI in the input's exact geometry and label convention."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from cascade.io import atomic_path


def write_segmentation(
    path: Path, labels: np.ndarray, reference: nib.Nifti1Header, affine: np.ndarray
) -> None:
    """Write ``labels`` (file convention, original shape) with the reference header, atomically.

    The header (qform/sform codes, pixdim, units) and affine come from the input case, so the
    segmentation overlays its input exactly in any viewer.
    """
    header = reference.copy()
    header.set_data_dtype(np.uint8)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    image = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine, header)
    # keep the input's qform/sform codes; nibabel would otherwise reset them from the affine
    image.set_qform(affine, code=int(reference["qform_code"]))
    image.set_sform(affine, code=int(reference["sform_code"]))
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
