"""The ellipsoid phantom: a skull-stripped brain with a glioma-like tumor, drawn in a second.

The phantom is built from smooth random fields (sums of Gaussian bumps on a coarse lattice, which
are cheap to evaluate separably), so a full 240 x 240 x 155 case takes a second or two on one core.
Arrays are in NIfTI voxel order (X, Y, Z); labels use the BraTS 2020 values 0, 1, 2, 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cascade.data.cases import MODALITIES
from cascade.data.labels import SCHEMES
from cascade.synthesis.fields import BRATS_SHAPE, smooth_noise

MIN_SIZE = 24  # smaller volumes leave no room for cortex, ventricles and a tumor
NON_ENHANCING_PROBABILITY = 0.15  # share of cases drawn without enhancing tumor

# Mean brain radii (mm) of a BraTS case; every length below is scaled by the phantom's size.
_REFERENCE_RADIUS_MM = 74.0

# Typical intensities per modality, in the units of skull-stripped BraTS int16 volumes.
# Tissues: CSF, grey matter, white matter; tumor: edema, necrosis, enhancing rim,
# non-enhancing core (used when a case has no enhancing tumor).
_INTENSITY = {
    #         csf  gm   wm   edema necrosis enhancing non_enhancing
    "t1": (90, 215, 300, 235, 140, 240, 175),
    "t1ce": (130, 265, 335, 295, 165, 640, 245),
    "t2": (950, 420, 290, 620, 880, 520, 680),
    "flair": (55, 235, 190, 345, 250, 305, 330),
}
_TISSUES = ("csf", "gm", "wm", "edema", "necrosis", "enhancing", "non_enhancing")


@dataclass(frozen=True)
class Phantom:
    """One synthetic case with the anatomy it was drawn from.

    images: modality -> int16 (X, Y, Z), exactly 0 outside the brain; label: uint8 (X, Y, Z) in
    BraTS 2020 values; tissue: uint8 (X, Y, Z) healthy tissue, 0 outside, 1 CSF, 2 GM, 3 WM.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    tissue: np.ndarray


