"""Stage-1 augmentation of (4, H, W, k) slabs with TorchIO."""

from __future__ import annotations

import torchio as tio


def build_augmentation(
    flip_probability: float,
    intensity_probability: float,
    log_gamma: float,
    bias_field_coefficient: float,
) -> tio.Compose:
    """Cheap TorchIO augmentation of (4, H, W, k) slabs: in-plane flips, gamma, bias field.

    No transform copies its input (copy=False): each slab's subject is built fresh and used
    once, and the deep copy TorchIO makes before every transform took about a fifth of a
    slab's time in a profile.
    """
    transforms: list[tio.Transform] = [
        tio.RandomFlip(axes=(0, 1), flip_probability=flip_probability, copy=False)
    ]
    if log_gamma > 0:
        transforms.append(tio.RandomGamma(log_gamma=log_gamma, p=intensity_probability, copy=False))
    if bias_field_coefficient > 0:
        transforms.append(
            tio.RandomBiasField(
                coefficients=bias_field_coefficient, order=2, p=intensity_probability, copy=False
            )
        )
    return tio.Compose(transforms, copy=False)
