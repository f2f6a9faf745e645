"""Smooth random fields, the building block of every generator, and the grid they fill."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BRATS_SHAPE = (240, 240, 155)  # the BraTS grid (X, Y, Z) at 1 mm, the default of every generator


def _bump_weights(size: int, cell: float, rng_offset: float) -> np.ndarray:
    """(size, lattice) Gaussian interpolation weights, rows scaled to unit norm (unit variance)."""
    count = int(np.ceil(size / cell)) + 4
    knots = (np.arange(count, dtype=np.float32) - 2.0 + rng_offset) * cell
    positions = np.arange(size, dtype=np.float32)[:, None]
    weights = np.exp(-0.5 * ((positions - knots[None, :]) / (0.75 * cell)) ** 2)
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
    return weights.astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], cell: float) -> np.ndarray:
    """Smooth Gaussian random field of `shape`, zero mean and unit variance, float32.

    A lattice of random weights (spacing `cell` voxels) blurred by Gaussian bumps, evaluated
    axis by axis as three plain matrix products instead of a full-volume filter.
    """
    cell = max(float(cell), 1.0)
    w0, w1, w2 = (_bump_weights(size, cell, rng.random()) for size in shape)
    (k0, b0), (k1, b1), (k2, b2) = (w.T.shape for w in (w0, w1, w2))
    lattice = rng.standard_normal((k0, k1, k2), dtype=np.float32)
    field = lattice.reshape(k0 * k1, k2) @ w2.T  # (k0, k1, b2)
    field = w1 @ field.reshape(k0, k1, b2).transpose(1, 0, 2).reshape(k1, k0 * b2)  # (b1, k0, b2)
    field = field.reshape(b1, k0, b2).transpose(1, 0, 2).reshape(k0, b1 * b2)
    return (w0 @ field).reshape(b0, b1, b2)