def generate_case(
    shape: Sequence[int] = BRATS_SHAPE, seed: int = 0, with_enhancing: bool | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Draw one case: modality -> int16 (X, Y, Z) volume, and uint8 BraTS 2020 labels (X, Y, Z).

    with_enhancing=None draws it (about 15% of cases have no enhancing tumor).
    """
    phantom = generate_phantom(shape, seed, with_enhancing)
    return phantom.images, phantom.label


def generate_phantom(
    shape: Sequence[int] = BRATS_SHAPE, seed: int = 0, with_enhancing: bool | None = None
) -> Phantom:
    """Draw one case together with its healthy tissue map (see `Phantom`)."""
    shape = tuple(int(size) for size in shape)
    if len(shape) != 3 or min(shape) < MIN_SIZE:
        raise ValueError(f"synthetic shape must be 3 sizes of at least {MIN_SIZE}, got {shape}")
    rng = np.random.default_rng(seed)
    if with_enhancing is None:
        with_enhancing = bool(rng.random() >= NON_ENHANCING_PROBABILITY)

    brain = _draw_brain(shape, rng)
    tissues = _draw_tissues(brain, rng)
    tumor = _draw_tumor(brain, tissues, rng, with_enhancing)
    images = _render(brain, tissues, tumor, rng, with_enhancing)

    classes = np.zeros(brain.size, np.uint8)
    classes[tumor.near] = tumor.classes
    label = np.zeros(shape, np.uint8)
    label.reshape(-1)[brain.volume_index] = SCHEMES["brats2020"].from_classes(classes)
    tissue = np.zeros(shape, np.uint8)
    tissue.reshape(-1)[brain.volume_index] = tissues.dominant()
    return Phantom(images=images, label=label, tissue=tissue)


def _ramp(value: np.ndarray, width: float) -> np.ndarray:
    """Soft step from 0 (value <= -width/2) to 1 (value >= width/2): partial-volume edges."""
    out = value / width
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


# --- anatomy ---------------------------------------------------------------------------------


@dataclass
class _Brain:
    """The brain's voxels as flat arrays (one entry per voxel), and the box that holds them."""

    shape: tuple[int, int, int]  # whole volume
    radii: np.ndarray  # voxels, along X, Y, Z
    box: tuple[int, int, int]  # bounding box of the brain ...
    box_index: np.ndarray  # ... and each brain voxel's flat index in it
    volume_index: np.ndarray  # flat index in the whole volume
    voxel: tuple[np.ndarray, np.ndarray, np.ndarray]  # integer box coordinates
    normalized: tuple[np.ndarray, np.ndarray, np.ndarray]  # offset from the centre / radii
    depth: np.ndarray  # mm (scaled) below the brain surface

    @property
    def scale(self) -> float:
        """Phantom size relative to a real brain: converts anatomical mm to voxels."""
        return float(self.radii.mean() / _REFERENCE_RADIUS_MM)

    @property
    def size(self) -> int:
        return int(self.box_index.size)

    def field(self, rng: np.random.Generator, cell: float) -> np.ndarray:
        """A `smooth_noise` field sampled at the brain voxels."""
        return smooth_noise(rng, self.box, cell).reshape(-1)[self.box_index]


def _draw_brain(shape: tuple[int, int, int], rng: np.random.Generator) -> _Brain:
    """An ellipsoid, a little wider at the back, with its surface dented by a smooth field."""
    size = np.asarray(shape, np.float64)
    # A BraTS brain spans about 145 x 170 x 130 voxels, centred a little forward and down.
    radii = size * np.array([0.30, 0.355, 0.42]) * rng.uniform(0.92, 1.05, 3)
    center = size * (np.array([0.49, 0.54, 0.47]) + rng.uniform(-0.015, 0.015, 3))
    lo = np.maximum(np.floor(center - 1.12 * radii), 0).astype(int)
    hi = np.minimum(np.ceil(center + 1.12 * radii) + 1, size).astype(int)
    box = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    axes = [
        ((np.arange(a, b) - c) / r).astype(np.float32)
        for a, b, c, r in zip(lo, hi, center, radii, strict=True)
    ]
    u0, u1, u2 = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]

    radial = (u0 / (1.0 - 0.07 * u1)) ** 2 + u1**2 + u2**2
    np.sqrt(radial, out=radial)
    outline = smooth_noise(rng, box, 30 * radii.mean() / _REFERENCE_RADIUS_MM)
    outline *= 0.035
    radial += outline
    box_index = np.flatnonzero(radial < 1.0)
    voxel = np.unravel_index(box_index, box)
    volume_index = np.ravel_multi_index(tuple(v + a for v, a in zip(voxel, lo, strict=True)), shape)
    normalized = tuple(axis[v] for axis, v in zip(axes, voxel, strict=True))
    depth = (1.0 - radial.reshape(-1)[box_index]) * np.float32(radii.mean())
    return _Brain(shape, radii, box, box_index, volume_index, voxel, normalized, depth)


@dataclass
class _Tissues:
    """Healthy tissue fractions per brain voxel (float32, they sum to 1)."""

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray

    def dominant(self) -> np.ndarray:
        """1 CSF, 2 GM, 3 WM: the largest fraction of each voxel."""
        tissue = np.ones(self.csf.shape, np.uint8)
        tissue[(self.gm > self.csf) & (self.gm >= self.wm)] = 2
        tissue[(self.wm > self.csf) & (self.wm > self.gm)] = 3
        return tissue


