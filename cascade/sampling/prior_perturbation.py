"""Random damage to Stage-1 priors so Stage 2 learns not to trust them blindly.

On training cases Stage 1 has seen the labels, so its cached priors are better than the ones
Stage 2 will get at inference. Perturbing them (morphology, dropped tumor components, noise) is
the cheap remedy used by nnU-Net's cascade; out-of-fold priors (Stage 1 trained in k folds,
each case predicted by a model that never saw it) are the costlier alternative, not done here.

It runs on whole training batches once they are on the device (Stage2DataModule's
on_after_batch_transfer), like the flips: in the loader workers it cost more than reading the
patches, and on a GPU it is a few small kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from cascade.boxes import bounding_box, box_slices

# Classes 1..3 (necrosis, edema, enhancing) make up the whole tumor; BraTS 2024's resection
# cavity (class 4) is not tumor and is left as the prior has it.
_TUMOR_CLASSES = (1, 2, 3)

# connected components by label propagation are checked for convergence every few sweeps
_SWEEPS_PER_CHECK = 8


class PriorPerturbation(nn.Module):
    """Perturb a batch of class probabilities (B, 4, X, Y, Z); each sample with chance `p`.

    Within a sample's tumor bounding box (plus a margin): each nested region (WT, TC, ET of the
    argmax) is dilated, eroded or kept (equal odds) by 1..max_radius steps of the 6-connected
    cross; each whole-tumor connected component (6-connected) is dropped with
    `drop_probability`; the prior is blended towards the one-hot of the result with a weight
    drawn from `blend` (low, high); then multiplied by log-normal noise of `noise_std` (0: none)
    and renormalised. The output is again non-negative and sums to 1 per voxel.
    Decisions come from torch's global CPU RNG (or `generator`), the noise from the device's.
    """

    def __init__(
        self,
        p: float,
        max_radius: int,
        drop_probability: float,
        blend: Sequence[float],
        noise_std: float,
    ) -> None:
        super().__init__()
        low, high = (float(value) for value in blend)
        if not 0 <= p <= 1 or max_radius < 0 or not 0 <= drop_probability <= 1:
            raise ValueError(
                "PriorPerturbation: need p in [0, 1], max_radius >= 0 and drop_probability in "
                f"[0, 1], got {p}, {max_radius}, {drop_probability}"
            )
        if not 0 <= low <= high <= 1 or noise_std < 0:
            raise ValueError(
                "PriorPerturbation: need 0 <= blend[0] <= blend[1] <= 1 and noise_std >= 0, "
                f"got {blend}, {noise_std}"
            )
        self.p = float(p)
        self.max_radius = int(max_radius)
        self.drop_probability = float(drop_probability)
        self.blend = (low, high)
        self.noise_std = float(noise_std)

    def forward(self, prior: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A perturbed float32 copy of `prior` (B, classes, X, Y, Z), classes >= 4."""
        if prior.dim() != 5 or prior.shape[1] < 4:
            raise ValueError(
                "PriorPerturbation: expected (B, classes >= 4, X, Y, Z) probabilities, got "
                f"shape {tuple(prior.shape)}"
            )
        result = prior.float().clone()
        chosen = torch.rand(prior.shape[0], generator=generator) < self.p
        for index in chosen.nonzero().flatten().tolist():
            result[index] = perturb_prior(result[index], self.draw(generator))
        return result

    def draw(self, generator: torch.Generator | None = None) -> dict:
        """Random parameters for one sample (see perturb_prior)."""
        low, high = self.blend
        operations = []
        for _ in range(3):  # WT, TC, ET: erode (-1), keep (0) or dilate (+1) by 1..max_radius
            if self.max_radius == 0:
                operations.append(0)
                continue
            direction = int(torch.randint(-1, 2, (), generator=generator))
            radius = int(torch.randint(1, self.max_radius + 1, (), generator=generator))
            operations.append(direction * radius)
        return {
            "operations": operations,
            "drop_probability": self.drop_probability,
            "blend": low + (high - low) * float(torch.rand((), generator=generator)),
            "noise_std": self.noise_std,
            "generator": generator,
        }

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, max_radius={self.max_radius}, drop_probability={self.drop_probability}"
            f", blend={self.blend}, noise_std={self.noise_std}"
        )


