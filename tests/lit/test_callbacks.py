"""The epoch line and the sample count on a tiny real fit (CPU, a linear net)."""

from __future__ import annotations

import logging
import re

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from cascade.lit.callbacks import EpochProgress, TrainingSamples

SAMPLES, BATCH = 12, 4


class _Regions(L.LightningModule):
    """Logs what the stage modules log: a train loss and a validation Dice per region."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("stage1/train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx) -> None:
        for region, dice in (("wt", 0.5), ("tc", 0.25), ("mean", 0.375)):
            self.log(f"stage1/val_dice_{region}", dice)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(callbacks: list[L.Callback], epochs: int, every: int) -> L.Trainer:
    data = DataLoader(TensorDataset(torch.randn(SAMPLES, 3)), batch_size=BATCH)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, check_val_every_n_epoch=every, logger=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=1,
        callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(_Regions(), train_dataloaders=data, val_dataloaders=data)
    return trainer


def test_one_line_per_epoch_with_dice_where_validated(caplog) -> None:
    caplog.set_level(logging.INFO, logger="cascade.lit.callbacks")
    trainer = _fit([EpochProgress("stage1", terminal=False)], epochs=3, every=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "cascade.lit.callbacks"]
    assert len(lines) == 3
    number = r"\d+(\.\d+)?"
    clock = r"\d+:\d\d:\d\d"
    for epoch, line in enumerate(lines, start=1):
        dice = " raw val Dice wt 0.500 tc 0.250 mean 0.375," if epoch == 2 else ""
        assert re.fullmatch(
            rf"stage1 epoch {epoch}/3: train loss {number},{dice} {number} samples/s, "
            rf"elapsed {clock}, remaining {clock}",
            line,
        ), line
    assert lines[-1].endswith("remaining 0:00:00")
    # not a terminal: the bar would print only its last frame, so it is off
    assert trainer.progress_bar_callback.is_disabled


def test_a_terminal_keeps_the_progress_bar() -> None:
    trainer = _fit([EpochProgress("stage1", terminal=True)], epochs=1, every=1)
    assert trainer.progress_bar_callback.is_enabled


def test_training_samples_counts_every_epoch() -> None:
    samples = TrainingSamples()
    _fit([samples], epochs=2, every=1)
    assert samples.samples == 2 * SAMPLES