def _surface_fields(
    brain: _Brain, rng: np.random.Generator, cells: Sequence[float]
) -> list[np.ndarray]:
    """Smooth noise fields per brain voxel that vary along the surface but not with depth.

    Sampled at each voxel's radial projection onto the brain's unit sphere, so their level sets
    are sheets running inward, like sulci. `cells` are in voxels along the surface.
    """
    # Nearest lattice point on a grid about as fine as the voxels: no visible steps.
    grid = int(np.clip(2.1 * brain.radii.max(), 16, 192))
    extent = 1.05  # the lattice spans [-extent, extent] in normalized units
    spacing = 2.0 * extent / (grid - 1) * float(brain.radii.mean())
    u0, u1, u2 = brain.normalized
    radius = np.sqrt(u0**2 + u1**2 + u2**2)
    # Partly radial: sampling a little deeper with depth bends and branches the sheets.
    to_grid = (1.0 - 0.4 * (1.0 - radius)) * ((grid - 1) / (2.0 * extent))
    to_grid /= np.maximum(radius, 1e-3)
    index = np.zeros(brain.size, np.intp)
    for u in brain.normalized:
        index *= grid
        index += np.rint(u * to_grid + (grid - 1) / 2.0).astype(np.intp)
    return [
        smooth_noise(rng, (grid, grid, grid), cell / spacing).reshape(-1)[index] for cell in cells
    ]


def _draw_tissues(brain: _Brain, rng: np.random.Generator) -> _Tissues:
    """Cortex with sulci, interhemispheric fissure, deep grey matter and lateral ventricles."""
    s = brain.scale
    u0, u1, u2 = brain.normalized

    # Sulci: sheets running inward from the surface along the zero set of a surface field.
    # Zero crossings of this field are about 3.3 cells apart and its gradient is about 1 / cell,
    # so sulci come every ~13 mm with |field| * cell approximating the distance to the nearest.
    gyri_cell = 4.5 * s
    gyri, cortex_depth = _surface_fields(brain, rng, [gyri_cell, 12.0 * s])
    to_sulcus = np.abs(gyri) * (0.75 * gyri_cell)
    cortex_depth *= 0.35
    cortex_depth += 1.0
    cortex_depth *= 13.0 * s
    to_sulcus += 3.0 * np.maximum(brain.depth - cortex_depth, 0.0)

    # Interhemispheric fissure, interrupted where the corpus callosum joins the hemispheres.
    wobble = smooth_noise(rng, (1, brain.box[1], brain.box[2]), 25 * s)[0]
    midline = np.abs(u0 * np.float32(brain.radii[0]) - (1.5 * s) * wobble[brain.voxel[1:]])
    central = (u1 / 0.5) ** 2 + ((u2 + 0.05) / 0.35) ** 2
    midline += np.maximum(1.0 - central, 0.0) * (40.0 * s)

    to_csf = np.minimum(np.minimum(brain.depth, to_sulcus), midline)
    csf = _ramp(0.7 * s - to_csf, max(0.8 * s, 0.5))
    gm_thickness = np.maximum(4.0 * s * (1.0 + 0.15 * gyri), 0.6)
    wm = _ramp(to_csf - gm_thickness, max(1.2 * s, 0.6))

    # Deep structures only exist near the centre: evaluate them on those voxels alone.
    deep = np.flatnonzero((np.abs(u0) < 0.45) & (np.abs(u1) < 0.6) & (np.abs(u2 - 0.1) < 0.4))
    v0, v1, v2 = u0[deep], u1[deep], u2[deep]
    nuclei = np.zeros(deep.size, np.float32)
    # thalami (medial, behind) and lentiform nuclei (lateral), in normalized units
    for center, radii in [
        ((0.1, -0.12, 0.0), (0.09, 0.15, 0.11)),
        ((-0.1, -0.12, 0.0), (0.09, 0.15, 0.11)),
        ((0.27, 0.08, 0.02), (0.07, 0.17, 0.12)),
        ((-0.27, 0.08, 0.02), (0.07, 0.17, 0.12)),
    ]:
        radii = np.asarray(radii) * rng.uniform(0.85, 1.15)
        radial = np.sqrt(
            ((v0 - center[0]) / radii[0]) ** 2
            + ((v1 - center[1]) / radii[1]) ** 2
            + ((v2 - center[2]) / radii[2]) ** 2
        )
        edge = 2.0 * s / (radii.mean() * brain.radii.mean())  # about 2 mm of partial volume
        np.maximum(nuclei, _ramp(1.0 - radial, edge), out=nuclei)
    wm[deep] *= 1.0 - 0.6 * nuclei

    # Lateral ventricles: curved slabs either side of the septum, horns diverging front and back.
    width = 0.07 * rng.uniform(0.7, 1.4)  # ventricles widen with age
    lateral = (np.abs(v0) - (0.025 + width + 0.45 * v1**2)) / width
    radial = np.sqrt(lateral**2 + (v1 / 0.45) ** 2 + ((v2 - 0.14) / 0.2) ** 2)
    radial += 0.12 * brain.field(rng, 12 * s)[deep]
    ventricles = _ramp((1.0 - radial) * 3.0, 1.0)
    keep = 1.0 - ventricles
    csf[deep] = csf[deep] * keep + ventricles
    wm[deep] *= keep
    gm = np.clip(1.0 - csf - wm, 0.0, 1.0)
    return _Tissues(csf=csf, gm=gm, wm=wm)


