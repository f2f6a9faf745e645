"""Random damage to a Stage-1 prior so Stage 2 learns not to trust it blindly.

On training cases Stage 1 has seen the labels, so its cached priors are better than the ones
Stage 2 will get at inference. Perturbing them (morphology, dropped tumor components, noise) is
the cheap remedy used by nnU-Net's cascade; out-of-fold priors (Stage 1 trained in k folds,
each case predicted by a model that never saw it) are the costlier alternative, not done here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchio as tio
from scipy import ndimage

from cascade.data.labels import NUM_CLASSES


class PriorPerturbation(tio.Transform):
    """Perturb the (4, X, Y, Z) class probabilities of the image `prior_name` of a subject.

    Within the prior's tumor bounding box (plus a margin, so the work stays small):
    each nested region (WT, TC, ET of the argmax) is dilated, eroded or kept (equal odds) by
    1..max_radius voxels; each whole-tumor connected component is dropped with
    `drop_probability`; the prior is blended towards the one-hot of the result with a weight drawn
    from `blend` (low, high); then multiplied by log-normal noise of `noise_std` (0: none) and
    renormalised. The output is again non-negative and sums to 1 per voxel.
    Use tio's `p` for the chance that a subject is perturbed at all; pass copy=False inside a
    pipeline that already owns the subject.
    """

    def __init__(
        self,
        max_radius: int,
        drop_probability: float,
        blend: Sequence[float],
        noise_std: float,
        prior_name: str = "prior",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        low, high = (float(value) for value in blend)
        if max_radius < 0 or not 0 <= drop_probability <= 1 or not 0 <= low <= high <= 1:
            raise ValueError(
                "PriorPerturbation: need max_radius >= 0, drop_probability in [0, 1] and "
                f"0 <= blend[0] <= blend[1] <= 1, got {max_radius}, {drop_probability}, {blend}"
            )
        if noise_std < 0:
            raise ValueError(f"PriorPerturbation: noise_std must be >= 0, got {noise_std}")
        self.max_radius = int(max_radius)
        self.drop_probability = float(drop_probability)
        self.blend = (low, high)
        self.noise_std = float(noise_std)
        self.prior_name = prior_name
        self.args_names = ["max_radius", "drop_probability", "blend", "noise_std", "prior_name"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        image = subject[self.prior_name]
        prior = image.data
        if prior.shape[0] != NUM_CLASSES:
            raise ValueError(
                f"PriorPerturbation: {self.prior_name!r} has {prior.shape[0]} channels, "
                f"expected {NUM_CLASSES} class probabilities"
            )
        image.set_data(perturb_prior(prior, self._parameters()))
        return subject

    def _parameters(self) -> dict:
        """Random draws for one subject (torch RNG: seeded per DataLoader worker)."""
        low, high = self.blend
        operations = []
        for _ in range(3):  # WT, TC, ET: erode (-1), keep (0) or dilate (+1) by 1..max_radius
            direction = int(torch.randint(-1, 2, ())) if self.max_radius > 0 else 0
            operations.append(direction * int(torch.randint(1, max(2, self.max_radius + 1), ())))
        return {
            "operations": operations,
            "drop_probability": self.drop_probability,
            "blend": low + (high - low) * float(torch.rand(())),
            "noise_std": self.noise_std,
        }


def perturb_prior(prior: torch.Tensor, parameters: dict) -> torch.Tensor:
    """Apply one draw of PriorPerturbation to (4, X, Y, Z) probabilities; returns the result,
    written into `prior` itself when it is float32 (the transform owns its copy).

    parameters: "operations" = signed radii for WT, TC, ET (+r dilate, -r erode, 0 keep),
    "drop_probability", "blend" (weight of the perturbed one-hot), "noise_std".
    """
    prior = prior.float()
    # only the tumor's box (plus margin) changes; find it elementwise on the whole input
    tumor = torch.maximum(torch.maximum(prior[1], prior[2]), prior[3]) > prior[0]
    if not tumor.any():
        return prior  # nothing to perturb: a tumor-free prior stays as it is
    margin = max(0, *(abs(radius) for radius in parameters["operations"])) + 1
    box = (slice(None), *_bounding_box(tumor.numpy(), margin))
    # a contiguous copy: elementwise work on it runs several times faster than on the view
    region = prior[box].contiguous()
    crop = _argmax_classes(region.numpy())

    # nested regions WT >= TC >= ET of the internal classes 1 necrosis, 2 edema, 3 enhancing
    regions = [crop > 0, (crop == 1) | (crop == 3), crop == 3]
    for index, radius in enumerate(parameters["operations"]):
        if radius != 0:
            regions[index] = _cross_morphology(regions[index], abs(radius), grow=radius > 0)
    whole, core, enhancing = regions
    if parameters["drop_probability"] > 0:
        components, count = ndimage.label(whole)
        dropped = np.flatnonzero(torch.rand(count).numpy() < parameters["drop_probability"]) + 1
        if dropped.size:
            whole = whole & ~np.isin(components, dropped)
    core &= whole
    enhancing &= core
    perturbed = np.zeros_like(crop)
    perturbed[whole] = 2
    perturbed[core] = 1
    perturbed[enhancing] = 3

    # blend towards the one-hot of `perturbed`, in place, without an int64 one-hot tensor
    weight = float(parameters["blend"])
    region.mul_(1 - weight)
    perturbed = torch.from_numpy(perturbed)
    for label_class in range(NUM_CLASSES):
        region[label_class].add_(perturbed == label_class, alpha=weight)
    if parameters["noise_std"] > 0:
        region.mul_(torch.randn_like(region).mul_(parameters["noise_std"]).exp_())
    region.div_(region.sum(0, keepdim=True).clamp_min_(1e-12))
    prior[box] = region
    return prior


def _argmax_classes(probabilities: np.ndarray) -> np.ndarray:
    """uint8 argmax over the channel axis of (C, X, Y, Z), the first channel on ties: elementwise
    passes, where torch's argmax over a leading axis is a slow strided reduction."""
    best = probabilities[0].copy()
    classes = np.zeros(best.shape, dtype=np.uint8)
    for label_class in range(1, probabilities.shape[0]):
        np.putmask(classes, probabilities[label_class] > best, label_class)
        np.maximum(best, probabilities[label_class], out=best)
    return classes


def _cross_morphology(mask: np.ndarray, iterations: int, grow: bool) -> np.ndarray:
    """Binary dilation (grow) or erosion of a 3D mask by `iterations` steps of the 6-connected
    cross, outside counting as background, exactly as ndimage.binary_dilation/_erosion with
    that structure; shifted copies make it about ten times faster on a 96^3 patch."""
    combine = np.logical_or if grow else np.logical_and
    result = mask.copy()
    for _ in range(iterations):
        previous = result.copy()
        for axis in range(3):
            head = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
            tail = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
            combine(result[head], previous[tail], out=result[head])
            combine(result[tail], previous[head], out=result[tail])
            if not grow:  # a voxel on the array's edge has a background neighbour outside
                for edge in (0, -1):
                    result[tuple(edge if a == axis else slice(None) for a in range(3))] = False
    return result


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Slices of the bounding box of a non-empty 3D mask grown by `margin`, clipped."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        start = max(0, int(present[0]) - margin)
        stop = min(mask.shape[axis], int(present[-1]) + 1 + margin)
        box.append(slice(start, stop))
    return tuple(box)  # type: ignore[return-value]
