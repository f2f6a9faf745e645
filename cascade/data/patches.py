"""Per-case checks and the bounded class-location subsample the cache keeps beside each case."""

from __future__ import annotations

import numpy as np

from cascade.data.labels import MAX_CLASSES

# Voxel coordinates kept per tumor class and case: enough spread for centre draws, while a
# worker never holds millions of indices (a BraTS brain has about 8M background voxels).
LOCATIONS_PER_CLASS = 10_000
# Every class but background, of the largest scheme; a class a case lacks has no locations.
TUMOR_CLASSES = tuple(range(1, MAX_CLASSES))


def sample_class_locations(
    label: np.ndarray, limit: int = LOCATIONS_PER_CLASS
) -> dict[int, np.ndarray]:
    """Tumor class (1..3) -> uint16 (N, 3) coordinates of up to `limit` of its voxels in a
    (X, Y, Z) label, N = 0 for an absent class. Drawn by a fixed-seed generator, so a case
    always gets the same subsample, whoever computes it."""
    if max(label.shape) > np.iinfo(np.uint16).max:
        raise ValueError(f"label of shape {label.shape}: axes over 65535 voxels do not fit uint16")
    rng = np.random.default_rng(0)
    locations = {}
    for label_class in TUMOR_CLASSES:
        flat = np.flatnonzero(label == label_class)
        if flat.size > limit:
            flat = np.sort(rng.choice(flat, size=limit, replace=False))
        coordinates = np.unravel_index(flat, label.shape)
        locations[label_class] = np.stack(coordinates, axis=1).astype(np.uint16)
    return locations


def check_case_arrays(
    case_id: str, image: np.ndarray, prior: np.ndarray, label: np.ndarray | None
) -> np.ndarray:
    """The case's label, after checking that there is one and that image (4, X, Y, Z), prior
    (4, X, Y, Z) and label (X, Y, Z) share a grid; a one-line ValueError naming the case else."""
    if label is None:
        raise ValueError(f"{case_id}: Stage-2 training needs a label, the case has none")
    if image.shape[1:] != prior.shape[1:] or image.shape[1:] != label.shape:
        raise ValueError(
            f"{case_id}: image {image.shape}, prior {prior.shape} and label {label.shape} "
            "do not match; rebuild the priors for this cache"
        )
    return label


PRIOR_STEPS = 255  # a uint8 prior holds probabilities x 255 (cascade.data.cache)
