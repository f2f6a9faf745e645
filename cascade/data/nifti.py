"""NIfTI in and out: reading a volume with one-line errors for every defect, and writing
segmentations back in the input's exact geometry."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from cascade.data.errors import CaseError
from cascade.io import atomic_path

_NIFTI1_MAGICS = (b"n+1\x00",)
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_header_bytes(path: Path) -> None:
    """Tell a damaged gzip from a file that is not NIfTI at all, before nibabel guesses."""
    try:
        if path.name.endswith(".gz"):
            with path.open("rb") as raw:
                if raw.read(2) != b"\x1f\x8b":
                    raise CaseError(path, "not a gzip file, although named .gz")
            with gzip.open(path, "rb") as stream:
                head = stream.read(548)
        else:
            with path.open("rb") as stream:
                head = stream.read(548)
    except (OSError, EOFError, zlib.error) as error:
        raise CaseError(
            path, f"cannot read, truncated or corrupt file ({one_line(error)})"
        ) from None
    if len(head) < 348:
        raise CaseError(path, f"only {len(head)} bytes, too short for a NIfTI header (truncated?)")
    sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
    is_nifti1 = 348 in sizes and head[344:348] in _NIFTI1_MAGICS
    is_nifti2 = 540 in sizes and head[4:12] == _NIFTI2_MAGIC
    if not (is_nifti1 or is_nifti2):
        raise CaseError(path, "not a NIfTI file (no NIfTI-1/2 header)")


def load_header(path: Path, channels: int | None = None) -> nib.Nifti1Image:
    """The NIfTI image of `path` with its voxels still on disk; CaseError for any defect.

    `channels` None: a 3D volume (or 4D with a trailing axis of 1, as some converters write);
    a number: a 4D image of that many channels on its last axis (MSD's layout).
    """
    check_header_bytes(path)
    try:
        image = nib.load(path)
    except (ImageFileError, HeaderDataError) as error:
        raise CaseError(path, f"not a readable NIfTI file ({one_line(error)})") from None
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise CaseError(path, f"cannot read ({one_line(error)})") from None
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise CaseError(path, f"not a NIfTI image ({type(image).__name__})")
    shape = image.shape
    if channels is None:
        if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
            raise CaseError(path, f"not a 3D volume: shape {shape}")
    elif len(shape) != 4 or shape[3] != channels:
        raise CaseError(
            path, f"expected a 4D image of {channels} channels (dataset.json), got shape {shape}"
        )
    if not np.isfinite(image.affine).all():
        raise CaseError(path, "affine contains NaN or Inf")
    return image


def read_voxels(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    """All voxels of `image` (read from `path`), 3D volumes as (X, Y, Z)."""
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise CaseError(path, f"truncated or corrupt data ({one_line(error)})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data.reshape(data.shape[:3])
    return data


def read_volume(path: Path, channels: int | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Header and voxels of a NIfTI file (see load_header); CaseError for any defect."""
    image = load_header(path, channels)
    return image, read_voxels(path, image)


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
    if len(header.get_data_shape()) != 3:  # an MSD 4D image's header: the label is 3D
        header.set_data_shape(labels.shape)
    image = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine, header)
    # keep the input's qform/sform codes; nibabel would otherwise reset them from the affine
    image.set_qform(affine, code=int(reference["qform_code"]))
    image.set_sform(affine, code=int(reference["sform_code"]))
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
