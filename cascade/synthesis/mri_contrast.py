"""MRI sequences of generated cases: tissue fractions to T1, T1ce, T2 and FLAIR intensities.

Each voxel mixes the means of the tissues it holds (partial volume from the probability maps).
The means are drawn per case and sequence, relative to white matter, from ranges that keep the
orderings of real scans (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: dark CSF, bright edema;
T1ce: an enhancing rim, vessels and dura brighter than white matter): domain randomisation in the
manner of SynthSeg, bounded so the contrasts stay MRI-like. Healthy look-alikes of tumor
(`cascade.synthesis.mimics`) are drawn into the healthy tissue before the tumor, and the
cerebellum and brainstem get a brightness of their own. Then a bias field, a blur that may be
thicker across slices (many BraTS scans were acquired in thick slices), Rician noise and, when
asked for (`ScanVariation`), faint bright patches of healthy tissue, a lower contrast and
acquisition in thick axial slices resampled to the grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cascade.data.cases import MODALITIES
from cascade.synthesis.anatomy import Anatomy
from cascade.synthesis.fields import smooth_noise
from cascade.synthesis.mimics import draw_mimic_means, faint_hyperintensity, mimic_fractions
from cascade.synthesis.variation import NO_VARIATION, ScanVariation

# Mean intensity ranges relative to white matter (= 1).
# csf, gm, edema, necrosis, enhancing, non-enhancing core, vessels and dura
_TISSUES = ("csf", "gm", "edema", "necrosis", "enhancing", "non_enhancing", "vessel")
# fmt: off
_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    #          csf           gm            edema         necrosis      enhancing     non-enh.      vessel  # noqa: E501
    "t1":    ((0.20, 0.40), (0.70, 0.85), (0.68, 0.85), (0.35, 0.60), (0.65, 0.85), (0.55, 0.75), (0.85, 1.05)),  # noqa: E501
    "t1ce":  ((0.20, 0.45), (0.85, 1.00), (0.70, 0.90), (0.35, 0.60), (1.35, 2.00), (0.60, 0.80), (1.25, 1.90)),  # noqa: E501
    "t2":    ((2.50, 4.00), (1.15, 1.50), (1.60, 2.40), (2.00, 3.20), (1.40, 2.00), (1.70, 2.40), (0.50, 0.90)),  # noqa: E501
    "flair": ((0.12, 0.35), (1.05, 1.45), (1.50, 2.20), (0.80, 1.70), (1.30, 1.90), (1.40, 2.00), (0.80, 1.20)),  # noqa: E501
}
# fmt: on
# Log-intensity gain of the cerebellum and brainstem against the cerebrum: on real FLAIR and T2
# the posterior fossa is often much brighter (coil sensitivity, the cerebellar cortex's density).
_HINDBRAIN_LOG_GAIN = {
    "t1": (-0.15, 0.15),
    "t1ce": (-0.15, 0.2),
    "t2": (-0.1, 0.35),
    "flair": (-0.1, 0.45),
}
# Largest log-intensity change of the bias gradient from one side of the brain to the centre,
# per axis (X, Y, Z): coils lose signal fastest head to foot.
_BIAS_GRADIENT = (0.1, 0.1, 0.25)
_WHITE_MATTER = {"t1": (300, 800), "t1ce": (300, 900), "t2": (150, 500), "flair": (150, 500)}
# Slice thickness of a sequence acquired in thick axial slices (ScanVariation.thick_slices):
# clinical 2D scans registered to the 1 mm atlas. On TCGA-FG-6692 the change from voxel to voxel
# across slices is half that within them, in every sequence
# (experiments/synthetic/slice_thickness.py).
_SLICE_THICKNESS_MM = (2.5, 6.0)


def draw_means(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per sequence, each tissue's mean intensity relative to white matter."""
    return {
        modality: {t: float(rng.uniform(*r)) for t, r in zip(_TISSUES, ranges, strict=True)}
        for modality, ranges in _RANGES.items()
    }


