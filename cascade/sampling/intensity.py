"""Stage-1 intensity augmentation of whole slab batches on the device: gamma and bias field.

The batch counterparts of TorchIO's RandomGamma and RandomBiasField (order 2), one draw per
slab (gamma optionally one per modality), applied with broadcasting. Background (0 after the
z-score) stays 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cascade.sampling.draws import uniforms


class SlabIntensity(nn.Module):
    """Each slab, with chance `probability` each: gamma exp(U(-log_gamma, log_gamma)) on the
    magnitudes (sign kept, as z-scored images are signed); then a smooth multiplicative field
    exp(sum_t c_t * P_t(h, w)) over the plane, P_t the monomials of degree <= 2 on [-1, 1]^2,
    c_t ~ U(-bias_field_coefficient, bias_field_coefficient).

    `gamma_groups` > 1 draws one gamma per group of contiguous channels (a modality's slices in
    a slab), so that the sequences' contrasts change against each other, as TorchIO's
    RandomGamma does per image and nnU-Net's per channel."""

    def __init__(
        self,
        probability: float,
        log_gamma: float,
        bias_field_coefficient: float,
        gamma_groups: int = 1,
    ) -> None:
        super().__init__()
        if gamma_groups < 1:
            raise ValueError(f"SlabIntensity: gamma_groups must be >= 1, got {gamma_groups}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"SlabIntensity: probability must lie in [0, 1], got {probability}")
        if log_gamma < 0 or bias_field_coefficient < 0:
            raise ValueError("SlabIntensity: log_gamma and bias_field_coefficient must be >= 0")
        self.probability = probability
        self.log_gamma = log_gamma
        self.bias_field_coefficient = bias_field_coefficient
        self.gamma_groups = gamma_groups

    def forward(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """image (B, C, H, W) float -> augmented copy."""
        batch, channels, height, width = image.shape
        groups = self.gamma_groups
        if channels % groups:
            raise ValueError(
                f"SlabIntensity: {channels} channels do not split into {groups} gamma groups"
            )
        # one group draws as many uniforms as before groups existed: seeded runs are unchanged
        draw = uniforms(9 + groups, batch, generator, image.device)
        if self.log_gamma > 0:
            gamma_draws = torch.cat([draw[:1], draw[10:]]).T  # (B, groups)
            gamma = torch.exp(self.log_gamma * (2 * gamma_draws - 1))
            gamma = gamma.repeat_interleave(channels // groups, dim=1).view(batch, channels, 1, 1)
            image = changed_rows(
                image,
                draw[1] < self.probability,
                lambda slabs, index: slabs.sign() * slabs.abs().pow(gamma[index]),
            )
        if self.bias_field_coefficient > 0:
            rows = torch.linspace(-1, 1, height, device=image.device).view(height, 1)
            columns = torch.linspace(-1, 1, width, device=image.device).view(1, width)
            monomials = torch.stack(
                [rows.expand(height, width), columns.expand(height, width),
                 rows * rows + 0 * columns, rows * columns, 0 * rows + columns * columns]
            )  # fmt: skip
            on = (draw[2] < self.probability).view(batch, 1)
            coefficients = self.bias_field_coefficient * (2 * draw[3:8].T - 1) * on
            # the constant term only rescales the slab: drawn, as TorchIO does
            constant = self.bias_field_coefficient * (2 * draw[8] - 1) * on[:, 0]
            log_field = torch.einsum("bt,thw->bhw", coefficients, monomials) + constant.view(
                -1, 1, 1
            )
            field = torch.exp(log_field)[:, None]
            image = changed_rows(image, on[:, 0], lambda slabs, index: slabs * field[index])
        return image

    def extra_repr(self) -> str:
        return (
            f"probability={self.probability}, log_gamma={self.log_gamma}, "
            f"bias_field_coefficient={self.bias_field_coefficient}, "
            f"gamma_groups={self.gamma_groups}"
        )


def changed_rows(
    image: Tensor,
    chosen: Tensor,
    change: Callable[[Tensor, Tensor | slice], Tensor],
    only_chosen: bool | None = None,
) -> Tensor:
    """A copy of `image` (B, ...) with `change(slabs, index)` in the slabs where `chosen` (B,) is
    True (`index`: their positions in the batch), the others as they are. `only_chosen` (default:
    on a CPU) computes the chosen slabs alone, where the change over the whole batch would take
    most of the time; on an accelerator the whole batch is changed and then selected, because
    counting the chosen slabs would make the host wait for the device."""
    if only_chosen is None:
        only_chosen = image.device.type == "cpu"
    if only_chosen:
        index = chosen.nonzero()[:, 0]
        result = image.clone()
        result[index] = change(image[index], index)
        return result
    selected = chosen.view(-1, *([1] * (image.ndim - 1)))
    return torch.where(selected, change(image, slice(None)), image)
