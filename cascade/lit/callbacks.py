"""Callbacks of the fits: alpha per Stage-2 step for the run's curve, training samples for the
phase timings, and one progress line per epoch for logs without a terminal."""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta

import lightning as L
from lightning.pytorch.utilities.data import extract_batch_size

log = logging.getLogger(__name__)


class AlphaHistory(L.Callback):
    """Keeps alpha at every Stage-2 training step, for the alpha curve of the run."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.alphas: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self.steps.append(trainer.global_step)
        self.alphas.append(float(pl_module.mix.alpha.detach()))


class TrainingSamples(L.Callback):
    """Counts the training samples of a fit, all ranks together (each rank sees its shard)."""

    def __init__(self) -> None:
        self.samples = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.samples += extract_batch_size(batch) * trainer.world_size


class EpochProgress(L.Callback):
    """One log line per training epoch, after its validation::

        stage1 epoch 3/30: train loss 0.4127, raw val Dice wt 0.812 tc 0.705 et 0.651
        mean 0.723, 181 samples/s, elapsed 0:04:12, remaining 1:48:50

    (one line in the log). The validation Dice is the networks' own output, before the
    post-processing stored with the model (largest component, small enhancing tumor removed),
    so it can read well below the run's final evaluation: a stray enhancing voxel in a case
    without enhancing tumor scores that case's ET 0. Where stdout is not a terminal (nohup,
    SLURM, CI, a redirect) the progress bar is turned off, since there it prints only its last
    frame; in a terminal it stays and the line appears above it.

    Args:
        stage: the metrics' prefix, ``stage1`` or ``stage2`` (``${fit.stage}`` in conf/).
        terminal: whether stdout is a terminal; None asks stdout.
    """

    def __init__(self, stage: str, terminal: bool | None = None) -> None:
        self.stage = stage
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self._fit_start = self._epoch_start = self._train_end = 0.0
        self._first_epoch = 0
        self._samples = 0
        self._validated = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.terminal and trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.disable()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._first_epoch = trainer.current_epoch  # a resumed fit starts past 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._train_end = time.perf_counter()
        self._samples = 0
        self._validated = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._samples += extract_batch_size(batch) * trainer.world_size
        self._train_end = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info(self.line(trainer))

    def line(self, trainer: L.Trainer) -> str:
        """This epoch's line from the trainer's metrics and the callback's clocks."""
        elapsed = time.perf_counter() - self._fit_start
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        planned = total is not None and total > 0  # max_epochs -1: until stopped
        head = f"{self.stage} epoch {epoch}" + (f"/{total}" if planned else "")
        metrics = trainer.callback_metrics
        loss = metrics.get(
            f"{self.stage}/train_loss_epoch", metrics.get(f"{self.stage}/train_loss")
        )
        details = [] if loss is None else [f"train loss {float(loss):.4f}"]
        prefix = f"{self.stage}/val_dice_"
        dice = {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}
        if self._validated and dice:
            scores = " ".join(f"{name} {value:.3f}" for name, value in dice.items())
            details.append(f"raw val Dice {scores}")
        train_seconds = self._train_end - self._epoch_start
        if train_seconds > 0:
            details.append(f"{_rate(self._samples / train_seconds)} samples/s")
        details.append(f"elapsed {_clock(elapsed)}")
        if planned:
            per_epoch = elapsed / (epoch - self._first_epoch)
            details.append(f"remaining {_clock(per_epoch * (total - epoch))}")
        return f"{head}: {', '.join(details)}"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _rate(per_second: float) -> str:
    """Three significant digits, never in exponent notation (1753, 181, 6.71, 0.128)."""
    if per_second >= 100:
        return f"{per_second:.0f}"
    return f"{per_second:.3g}"