def render_sequences(
    anatomy: Anatomy,
    label: np.ndarray,
    to_brats: np.ndarray,
    rng: np.random.Generator,
    variation: ScanVariation = NO_VARIATION,
) -> dict[str, np.ndarray]:
    """modality -> int16 (X, Y, Z), 0 outside the brain; `label` in BraTS 2020 values.

    variation: what this case may vary beyond the defaults (`ScanVariation`): thick axial
    slices, faint bright patches of healthy tissue, lower contrast. Each kind draws from its own
    child generator, so a case's other draws, and its label, do not depend on it."""
    inside = anatomy.brain >= 0.5
    box = ndimage.find_objects(inside.astype(np.uint8))[0]
    mm = float(to_brats.mean())

    def field(cell_mm: float) -> np.ndarray:
        return smooth_noise(rng, inside[box].shape, cell_mm / mm)

    texture = 1.0 + 0.03 * field(3.0)
    tumor_texture = field(4.0)
    # Tumor parts are computed around the tumor only, then placed into the brain's box.
    near = _around(label[box] > 0, margin=4)
    fractions = {
        name: _embed(part, near, inside[box].shape)
        for name, part in _tumor_fractions(label[box][near], to_brats).items()
    }
    edema_strength = _embed(
        _edema_strength(label[box][near], to_brats, field(10.0)[near], rng), near, texture.shape
    )
    vessels = _vessels(anatomy, box, field, mm)
    mimics = mimic_fractions(anatomy, box, field, rng, mm)
    means = draw_means(rng)
    mimic_means = draw_mimic_means(rng)
    hindbrain = anatomy.hindbrain[box]
    hindbrain_gain = {m: np.float32(rng.uniform(*r)) for m, r in _HINDBRAIN_LOG_GAIN.items()}

    # one child generator per kind of variation, spawned whether or not it is on
    slice_rng, faint_rng, contrast_rng = (rng.spawn(1)[0] for _ in range(3))
    faint = faint_hyperintensity(anatomy, box, faint_rng, mm, variation.faint_patches)
    faint_fraction, faint_means = faint if faint is not None else (None, None)
    contrast = {
        m: np.float32(contrast_rng.uniform(variation.contrast_floor, 1.0)) for m in MODALITIES
    }
    gm, wm, csf = anatomy.gm[box], anatomy.wm[box], anatomy.csf[box]
    images = {}
    for modality in MODALITIES:
        mean = means[modality]
        healthy = wm + gm * mean["gm"] + csf * mean["csf"]
        healthy *= texture * np.exp(hindbrain_gain[modality] * hindbrain)
        healthy += vessels * (mean["vessel"] - healthy)
        for name, fraction in mimics.items():
            if modality in mimic_means[name]:
                healthy += fraction * (mimic_means[name][modality] * texture - healthy)
        if faint_fraction is not None:
            healthy += faint_fraction * (faint_means[modality] * texture - healthy)
        tumor_free = 1.0 - fractions["edema"] - fractions["core"]
        edema = healthy + edema_strength * (mean["edema"] - healthy)
        values = tumor_free * healthy + fractions["edema"] * edema
        for part in ("necrosis", "enhancing", "non_enhancing"):
            values += fractions[part] * (mean[part] * (1.0 + 0.12 * tumor_texture))
        if contrast[modality] < 1.0:  # a lower-contrast scan: all of it nearer white matter
            values = 1.0 + contrast[modality] * (values - 1.0)
        values = _acquire(values, inside[box], rng, mm)
        if variation.thick_slices and slice_rng.random() < variation.thick_slices:
            thickness = slice_rng.uniform(*_SLICE_THICKNESS_MM) / float(to_brats[2])
            values = _thick_slices(values, inside[box], thickness, slice_rng.uniform(0, thickness))
        values *= np.float32(rng.uniform(*_WHITE_MATTER[modality]))
        values = np.clip(np.rint(values), 1, np.iinfo(np.int16).max)
        image = np.zeros(label.shape, np.int16)
        image[box] = np.where(inside[box], values, 0)
        images[modality] = image
    return images