# --- tumor -----------------------------------------------------------------------------------


@dataclass
class _Tumor:
    """Tumor on the brain voxels `near` (indices into the brain's flat arrays)."""

    near: np.ndarray
    classes: np.ndarray  # uint8 per near voxel: 0, 1 necrosis / non-enhancing, 2 edema, 3 enhancing
    core: np.ndarray  # float32 fractions per near voxel, for rendering
    necrosis: np.ndarray
    edema: np.ndarray  # edema strength, highest next to the core


def _draw_tumor(
    brain: _Brain, tissues: _Tissues, rng: np.random.Generator, with_enhancing: bool
) -> _Tumor:
    """A core (enhancing rim around necrosis) in irregular edema, somewhere in a hemisphere."""
    s = brain.scale
    for _ in range(100):
        side = rng.choice([-1.0, 1.0])
        offset = np.array(
            [side * rng.uniform(0.12, 0.5), rng.uniform(-0.55, 0.5), rng.uniform(-0.35, 0.45)]
        )
        if np.linalg.norm(offset) < 0.7:
            break
    core_radius = max(rng.uniform(7.0, 20.0) * s, 3.0)
    necrosis_radius = max(min(core_radius * rng.uniform(0.35, 0.7), core_radius - 1.5), 1.0)
    edema_radius = max(core_radius + rng.uniform(6.0, 24.0) * s, core_radius + 2.5)

    # Work on the brain voxels inside a box around the tumor.
    center = offset * brain.radii  # voxels from the brain centre
    position = [v.astype(np.float32) for v in brain.normalized]
    position = [
        p * np.float32(r) - np.float32(c)
        for p, r, c in zip(position, brain.radii, center, strict=True)
    ]
    reach = np.float32(1.9 * edema_radius + 2.0)
    near = np.flatnonzero(
        (np.abs(position[0]) <= reach)
        & (np.abs(position[1]) <= reach)
        & (np.abs(position[2]) <= reach)
    )
    d0, d1, d2 = (p[near] for p in position)
    local = [brain.voxel[k][near] for k in range(3)]
    lo = [int(v.min()) for v in local]
    local_shape = tuple(int(v.max()) - a + 1 for v, a in zip(local, lo, strict=True))
    local_index = np.ravel_multi_index(
        tuple(v - a for v, a in zip(local, lo, strict=True)), local_shape
    )

    def field(cell: float) -> np.ndarray:
        return smooth_noise(rng, local_shape, cell).reshape(-1)[local_index]

    def blob(shift: np.ndarray, radius: float, roughness: float, cell: float) -> np.ndarray:
        """Distance to a smoothly deformed sphere in units of its radius (< 1 inside)."""
        warp = np.clip(1.0 + roughness * field(cell), 0.4, 1.6)
        distance = np.sqrt((d0 - shift[0]) ** 2 + (d1 - shift[1]) ** 2 + (d2 - shift[2]) ** 2)
        return distance / (np.float32(radius) * warp)

    no_shift = np.zeros(3, np.float32)
    core_rho = blob(no_shift, core_radius, 0.22, max(0.8 * core_radius, 2.0))
    for _ in range(rng.integers(0, 3)):  # lobulation: satellite blobs merged into the core
        direction = rng.standard_normal(3)
        shift = direction / np.linalg.norm(direction) * core_radius * rng.uniform(0.5, 0.9)
        radius = core_radius * rng.uniform(0.4, 0.7)
        np.minimum(core_rho, blob(shift, radius, 0.2, max(radius, 2.0)), out=core_rho)
    necrosis_rho = blob(no_shift, necrosis_radius, 0.25, max(0.8 * necrosis_radius, 2.0))
    # Edema spreads further along white matter, which gives it its finger-like outline.
    edema_rho = blob(no_shift, edema_radius, 0.28, max(8.0 * s, 2.5))
    edema_rho /= 0.8 + 0.35 * tissues.wm[near]

    core = _ramp((1.0 - core_rho) * np.float32(core_radius), 1.0)
    necrosis = _ramp((1.0 - necrosis_rho) * np.float32(necrosis_radius), 1.0) * core
    edema_fraction = _ramp((1.0 - edema_rho) * np.float32(edema_radius), 1.5)
    edema = edema_fraction * np.clip(1.25 - 0.55 * edema_rho, 0.45, 1.0)

    in_core = core >= 0.5
    classes = np.where(edema_fraction >= 0.5, 2, 0).astype(np.uint8)
    if with_enhancing:
        enhancing = in_core & (necrosis < 0.5)
        if not enhancing.any():  # a tiny core: its outer layer is the rim
            dense = np.zeros(local_shape, bool)
            dense.reshape(-1)[local_index[in_core]] = True
            inner = ndimage.binary_erosion(dense).reshape(-1)[local_index]
            enhancing = in_core & ~inner
        classes[enhancing] = 3
        classes[in_core & ~enhancing] = 1
        if not (classes == 1).any():
            classes[np.argmin(core_rho)] = 1
    else:
        classes[in_core] = 1
    return _Tumor(near=near, classes=classes, core=core, necrosis=necrosis, edema=edema)


