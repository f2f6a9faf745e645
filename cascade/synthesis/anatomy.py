"""Healthy anatomy of generated cases from a real brain: the MNI ICBM152 2009 template.

The template's grey- and white-matter probability maps (shipped inside nilearn's wheel, nothing
downloaded) give a folded cortex, deep grey matter and white-matter tracts; CSF is what they leave
inside the brain mask, and the ventricles are its deep part. Each case resamples the maps into the
BraTS grid (240 x 240 x 155, 1 mm, LPS) through a random affine, a smooth random warp and the
tumor's mass effect, so no two cases share their anatomy.

Arrays are in NIfTI voxel order (X, Y, Z) of the output grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import numpy as np
from scipy import ndimage

from cascade.synthesis.fields import BRATS_SHAPE, smooth_noise

# Where the template's brain lands in the BraTS grid: its left-right and front-back centre on the
# BraTS brain's, its vertex near the top of the grid and the cerebellum's lowest slice ~8 mm
# above the bottom (BraTS cuts the brainstem, not the cerebellum nor the vertex).
_BRATS_CENTER = np.array([118.0, 132.0, 76.0])
_TEMPLATE_CENTER = np.array([98.0, 117.0, 83.0])  # MNI 1 mm voxels
# BraTS brains are smaller than the MNI 2009 average (1.6 L against 1.9 L with its CSF).
_SCALE_RANGE = (0.86, 0.98)
VENTRICLE_DEPTH_MM = 12.0  # CSF deeper than this below the brain surface is ventricular
# Seeds lie at least this deep below the surface: gliomas reach the cortex, but grow from within.
_SEED_DEPTH_MM = 10.0


@dataclass(frozen=True)
class Template:
    """Tissue probabilities (float32, MNI voxels, RAS) and the distances used to place seeds."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray  # float32 fraction: the CSF of the ventricles
    brain: np.ndarray  # float32 0/1 mask
    wm_depth: np.ndarray  # mm from the nearest voxel that is not white matter
    brain_depth: np.ndarray  # mm below the brain surface
    hindbrain: np.ndarray  # float32 0..1: cerebellum and brainstem, softly edged


class MissingExtraError(RuntimeError):
    """A generator needs a package of the `synthesis` extra that is not installed."""


def require_nilearn() -> ModuleType:
    """nilearn's datasets module, or a MissingExtraError that says how to install it.

    Imported here, not at module level: it is heavy and only realistic cases need it.
    """
    try:
        from nilearn import datasets
    except ImportError:
        raise MissingExtraError(
            "realistic generated cases need nilearn (the MNI152 template): "
            "pip install 'cascade[synthesis]'"
        ) from None
    return datasets


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The MNI152 2009 maps at 1 mm, CSF and ventricles derived from them (once per process)."""
    datasets = require_nilearn()

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    gm, wm = gm * brain, wm * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0).astype(np.float32)
    brain_depth = ndimage.distance_transform_edt(brain).astype(np.float32)
    # Ventricles: the large connected pools of CSF deep inside; sulcal CSF reaches the surface.
    deep_csf = (csf > 0.5) & (brain_depth > VENTRICLE_DEPTH_MM)
    components, count = ndimage.label(deep_csf)
    sizes = ndimage.sum_labels(deep_csf, components, np.arange(1, count + 1))
    keep = np.isin(components, 1 + np.flatnonzero(sizes >= 500))
    keep = ndimage.binary_dilation(keep, iterations=2) & (csf > 0.05)
    ventricles = (csf * keep).astype(np.float32)
    wm_depth = ndimage.distance_transform_edt(wm > 0.5).astype(np.float32)
    hindbrain = _hindbrain(brain, datasets.load_mni152_brain_mask(resolution=1).affine)
    return Template(
        gm, wm, csf, ventricles, brain.astype(np.float32), wm_depth, brain_depth, hindbrain
    )


def _hindbrain(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Cerebellum, pons and medulla from boxes in MNI millimetres: the cerebellum behind y =
    -40 and below the tentorium (about 20 mm below the origin at the back, rising forwards),
    the brainstem within 15 mm of the midline below z = -10 (the temporal lobes lie beside it).
    Blurred over ~5 mm: it only sets where a case's own hindbrain contrast applies."""
    x, y, z = (affine[k, k] * np.arange(brain.shape[k]) + affine[k, 3] for k in range(3))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    cerebellum = (y < -40.0) & (z < -20.0 + 0.25 * (y + 40.0) + 8.0)
    brainstem = (np.abs(x) < 15.0) & (y < -10.0) & (z < -10.0)
    region = (cerebellum | brainstem) & brain
    return np.clip(ndimage.gaussian_filter(region.astype(np.float32), 3.0), 0.0, 1.0)


