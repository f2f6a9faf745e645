"""The optimizer and per-step schedule both LightningModules return from configure_optimizers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


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


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.0, eta_min: float = 0.0
) -> LRScheduler:
    """Linear warm-up over the first `warmup_fraction` of the fit, then cosine decay to
    `eta_min`. Adam's first steps rest on moment estimates from a handful of batches: at full
    learning rate they can throw a short fit into a poor start it never recovers from."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_cosine: warmup_fraction {warmup_fraction} not in [0, 1)")
    warmup_steps = int(round(warmup_fraction * total_steps))
    decay = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1), eta_min=eta_min)
    if warmup_steps == 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])
