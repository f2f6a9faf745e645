"""Training batches of a fit from a case pool on its device: insert the step's new cases, draw
the batch, augment it. Held by a DataModule and run from its on_after_batch_transfer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cascade.sampling.lookalikes import LookAlikes
from cascade.sampling.pool import CasePool

Draws = Callable[[CasePool, int, torch.Generator | None], dict[str, Tensor]]


class PooledBatches:
    """A lazily built CasePool of `capacity` cases on `canvas`, fed by stream items, and the
    `draws` that cut a batch from it. `parts` names the case keys whose channels fill the pool,
    in order (the label's key adds it as one channel); `lookalikes` as in CasePool."""

    def __init__(
        self,
        capacity: int,
        canvas: Sequence[int],
        parts: Sequence[str],
        channels: int,
        location_groups: Sequence[Sequence[int]],
        draws: Draws,
        seed: int,
        lookalikes: LookAlikes | None = None,
    ) -> None:
        self.capacity = capacity
        self.canvas = tuple(canvas)
        self.parts = tuple(parts)
        self.channels = channels
        self.location_groups = location_groups
        self.draws = draws
        self.seed = seed
        self.lookalikes = lookalikes
        self.pool: CasePool | None = None

    def insert(self, cases: Sequence[dict[str, Tensor]], device: torch.device) -> None:
        if self.pool is None or self.pool.device != device:
            self.pool = CasePool(
                self.capacity, self.canvas, self.channels, self.location_groups, device, self.seed,
                self.lookalikes,
            )  # fmt: skip
        for case in cases:
            parts = [case[key] if key != "label" else case[key][None] for key in self.parts]
            self.pool.insert(parts, case["label"])

    def draw(self, batch_size: int, generator: torch.Generator | None) -> dict[str, Tensor]:
        if self.pool is None or self.pool.filled == 0:
            raise RuntimeError("PooledBatches: the pool is empty; the stream fills it at step 0")
        return self.draws(self.pool, batch_size, generator)


def largest_extent(shapes: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """The canvas that holds every (X, Y, Z) in `shapes`."""
    return tuple(max(int(shape[axis]) for shape in shapes) for axis in range(3))  # type: ignore[return-value]
