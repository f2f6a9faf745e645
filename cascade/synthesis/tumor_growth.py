"""Glioma-like tumors grown from a seed in white matter through the case's own anatomy.

Edema is the set of voxels reached first when travelling from the seed at a speed set by the
tissue (fast along white matter, slow in grey matter, almost stopped by CSF), so it spreads along
the tracts and stops at the cortex and the ventricles; the core grows the same way with weaker
tissue preference and lobulated by noise. Sizes are drawn first and the thresholds follow them,
so whole-tumor volumes follow BraTS (about 10-250 mL). Inside the core an enhancing rim of uneven
thickness surrounds the necrosis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric

from cascade.synthesis.anatomy import Anatomy
from cascade.synthesis.fields import smooth_noise

WHOLE_TUMOR_ML = (10.0, 250.0)
NON_ENHANCING_PROBABILITY = 0.15
NO_NECROSIS_PROBABILITY = 0.15  # of enhancing tumors: solid enhancement
TWO_FOCI_PROBABILITY = 0.12
_REACH_MM = 64.0  # half-size of the box the tumor may grow in
_GROWTH_MM = 2.0  # the travel times are computed on this grid, then interpolated


@dataclass(frozen=True)
class TumorPlan:
    """What is drawn before the anatomy is deformed: where, how big, which parts."""

    seeds: list[np.ndarray]  # output voxels; the first is the main focus
    whole_tumor_ml: float
    core_ml: float
    enhancing: bool
    necrosis: bool
    rim_mm: float  # mean enhancing-rim thickness
    mass_effect_ratio: float  # radius of the displaced sphere / the core's equivalent radius


def draw_plan(rng: np.random.Generator, seed: np.ndarray, second: np.ndarray | None) -> TumorPlan:
    """Sizes log-normal around BraTS's median (about 80 mL), wide enough for small tumors,
    clipped to its usual range."""
    whole = float(np.clip(np.exp(rng.normal(np.log(80.0), 0.75)), *WHOLE_TUMOR_ML))
    enhancing = bool(rng.random() >= NON_ENHANCING_PROBABILITY)
    necrosis = enhancing and bool(rng.random() >= NO_NECROSIS_PROBABILITY)
    seeds = [seed] if second is None or rng.random() >= TWO_FOCI_PROBABILITY else [seed, second]
    return TumorPlan(
        seeds=seeds,
        whole_tumor_ml=whole,
        core_ml=whole * float(rng.uniform(0.15, 0.6)),
        enhancing=enhancing,
        necrosis=necrosis,
        rim_mm=float(rng.uniform(1.5, 5.0)),
        mass_effect_ratio=float(rng.uniform(0.5, 1.0)),
    )


def core_radius_mm(plan: TumorPlan) -> float:
    """Radius (mm) of a sphere of the core's volume."""
    return float(np.cbrt(3.0 * plan.core_ml * 1000.0 / (4.0 * np.pi)))


@dataclass(frozen=True)
class Tumor:
    """BraTS 2020 values (uint8 (X, Y, Z): 0, 1 NCR/NET, 2 ED, 4 ET) and the box around them."""

    label: np.ndarray
    box: tuple[slice, slice, slice]


def grow_tumor(
    anatomy: Anatomy, plan: TumorPlan, to_brats: np.ndarray, rng: np.random.Generator
) -> Tumor:
    """Grow the planned tumor in `anatomy` (already pushed aside by its mass effect)."""
    shape = anatomy.brain.shape
    main = plan.seeds[0]
    half = _REACH_MM / to_brats
    start = np.maximum(np.floor(main - half), 0).astype(int)
    stop = np.minimum(np.ceil(main + half) + 1, shape).astype(int)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    step = np.maximum(np.rint(_GROWTH_MM / to_brats), 1).astype(int)
    coarse = tuple(slice(None, None, int(k)) for k in step)

    def tissue(name: str) -> np.ndarray:
        return getattr(anatomy, name)[box][coarse]

    wm, gm, csf, brain = tissue("wm"), tissue("gm"), tissue("csf"), tissue("brain")
    cell = 10.0 / float(np.mean(step * to_brats))
    outside = brain < 0.5

    def travel_times(speed: np.ndarray, roughness: float) -> np.ndarray:
        cost = np.exp(roughness * smooth_noise(rng, wm.shape, cell)) / np.maximum(speed, 1e-3)
        cost[outside] = 1e6
        times = []
        for seed in plan.seeds:
            local = np.clip(np.rint((seed - start) / step), 0, np.asarray(wm.shape) - 1)
            found, _ = MCP_Geometric(cost).find_costs([tuple(int(v) for v in local)])
            times.append(found)
        if len(times) > 1:  # the second focus is the smaller one
            times[1] = times[1] * 1.6
        return _upsample(np.minimum.reduce(times), step, tuple(s.stop - s.start for s in box))

    # Edema follows white matter; the core is more compact and lobulated.
    edema_time = travel_times(wm + 0.2 * gm + 0.02 * csf, 0.35)
    core_time = travel_times(wm + 0.6 * gm + 0.05 * csf, 0.5)
    inside = anatomy.brain[box] >= 0.5
    voxel_ml = float(np.prod(to_brats)) / 1000.0
    core = _first_reached(core_time, inside, plan.core_ml / voxel_ml)
    whole = _first_reached(edema_time, inside, plan.whole_tumor_ml / voxel_ml) | core

    label = np.zeros(whole.shape, np.uint8)
    label[whole] = 2
    if not plan.enhancing:
        label[core] = 1
    elif not plan.necrosis:
        label[core] = 4
    else:
        # Necrosis is what lies deeper than the rim, whose thickness varies around the core.
        depth = ndimage.distance_transform_edt(core, sampling=to_brats)
        rim = plan.rim_mm * np.exp(0.4 * smooth_noise(rng, core.shape, 8.0 / to_brats.mean()))
        np.maximum(rim, 1.01 * float(to_brats.max()), out=rim)  # closed: at least a voxel thick
        necrotic = core & (depth > rim)
        label[core] = 4
        label[necrotic] = 1
    full = np.zeros(shape, np.uint8)
    full[box] = label
    return Tumor(label=full, box=box)


def _upsample(coarse: np.ndarray, step: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of a coarse grid (every `step` voxels) onto `shape`."""
    axes = [
        np.arange(size, dtype=np.float32) / np.float32(k)
        for size, k in zip(shape, step, strict=True)
    ]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    coordinates = [np.broadcast_to(g, shape) for g in grid]
    return ndimage.map_coordinates(coarse, coordinates, order=1, mode="nearest")


def _first_reached(times: np.ndarray, inside: np.ndarray, voxels: float) -> np.ndarray:
    """The `voxels` brain voxels with the shortest travel times (a boolean mask)."""
    candidates = times[inside]
    count = int(np.clip(round(voxels), 1, candidates.size))
    threshold = np.partition(candidates, count - 1)[count - 1]
    return inside & (times <= threshold)
