"""Preprocessing as TorchIO transforms: crop to the brain, clip outliers, robust z-score.

All three work on a `tio.Subject` (images (C, X, Y, Z)), compose with `tio.Compose` and run
inside a `tio.SubjectsDataset`. The brain mask of an intensity transform is, by default, the
nonzero voxels of *that* modality: BraTS images are skull-stripped, so zero is background, and a
per-modality mask guarantees that every background voxel is still exactly 0 afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio
from torchio.transforms.preprocessing.intensity.normalization_transform import (
    NormalizationTransform,
    TypeMaskingMethod,
)

from cascade.boxes import Box, bounding_box
from cascade.data.errors import CaseError

# Scales the median absolute deviation to the standard deviation of a normal distribution.
MAD_TO_STD = 1.4826


def nonzero_mask(tensor: torch.Tensor) -> torch.Tensor:
    """Brain mask of one image (C, X, Y, Z): its nonzero voxels."""
    return tensor != 0


def _describe(image: tio.Image, image_name: str) -> str:
    """Where a problem is: the image's file if it has one, else its name in the subject."""
    return f"{image.path}" if image.path is not None else f'image "{image_name}"'


def _percentiles(values: np.ndarray, percentiles: Sequence[float]) -> list[float]:
    """Percentiles of a 1D array with numpy's default linear interpolation.

    Partitions `values` in place (the caller owns the copy): one O(n) selection per percentile,
    each with a single kth, which numpy runs several times faster than one multi-kth partition.
    """
    last = values.size - 1
    positions = [last * percentile / 100.0 for percentile in percentiles]
    selected: dict[int, float] = {}
    start = 0
    for index in sorted({int(np.floor(position)) for position in positions}):
        values[start:].partition(index - start)
        selected[index] = float(values[index])
        start = index + 1
    result = []
    for position in positions:
        low = int(np.floor(position))
        fraction = position - low
        if fraction == 0:
            result.append(selected[low])
            continue
        # Everything after `low` is >= values[low]; the next order statistic is their minimum.
        following = float(values[low + 1 :].min())
        result.append(selected[low] + (following - selected[low]) * fraction)
    return result


