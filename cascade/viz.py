"""Pictures for people: segmentation overlays and the alpha curve (PNG, written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from cascade.io import atomic_path  # noqa: E402

# necrosis red, edema green, enhancing yellow (the usual BraTS colours); class 0 transparent
_CLASS_COLOURS = ListedColormap(
    [(0, 0, 0, 0), (0.9, 0.1, 0.1, 0.6), (0.1, 0.8, 0.1, 0.45), (1, 0.9, 0, 0.7)]
)


def tumor_centre(classes: np.ndarray) -> tuple[int, int, int]:
    """Voxel through which to cut: the tumor's centre of mass, else the volume's centre."""
    tumor = np.argwhere(classes > 0)
    if len(tumor) == 0:
        return tuple(s // 2 for s in classes.shape)
    return tuple(int(round(v)) for v in tumor.mean(axis=0))


def _planes(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through ``centre``, oriented for display."""
    x, y, z = centre
    return [np.rot90(volume[:, :, z]), np.rot90(volume[:, y, :]), np.rot90(volume[x, :, :])]


def _show(axis, background: np.ndarray, classes: np.ndarray | None, title: str) -> None:
    axis.imshow(background, cmap="gray", interpolation="nearest")
    if classes is not None:
        axis.imshow(classes, cmap=_CLASS_COLOURS, vmin=0, vmax=3, interpolation="nearest")
    axis.set_title(title, fontsize=8)
    axis.axis("off")


def save_overlay(
    path: Path,
    flair: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Three orthogonal slices through the tumor: prediction over FLAIR (and truth beside it).

    ``flair`` (X, Y, Z) intensities; ``prediction``/``truth`` internal classes 0..3, same shape.
    """
    centre = tumor_centre(truth if truth is not None and truth.any() else prediction)
    rows = [("prediction", prediction)] + ([("ground truth", truth)] if truth is not None else [])
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for row, (name, classes) in enumerate(rows):
        for column, (image, overlay, view) in enumerate(
            zip(
                _planes(flair, centre),
                _planes(classes, centre),
                ("axial", "coronal", "sagittal"),
                strict=True,
            )
        ):
            _show(axes[row, column], image, np.ma.masked_equal(overlay, 0), f"{name}, {view}")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


def save_alpha_curve(path: Path, steps: Sequence[int], alphas: Sequence[float]) -> None:
    """alpha of the residual mix against the training step."""
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.plot(steps, alphas)
    axis.set_xlabel("Stage-2 training step")
    axis.set_ylabel("alpha (weight of Stage 2)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
