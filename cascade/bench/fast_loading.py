"""A patch-first Stage-2 loader, measured beside the tio.Queue one (proposed for data/stage2.py).

The queue loads whole cases in its workers, sends each (about 110 MiB for a BraTS case) to the
training process, and samples and crops the patches there, in one process: TorchIO's
LabelSampler builds a probability map over the whole volume and clones every image for each
patch. Here each worker picks a patch centre from a per-case index of class voxels, reads only
the patch from the memory-mapped cache and augments the patch, not the volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torchio as tio
from torch import Tensor
from torch.utils.data import Dataset

from cascade.data.stage2 import CaseStore


class PatchDataset(Dataset):
    """`length` random patches {"image" (4, *p) float32, "prior" (4, *p) float32, "label" (*p)
    uint8}: case uniform, centre class drawn from `label_probabilities` (renormalised over the
    classes the case has), centre voxel uniform in that class, patch shifted to fit the volume."""

    def __init__(
        self,
        store: CaseStore,
        case_ids: Sequence[str],
        prior_tag: str,
        patch_size: Sequence[int],
        label_probabilities: Mapping[int, float],
        length: int,
        transform: tio.Transform | None,
        half_prior: bool = False,
    ) -> None:
        self.store = store
        self.case_ids = list(case_ids)
        self.prior_tag = prior_tag
        self.patch_size = tuple(int(size) for size in patch_size)
        self.label_probabilities = {int(k): float(v) for k, v in label_probabilities.items()}
        self.length = length
        self.transform = transform
        self.half_prior = half_prior  # send float16 (as cached); the step converts on the device
        self._class_voxels: dict[str, dict[int, np.ndarray]] = {}  # per worker, filled lazily

    def __len__(self) -> int:
        return self.length

    def _voxels(self, case_id: str) -> dict[int, np.ndarray]:
        """Flat indices of each class's voxels (int32), read once per worker and case."""
        if case_id not in self._class_voxels:
            label = np.asarray(self.store.label(case_id)).reshape(-1)
            self._class_voxels[case_id] = {
                label_class: np.flatnonzero(label == label_class).astype(np.int32)
                for label_class in self.label_probabilities
            }
        return self._class_voxels[case_id]

    def _window(self, case_id: str, generator: torch.Generator) -> tuple[slice, slice, slice]:
        shape = self.store.label(case_id).shape
        if any(size < patch for size, patch in zip(shape, self.patch_size, strict=True)):
            raise ValueError(f"case {case_id}: shape {shape} is smaller than the patch")
        voxels = self._voxels(case_id)
        present = [c for c in self.label_probabilities if voxels[c].size]
        weights = torch.tensor([self.label_probabilities[c] for c in present])
        label_class = present[int(torch.multinomial(weights, 1, generator=generator))]
        candidates = voxels[label_class]
        flat = candidates[int(torch.randint(candidates.size, (), generator=generator))]
        centre = np.unravel_index(int(flat), shape)
        window = []
        for position, size, patch in zip(centre, shape, self.patch_size, strict=True):
            start = min(max(int(position) - patch // 2, 0), max(size - patch, 0))
            window.append(slice(start, start + patch))
        return tuple(window)  # type: ignore[return-value]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        case_id = self.case_ids[int(torch.randint(len(self.case_ids), (), generator=generator))]
        window = self._window(case_id, generator)
        region = (slice(None), *window)
        # one copy each, straight from the memory map into writable memory
        image = torch.from_numpy(np.array(self.store.image(case_id)[region], dtype=np.float32))
        prior_dtype = np.float16 if self.half_prior else np.float32
        prior = torch.from_numpy(
            np.array(self.store.prior(case_id, self.prior_tag)[region], dtype=prior_dtype)
        )
        label = torch.from_numpy(np.array(self.store.label(case_id)[window], dtype=np.uint8))
        if self.transform is not None:
            subject = tio.Subject(
                image=tio.ScalarImage(tensor=image),
                prior=tio.ScalarImage(tensor=prior),
                label=tio.LabelMap(tensor=label[None]),
            )
            subject = self.transform(subject)
            image, prior = subject["image"].data, subject["prior"].data
            label = subject["label"].data[0]
        return {"image": image, "prior": prior, "label": label.to(torch.uint8)}


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
