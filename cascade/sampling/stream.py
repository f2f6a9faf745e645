"""The host side of pooled sampling: which whole cases each training step brings to the pool.

Item i of a CaseStream is the list of cases read for step i: enough to fill the pool at step
0, then new cases at the rate that gives each case `samples_per_case` samples on average
(TorchIO Queue's samples_per_volume). Reading a whole cached case is one sequential read, and
loader workers do it ahead of the steps, so the host's cost per sample is a fraction of a read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


class CaseReader:
    """case id -> {"image" (4, X, Y, Z), "label" uint8 (X, Y, Z)[, "prior" (K, X, Y, Z)]} as
    the store keeps them (float16 images and uint8 priors travel at their stored size)."""

    def __init__(self, store: Any, prior_tag: str | None = None) -> None:
        self.store = store
        self.prior_tag = prior_tag

    def __call__(self, case_id: str) -> dict[str, Tensor]:
        label = self.store.label(case_id)
        if label is None:
            raise ValueError(f"{case_id}: training needs a label, the case has none")
        image = self.store.image(case_id)
        case = {"image": image, "label": label}
        if self.prior_tag is not None:
            case["prior"] = self.store.prior(case_id, self.prior_tag)
        shapes = {key: tuple(array.shape[-3:]) for key, array in case.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"{case_id}: arrays on different grids {shapes}; rebuild the cache")
        # np.array: one sequential copy out of the read-only memory maps
        return {key: torch.from_numpy(np.array(array)) for key, array in case.items()}


def steps_per_epoch(samples_per_epoch: int, batch_size: int, world_size: int) -> int:
    """Training steps each rank runs per epoch (at least one)."""
    return max(samples_per_epoch // (batch_size * world_size), 1)


class CaseStream(Dataset):
    """`steps` items; item i = {"cases": [case dicts]} to insert into the pool before step i."""

    def __init__(
        self,
        read_case: Callable[[str], dict[str, Tensor]],
        case_ids: Sequence[str],
        steps: int,
        batch_size: int,
        samples_per_case: int,
        pool_capacity: int,
    ) -> None:
        if not case_ids:
            raise ValueError("CaseStream: no cases to stream")
        if samples_per_case < 1:
            raise ValueError(f"CaseStream: samples_per_case must be >= 1, got {samples_per_case}")
        self.read_case = read_case
        self.case_ids = list(case_ids)
        self.steps = steps
        self.batch_size = batch_size
        self.samples_per_case = samples_per_case
        self.pool_capacity = pool_capacity

    def __len__(self) -> int:
        return self.steps

    def case_count(self, step: int) -> int:
        """Cases read for `step`: the pool's fill at step 0 of every epoch (new draws, so the
        pool never trains on one epoch's cases only), then the steady rate."""

        def arrived(samples: int) -> int:
            return -(-samples // self.samples_per_case)  # ceil

        count = arrived((step + 1) * self.batch_size) - arrived(step * self.batch_size)
        return count + (self.pool_capacity if step == 0 else 0)

    def __getitem__(self, step: int) -> dict[str, list[dict[str, Tensor]]]:
        count = self.case_count(step)
        # torch's RNG: seeded per worker, epoch and rank by the DataLoader and Lightning
        if step == 0:
            order = torch.randperm(len(self.case_ids))
            picks = [order[i % len(order)] for i in range(count)]
        else:
            picks = torch.randint(len(self.case_ids), (count,))
        return {"cases": [self.read_case(self.case_ids[int(i)]) for i in picks]}