def perturb_prior(prior: Tensor, parameters: dict) -> Tensor:
    """Apply one draw to float (classes, X, Y, Z) probabilities, in place; returns `prior`.

    parameters: "operations" = signed radii for WT, TC, ET (+r dilate, -r erode, 0 keep),
    "drop_probability", "blend" (weight of the perturbed one-hot), "noise_std", and optionally
    "generator" (CPU) for the component decisions.
    """
    classes = prior.argmax(0)
    tumor = (classes >= _TUMOR_CLASSES[0]) & (classes <= _TUMOR_CLASSES[-1])
    if not bool(tumor.any()):
        return prior  # nothing to perturb: a tumor-free prior stays as it is
    margin = max(0, *(abs(radius) for radius in parameters["operations"])) + 1
    box = box_slices(bounding_box(tumor, margin))
    crop = classes[box]

    # nested regions WT >= TC >= ET of the internal classes 1 necrosis, 2 edema, 3 enhancing
    regions = [(crop >= 1) & (crop <= 3), (crop == 1) | (crop == 3), crop == 3]
    for index, radius in enumerate(parameters["operations"]):
        if radius != 0:
            regions[index] = cross_morphology(regions[index], abs(radius), grow=radius > 0)
    whole, core, enhancing = regions
    if parameters["drop_probability"] > 0 and bool(whole.any()):
        components = connected_components(whole)
        ids = torch.unique(components[components > 0])
        draws = torch.rand(len(ids), generator=parameters.get("generator"))
        dropped = ids[(draws < parameters["drop_probability"]).to(ids.device)]
        if len(dropped):
            whole = whole & ~torch.isin(components, dropped)
    core = core & whole
    enhancing = enhancing & core
    perturbed = torch.where(crop > _TUMOR_CLASSES[-1], crop, torch.zeros_like(crop))
    perturbed[whole] = 2
    perturbed[core] = 1
    perturbed[enhancing] = 3

    region = prior[(slice(None), *box)]
    weight = float(parameters["blend"])
    one_hot = F.one_hot(perturbed, prior.shape[0]).movedim(-1, 0).to(region.dtype)
    region = region * (1 - weight) + weight * one_hot
    if parameters["noise_std"] > 0:
        region = region * torch.exp(torch.randn_like(region) * parameters["noise_std"])
    prior[(slice(None), *box)] = region / region.sum(0, keepdim=True).clamp_min(1e-12)
    return prior


def _cross_max(volume: Tensor, outside: float) -> Tensor:
    """Each voxel of (X, Y, Z) replaced by the maximum over itself and its six face neighbours;
    voxels beyond the edge count as `outside`."""
    padded = F.pad(volume[None, None], (1, 1, 1, 1, 1, 1), value=outside)[0, 0]
    inner = (slice(1, -1),) * 3
    result = volume.clone()
    for axis in range(3):
        for shifted in (slice(0, -2), slice(2, None)):
            window = tuple(shifted if a == axis else inner[a] for a in range(3))
            result = torch.maximum(result, padded[window])
    return result


def cross_morphology(mask: Tensor, iterations: int, grow: bool) -> Tensor:
    """Binary dilation (grow) or erosion of a bool (X, Y, Z) mask by `iterations` steps of the
    6-connected cross, outside counting as background: scipy's binary_dilation/binary_erosion
    with that structure, in tensor ops that run on any device."""
    # erosion is the dilation of the complement, whose outside is foreground
    volume = (mask if grow else ~mask).to(torch.float16 if mask.is_cuda else torch.float32)
    for _ in range(iterations):
        volume = _cross_max(volume, outside=0.0 if grow else 1.0)
    return volume > 0 if grow else volume == 0


def connected_components(mask: Tensor) -> Tensor:
    """Labels (int64, 0 = background) of the 6-connected components of a bool (X, Y, Z) mask.

    On the CPU scipy labels them; elsewhere each voxel takes the largest index in its component
    by repeated neighbour maxima (as many sweeps as the longest path inside a component),
    which stays on the device. The label values differ between the two, the partition does not.
    """
    if mask.device.type == "cpu":
        labels, _ = ndimage.label(mask.numpy())
        return torch.from_numpy(labels.astype(np.int64))
    return propagated_components(mask)


def propagated_components(mask: Tensor) -> Tensor:
    """connected_components by label propagation (any device)."""
    # float32 holds every voxel index exactly up to 2**24 voxels; float64 beyond
    dtype = torch.float32 if mask.numel() < 2**24 else torch.float64
    inside = mask.to(dtype)
    labels = torch.arange(1, mask.numel() + 1, device=mask.device, dtype=dtype).view(mask.shape)
    labels = labels * inside
    while True:
        previous = labels
        for _ in range(_SWEEPS_PER_CHECK):
            labels = _cross_max(labels, outside=0.0) * inside
        if torch.equal(labels, previous):
            return labels.long()
