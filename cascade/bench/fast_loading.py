"""Intensity scale/shift of a Stage-2 image: the TorchIO transform against one fused pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchio as tio
from torch import Tensor


def scale_shift_inside(data: Tensor, factors: Tensor, offsets: Tensor) -> Tensor:
    """data * factors + offsets on the nonzero voxels, in one fused pass and no extra buffers
    beyond the result (proposed body of RandomIntensityScaleShift.apply_transform)."""
    inside = (data != 0).to(data.dtype)
    return torch.addcmul(data * factors, inside, offsets)


def intensity_rows(patch_size: Sequence[int], repeats: int) -> list[dict]:
    """RandomIntensityScaleShift's arithmetic on one (4, *patch) image: current vs proposed."""
    import time

    from cascade.data.stage2 import RandomIntensityScaleShift

    data = torch.randn(4, *patch_size)
    data[:, : patch_size[0] // 5] = 0  # some background
    subject = tio.Subject(image=tio.ScalarImage(tensor=data))
    transform = RandomIntensityScaleShift(0.1, 0.1, copy=False)
    factors, offsets = torch.rand(4, 1, 1, 1) + 0.5, torch.rand(4, 1, 1, 1)

    def current() -> None:
        transform(subject)

    def proposed() -> None:
        subject["image"].set_data(scale_shift_inside(data, factors, offsets))

    rows = []
    for name, function in (("current", current), ("proposed addcmul", proposed)):
        function()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        seconds = (time.perf_counter() - start) / repeats
        rows.append(
            {
                "name": f"intensity scale/shift, {name}",
                "setting": f"(4, {'x'.join(map(str, patch_size))}) float32, "
                f"{torch.get_num_threads()} thread(s)",
                "ms": 1e3 * seconds,
            }
        )
    return rows
