"""Callbacks the training pipeline attaches to the Stage-2 fit."""

from __future__ import annotations

import lightning as L


class AlphaHistory(L.Callback):
    """Keeps alpha at every Stage-2 training step, for the alpha curve of the run."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.alphas: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self.steps.append(trainer.global_step)
        self.alphas.append(float(pl_module.mix.alpha.detach()))