@dataclass(frozen=True)
class Placement:
    """The random map from output voxels to template voxels, before the tumor's mass effect."""

    to_brats: np.ndarray  # (3,) output voxel size in BraTS millimetres
    matrix: np.ndarray  # (3, 3) BraTS mm -> template voxels (flips, scaling, rotation)
    warp_cell_mm: float
    warp_mm: float
    seed: int
    atrophy: float = 0.0  # 0: the template's CSF; towards 1: wider sulci and ventricles


def draw_placement(rng: np.random.Generator, shape: Sequence[int]) -> Placement:
    """Random scaling (per axis, around a shared size), a small rotation and a warp strength."""
    to_brats = np.asarray(BRATS_SHAPE, np.float64) / np.asarray(shape, np.float64)
    size = rng.uniform(*_SCALE_RANGE)
    scale = size * rng.uniform(0.96, 1.04, 3)
    angles = np.deg2rad(rng.normal(0.0, [2.0, 2.0, 2.5]))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [k for k in range(3) if k != axis]
        turn = np.eye(3)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = c, -s, s, c
        rotation = rotation @ turn
    flip = np.diag([-1.0, -1.0, 1.0])  # LPS storage -> RAS template voxels
    matrix = flip @ rotation @ np.diag(1.0 / scale)
    return Placement(
        to_brats=to_brats,
        matrix=matrix,
        warp_cell_mm=float(rng.uniform(25.0, 40.0)),
        warp_mm=float(rng.uniform(2.0, 4.5)),
        seed=int(rng.integers(2**31)),
        # Glioma patients are older than the template's young adults: more CSF.
        atrophy=float(rng.uniform(0.0, 0.6)),
    )


def template_to_output(placement: Placement, point: np.ndarray) -> np.ndarray:
    """A template voxel (3,) to output voxel coordinates, without warp or mass effect."""
    brats = np.linalg.solve(placement.matrix, point - _TEMPLATE_CENTER) + _BRATS_CENTER
    return brats / placement.to_brats


@dataclass(frozen=True)
class MassEffect:
    """A tumor of equivalent radius `radius_mm` pushing the tissue around `center` aside.

    Tissue at distance r_src from the centre moves to r = (r_src^3 + R^3)^(1/3): the volume a
    sphere of radius R takes, displaced outward, fading over `reach_mm` beyond R so that far
    tissue stays where it is.
    """

    center: np.ndarray  # output voxels
    radius_mm: float
    reach_mm: float