def _around(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of `mask`, `margin` voxels wider (all of it when the mask is empty)."""
    if not mask.any():
        return tuple(slice(0, size) for size in mask.shape)
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, size))
        for b, size in zip(box, mask.shape, strict=True)
    )


def _embed(part: np.ndarray, where: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    out[where] = part
    return out


def _tumor_fractions(label: np.ndarray, to_brats: np.ndarray) -> dict[str, np.ndarray]:
    """Soft (partial-volume) fractions of edema, necrosis, enhancing and non-enhancing core."""
    enhancing_case = bool((label == 4).any())
    sigma = 0.6 / to_brats
    parts = {
        "edema": label == 2,
        "necrosis": (label == 1) if enhancing_case else np.zeros(label.shape, bool),
        "enhancing": label == 4,
        "non_enhancing": np.zeros(label.shape, bool) if enhancing_case else (label == 1),
    }
    fractions = {}
    for name, mask in parts.items():
        fractions[name] = (
            ndimage.gaussian_filter(mask.astype(np.float32), sigma)
            if mask.any()
            else np.zeros(label.shape, np.float32)
        )
    fractions["core"] = fractions["necrosis"] + fractions["enhancing"] + fractions["non_enhancing"]
    return fractions


def _edema_strength(
    label: np.ndarray, to_brats: np.ndarray, noise: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """How far edema replaces the tissue it infiltrates: fully near the core, less far out."""
    core = (label == 1) | (label == 4)
    far = float(rng.uniform(0.5, 0.85))
    if not core.any():
        return np.full(label.shape, far, np.float32)
    distance = ndimage.distance_transform_edt(~core, sampling=to_brats).astype(np.float32)
    strength = far + (1.0 - far) * np.exp(-distance / 8.0)
    strength *= 1.0 + 0.1 * noise
    return np.clip(strength, 0.0, 1.0)


def _vessels(anatomy: Anatomy, box: tuple[slice, ...], field, mm: float) -> np.ndarray:
    """Fraction of vessels and dura: patches on the surface, tubes in the sulci, choroid plexus.

    A tube is where two smooth fields both cross zero (two sheets intersect along a line).
    """
    depth, csf = anatomy.depth_mm[box], anatomy.csf[box]
    first, second = field(14.0), field(14.0)
    width = 0.12
    tubes = np.clip(1.0 - (np.abs(first) + np.abs(second)) / width, 0.0, 1.0)
    tubes *= np.clip(csf * 2.0, 0.0, 1.0) * (depth < 12.0)
    dura = np.clip(1.0 - depth / 2.0, 0.0, 1.0) * np.clip(2.0 * field(20.0) - 0.6, 0.0, 1.0)
    plexus = anatomy.ventricles[box] * np.clip(2.0 * field(6.0) - 1.2, 0.0, 1.0)
    return np.clip(tubes + dura + plexus, 0.0, 1.0)


def _acquire(
    values: np.ndarray, inside: np.ndarray, rng: np.random.Generator, mm: float
) -> np.ndarray:
    """Blur (possibly thicker across axial slices), bias field and Rician noise."""
    sigma = np.array([rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.8), rng.uniform(0.3, 1.8)]) / mm
    values = np.where(inside, values, 0.0).astype(np.float32)
    values = ndimage.gaussian_filter(values, sigma)
    weight = ndimage.gaussian_filter(inside.astype(np.float32), sigma)
    values /= np.maximum(weight, 1e-3)  # no darkening at the brain's edge
    values *= np.exp(_bias_log_field(values.shape, rng, mm))
    noise = np.float32(rng.uniform(0.01, 0.04))
    real = values + noise * rng.standard_normal(values.shape, dtype=np.float32)
    imaginary = noise * rng.standard_normal(values.shape, dtype=np.float32)
    return np.hypot(real, imaginary)


def _bias_log_field(shape: tuple[int, ...], rng: np.random.Generator, mm: float) -> np.ndarray:
    """Log of a receive-coil bias: a smooth field plus a gradient, steepest head to foot.

    Real scans lose or gain 20-40 % of their signal towards the cerebellum and the vertex; a
    network that never saw this reads a bright brainstem or vertex cortex on FLAIR as edema.
    """
    log_field = np.float32(rng.uniform(0.1, 0.35)) * smooth_noise(rng, shape, 70.0 / mm)
    for axis, steepest in enumerate(_BIAS_GRADIENT):
        ramp = np.linspace(-1.0, 1.0, shape[axis], dtype=np.float32)
        view = [1, 1, 1]
        view[axis] = shape[axis]
        log_field += np.float32(rng.uniform(-steepest, steepest)) * ramp.reshape(view)
    return log_field


def _thick_slices(
    values: np.ndarray, inside: np.ndarray, thickness: float, offset: float
) -> np.ndarray:
    """The volume as a scanner acquiring axial slices `thickness` voxels thick (a Gaussian slice
    profile of that full width at half maximum, one slice every `thickness` voxels from `offset`)
    would give after linear resampling back to the grid. Signal outside the brain is left out,
    as in `_acquire`, so the top and bottom slices do not darken."""
    depth = values.shape[2]
    centres = np.arange(offset, depth - 1, thickness)
    if len(centres) < 2:
        return values
    sigma = thickness / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    weight = inside.astype(np.float32)
    signal = _along_slices(ndimage.gaussian_filter1d(values * weight, sigma, axis=2), centres)
    weight = _along_slices(ndimage.gaussian_filter1d(weight, sigma, axis=2), centres)
    return signal / np.maximum(weight, 1e-3)


def _along_slices(volume: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """`volume` sampled at the slice centres (axis 2, linear between voxels), then linearly
    interpolated back to every voxel (constant beyond the first and last centre)."""
    slices = _interpolate_depth(volume, centres)
    position = (np.arange(volume.shape[2]) - centres[0]) / (centres[1] - centres[0])
    return _interpolate_depth(slices, np.clip(position, 0, len(centres) - 1))


def _interpolate_depth(volume: np.ndarray, positions: np.ndarray) -> np.ndarray:
    below = np.minimum(np.floor(positions).astype(int), volume.shape[2] - 1)
    above = np.minimum(below + 1, volume.shape[2] - 1)
    fraction = (positions - below).astype(np.float32)
    return volume[:, :, below] * (1 - fraction) + volume[:, :, above] * fraction
