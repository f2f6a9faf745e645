"""The optimizer and per-step schedule both LightningModules return from configure_optimizers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def optimizer_with_schedule(
    module: L.LightningModule,
    optimizer: Optimizer,
    scheduler_factory: Callable[[Optimizer, int], LRScheduler] | None,
) -> Any:
    """``optimizer`` alone, or with a scheduler stepped every optimizer step over the whole fit."""
    if scheduler_factory is None:
        return optimizer
    # the horizon is known only once the module is attached to a trainer
    total_steps = max(int(module.trainer.estimated_stepping_batches), 1)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {
            "scheduler": scheduler_factory(optimizer, total_steps),
            "interval": "step",
            "frequency": 1,
        },
    }