@dataclass(frozen=True)
class Anatomy:
    """Healthy tissue fractions in the output grid (float32 (X, Y, Z), 0 outside the brain)."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray
    brain: np.ndarray  # float32 brain fraction (partial volume at the surface)
    depth_mm: np.ndarray  # below the brain surface, for dura and vessels
    hindbrain: np.ndarray  # cerebellum and brainstem fraction, for their own contrast


def _output_box(placement: Placement, shape: tuple[int, int, int]) -> tuple[slice, ...]:
    """The part of the output grid the template's brain can reach (its box, plus the warp)."""
    template = load_template()
    nonzero = np.argwhere(template.brain > 0)
    lo, hi = nonzero.min(0), nonzero.max(0)
    ends = (lo, hi)
    corners = [
        np.array([ends[b][k] for k, b in enumerate(bits)], np.float64)
        for bits in np.ndindex(2, 2, 2)
    ]
    mapped = np.array([template_to_output(placement, corner) for corner in corners])
    pad = (placement.warp_mm * 3 + 6) / placement.to_brats
    start = np.maximum(np.floor(mapped.min(0) - pad), 0).astype(int)
    stop = np.minimum(np.ceil(mapped.max(0) + pad) + 1, shape).astype(int)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def resample_anatomy(
    placement: Placement, shape: Sequence[int], mass_effect: MassEffect | None = None
) -> Anatomy:
    """The template's tissue maps in the output grid, warped and pushed aside by the tumor."""
    shape = tuple(int(size) for size in shape)
    template = load_template()
    box = _output_box(placement, shape)
    box_shape = tuple(s.stop - s.start for s in box)
    grids = np.meshgrid(
        *[np.arange(s.start, s.stop, dtype=np.float32) for s in box], indexing="ij", sparse=True
    )
    # Output voxels in BraTS millimetres.
    brats = [g * np.float32(f) for g, f in zip(grids, placement.to_brats, strict=True)]
    brats = [np.broadcast_to(b, box_shape).astype(np.float32) for b in brats]

    if mass_effect is not None:
        _push_aside(brats, mass_effect, placement.to_brats)

    warp_rng = np.random.default_rng(placement.seed)
    cell = placement.warp_cell_mm / float(placement.to_brats.mean())
    for b in brats:  # smooth random warp: unit-variance fields scaled to millimetres
        field = smooth_noise(warp_rng, box_shape, cell)
        field *= np.float32(placement.warp_mm)
        b += field

    matrix = placement.matrix.astype(np.float32)
    offset = (_TEMPLATE_CENTER - placement.matrix @ _BRATS_CENTER).astype(np.float32)
    coordinates = np.empty((3, *box_shape), np.float32)
    for row in range(3):
        coordinates[row] = offset[row]
        for col in range(3):
            if matrix[row, col] != 0.0:
                coordinates[row] += matrix[row, col] * brats[col]
    del brats

    brain = np.zeros(shape, np.float32)
    brain[box] = ndimage.map_coordinates(template.brain, coordinates, order=1, mode="constant")
    inside = brain >= 0.5
    # The other maps are sampled at brain voxels only: a third of the box, a third of the time.
    where = inside[box]
    points = coordinates[:, where]
    del coordinates
    maps = {}
    for name in ("gm", "wm", "ventricles", "brain_depth", "hindbrain"):
        values = np.zeros(shape, np.float32)
        values[box][where] = ndimage.map_coordinates(
            getattr(template, name), points, order=1, mode="constant"
        )
        maps[name] = values
    # Inside the brain the fractions sum to 1: CSF is what grey and white matter leave.
    tissue = maps["gm"] + maps["wm"]
    np.maximum(tissue, 1.0, out=tissue)
    maps["gm"] /= tissue
    maps["wm"] /= tissue
    csf = 1.0 - maps["gm"] - maps["wm"]
    csf[~inside] = 0.0
    np.clip(csf, 0.0, 1.0, out=csf)
    if placement.atrophy > 0:
        # Atrophy widens the CSF spaces where there is CSF: partial voxels become more CSF.
        wider = csf ** np.float32(1.0 - placement.atrophy)
        kept = (1.0 - wider) / np.maximum(1.0 - csf, 1e-6)
        maps["gm"] *= kept
        maps["wm"] *= kept
        maps["ventricles"] *= wider / np.maximum(csf, 1e-6)
        csf = wider
    np.minimum(maps["ventricles"], csf, out=maps["ventricles"])
    brain[~inside] = 0.0
    # Template millimetres are about the case's: the scaling is within 15%.
    depth_mm = maps.pop("brain_depth")
    return Anatomy(brain=brain, csf=csf, depth_mm=depth_mm, **maps)


def _push_aside(brats: list[np.ndarray], mass_effect: MassEffect, to_brats: np.ndarray) -> None:
    """Replace output positions (BraTS mm, in place) by the positions their tissue came from."""
    center = mass_effect.center * to_brats
    offset = [b - np.float32(c) for b, c in zip(brats, center, strict=True)]
    radius = np.sqrt(offset[0] ** 2 + offset[1] ** 2 + offset[2] ** 2)
    cube = np.float32(mass_effect.radius_mm) ** 3
    source = np.cbrt(np.maximum(radius**3 - cube, 0.0))
    beyond = np.maximum(radius - cube ** np.float32(1 / 3), 0.0)
    fade = np.exp(-((beyond / np.float32(mass_effect.reach_mm)) ** 2))
    # Far away the shift fades to nothing; near the tumor it is the full displacement.
    source = radius - (radius - source) * fade
    ratio = source / np.maximum(radius, 1e-3)
    for b, o, c in zip(brats, offset, center, strict=True):
        b[...] = np.float32(c) + o * ratio


def draw_seed(rng: np.random.Generator, placement: Placement, margin_mm: float = 4.0) -> np.ndarray:
    """A tumor seed deep in white matter: output voxel coordinates (3,)."""
    template = load_template()
    eligible = np.flatnonzero(
        (template.wm_depth.reshape(-1) > margin_mm)
        & (template.brain_depth.reshape(-1) > _SEED_DEPTH_MM)
    )
    # Keep the seed off the central strip, where the corpus callosum would join both sides.
    for _ in range(50):
        voxel = np.array(np.unravel_index(rng.choice(eligible), template.wm.shape), np.float64)
        if abs(voxel[0] - _TEMPLATE_CENTER[0]) > 12:
            break
    return template_to_output(placement, voxel)