class CropToBrain(tio.SpatialTransform):
    """Crop every image (label included) to the bounding box of the brain plus `margin` voxels.

    The brain is the voxels that are nonzero in any intensity image. The box, clipped to the
    volume, is recorded as subject["crop_box"] = ((x0, x1), (y0, y1), (z0, z1)) (half-open,
    in the original voxel grid) with subject["original_shape"], so `uncrop` restores a prediction.
    """

    def __init__(self, margin: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if margin < 0:
            raise ValueError(f"CropToBrain: margin must be >= 0, got {margin}")
        self.margin = int(margin)
        self.args_names = ["margin"]

    def brain_box(self, subject: tio.Subject) -> Box:
        """Bounding box (half-open, with margin, clipped to the volume) of the nonzero voxels."""
        intensity_images = subject.get_images_dict(intensity_only=True)
        brain = None
        for image in intensity_images.values():
            nonzero = (image.data != 0).any(dim=0)
            brain = nonzero if brain is None else brain.logical_or_(nonzero)
        if brain is None:
            raise ValueError("CropToBrain: the subject has no intensity image to find the brain in")
        box = bounding_box(brain, self.margin)
        if box is None:
            where = ", ".join(_describe(image, name) for name, image in intensity_images.items())
            raise ValueError(f"{where}: all images are zero, there is no brain to crop to")
        return box

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        shape = tuple(int(size) for size in subject.spatial_shape)
        box = self.brain_box(subject)
        cropping = []
        for (start, stop), size in zip(box, shape, strict=True):
            cropping += [start, size - stop]
        # TorchIO's Crop moves the affine origin with the crop; it crops this subject in place.
        crop = tio.Crop(cropping, copy=False, include=self.include, exclude=self.exclude)
        subject = crop.apply_transform(subject)
        if "crop_box" in subject:  # cropped before: express the box in the first grid
            previous = subject["crop_box"]
            box = tuple(
                (offset + start, offset + stop)
                for (offset, _), (start, stop) in zip(previous, box, strict=True)
            )
            shape = tuple(subject["original_shape"])
        subject["crop_box"] = box
        subject["original_shape"] = shape
        subject.update_attributes()
        return subject


def uncrop(
    array: np.ndarray, crop_box: Box, original_shape: Sequence[int], fill: float = 0
) -> np.ndarray:
    """Put a cropped array (..., x, y, z) back into the original grid (..., X, Y, Z).

    Voxels outside the box get `fill`; leading axes (channels) are kept; dtype is kept.
    """
    array = np.asarray(array)
    box = [(int(start), int(stop)) for start, stop in crop_box]
    expected = tuple(stop - start for start, stop in box)
    if array.ndim < 3 or array.shape[-3:] != expected:
        raise ValueError(f"uncrop: array shape {array.shape} does not end with the box {expected}")
    restored = np.full(array.shape[:-3] + tuple(original_shape), fill, dtype=array.dtype)
    (x0, x1), (y0, y1), (z0, z1) = box
    restored[..., x0:x1, y0:y1, z0:z1] = array
    return restored


def _masked_values(
    subject: tio.Subject, image_name: str, mask: torch.Tensor, purpose: str
) -> tuple[tio.ScalarImage, np.ndarray, np.ndarray, np.ndarray]:
    """(image, float32 copy of its data, mask as numpy, the masked values); error if empty."""
    image = subject.get_scalar_image(image_name)
    array = image.data.numpy().astype(np.float32)  # always a fresh copy we may modify
    inside = mask.numpy()
    values = array[inside]
    if values.size == 0:
        raise CaseError(
            _describe(image, image_name),
            f"brain mask of {image_name} is empty, cannot {purpose} (all-zero image?)",
        )
    return image, array, inside, values


class PercentileClip(NormalizationTransform):
    """Clip intensities inside the mask to its [lower, upper] percentiles; outside is untouched.

    Args:
        lower: lower percentile in [0, 100].
        upper: upper percentile in [0, 100], above `lower`.
        masking_method: the voxels the percentiles come from and that are clipped (see
            TorchIO's NormalizationTransform); default: nonzero voxels of each image.
    """

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        masking_method: TypeMaskingMethod = nonzero_mask,
        **kwargs,
    ) -> None:
        super().__init__(masking_method=masking_method, **kwargs)
        if not 0 <= lower < upper <= 100:
            raise ValueError(
                f"PercentileClip: need 0 <= lower < upper <= 100, got {lower} and {upper}"
            )
        self.lower = float(lower)
        self.upper = float(upper)
        self.args_names = ["lower", "upper", "masking_method"]

    def apply_normalization(
        self, subject: tio.Subject, image_name: str, mask: torch.Tensor
    ) -> None:
        image, array, inside, values = _masked_values(subject, image_name, mask, "clip")
        low, high = _percentiles(values, (self.lower, self.upper))
        np.copyto(array, np.clip(array, low, high), where=inside)
        image.set_data(torch.from_numpy(array))


class RobustZNormalization(NormalizationTransform):
    """Robust z-score inside the mask, (x - median) / (1.4826 * MAD); voxels outside become 0.

    Args:
        masking_method: the voxels the median and MAD come from and that are normalised (see
            TorchIO's NormalizationTransform); default: nonzero voxels of each image.
    """

    def __init__(self, masking_method: TypeMaskingMethod = nonzero_mask, **kwargs) -> None:
        super().__init__(masking_method=masking_method, **kwargs)
        self.args_names = ["masking_method"]

    def apply_normalization(
        self, subject: tio.Subject, image_name: str, mask: torch.Tensor
    ) -> None:
        image, array, inside, deviations = _masked_values(subject, image_name, mask, "normalise")
        (median,) = _percentiles(deviations, (50.0,))
        np.abs(np.subtract(deviations, median, out=deviations), out=deviations)
        (mad,) = _percentiles(deviations, (50.0,))
        if mad == 0:
            # a user's file (one line, the case skipped or listed), not a fault of the code
            raise CaseError(
                _describe(image, image_name),
                f"median absolute deviation of {image_name} inside the brain is 0 "
                "(constant image?), cannot normalise",
            )
        array -= np.float32(median)
        array *= np.float32(1.0 / (MAD_TO_STD * mad))
        array[~inside] = 0
        image.set_data(torch.from_numpy(array))


def build_preprocessing(
    margin: int, lower_percentile: float, upper_percentile: float
) -> tio.Compose:
    """Crop to the brain, clip each modality to its brain percentiles, robust z-score it."""
    # The Compose copies the subject once; the steps then work on that copy in place.
    return tio.Compose(
        [
            CropToBrain(margin, copy=False),
            PercentileClip(lower_percentile, upper_percentile, copy=False),
            RobustZNormalization(copy=False),
        ]
    )