# --- rendering -------------------------------------------------------------------------------


def _render(
    brain: _Brain,
    tissues: _Tissues,
    tumor: _Tumor,
    rng: np.random.Generator,
    with_enhancing: bool,
) -> dict[str, np.ndarray]:
    """Mix tissue intensities per modality, then texture, bias field and Rician noise."""
    s = brain.scale
    texture = brain.field(rng, max(3.0 * s, 1.5))  # shared: it is anatomy, not noise
    tumor_texture = texture[tumor.near]
    texture *= 0.03
    texture += 1.0

    images = {}
    for modality in MODALITIES:
        gain = float(np.exp(rng.normal(0.0, 0.15)))  # scanner-dependent
        jitter = rng.uniform(0.93, 1.07, len(_TISSUES))
        means = {
            k: float(v * j) for k, v, j in zip(_TISSUES, _INTENSITY[modality], jitter, strict=True)
        }
        values = tissues.csf * means["csf"]
        values += tissues.gm * means["gm"]
        values += tissues.wm * means["wm"]
        values *= texture

        region = values[tumor.near]
        region += tumor.edema * (means["edema"] * (1.0 + 0.06 * tumor_texture) - region)
        if with_enhancing:
            core_value = means["enhancing"] * (1.0 + 0.15 * tumor_texture)
            core_value += tumor.necrosis * (means["necrosis"] - core_value)
        else:
            core_value = means["non_enhancing"] * (1.0 + 0.1 * tumor_texture)
        region += tumor.core * (core_value - region)
        values[tumor.near] = region

        bias = brain.field(rng, 60 * s)
        bias *= 0.12
        values *= np.exp(bias, out=bias)
        values *= gain
        sigma = 0.025 * means["wm"] * gain
        values += sigma * rng.standard_normal(values.size, dtype=np.float32)
        imaginary = rng.standard_normal(values.size, dtype=np.float32)
        imaginary *= sigma
        values = np.hypot(values, imaginary, out=values)
        # Brain voxels stay nonzero so the brain mask is recoverable from any modality.
        values = np.clip(np.rint(values, out=values), 1, np.iinfo(np.int16).max, out=values)

        image = np.zeros(brain.shape, np.int16)
        image.reshape(-1)[brain.volume_index] = values
        images[modality] = image
    return images
