"""Stage1Module: trains the 2.5D U-Net on slabs and reports per-region validation Dice."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import Parameter
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from cascade.inference.multiview import predict_prior
from cascade.lit.optim import optimizer_with_schedule
from cascade.metrics import DEFAULT_REGIONS, RegionDice


class Stage1Module(L.LightningModule):
    """Slabs (B, 4k, H, W) -> net logits -> softmax -> `loss` against the centre-slice labels.

    Validation scores Stage 1 as it is used: the three-view prior of each whole validation case
    (`predict_prior` over `views` with `slab_depth` slices, slices padded to `plane_size`,
    `slab_batch_size` slabs per forward pass), so the best checkpoint is chosen on the prior
    Stage 2 and the predictor get, not on single slabs, where empty slabs score 1.

    optimizer: partial taking the parameters. scheduler: partial taking the optimizer and the
    run's total optimizer steps (positionally, e.g. CosineAnnealingLR(optimizer, T_max)); it is
    stepped every optimizer step. Batches: {"image": (B, 4k, H, W), "label": (B, H, W)}.
    `channels_last` trains the net in channels-last memory format (faster on a CPU).
    `cpu_bf16` validates on a CPU in bf16 where it computes that natively, as the priors and
    the predictor run there (cascade.inference.precision); the training steps stay as they are.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[[Iterable[Parameter]], Optimizer],
        scheduler: Callable[[Optimizer, int], LRScheduler] | None,
        regions: Mapping[str, tuple[int, ...]] = DEFAULT_REGIONS,
        views: Sequence[str] = ("axial", "sagittal", "coronal"),
        slab_depth: int = 5,
        plane_size: Sequence[int] | None = None,
        slab_batch_size: int = 32,
        channels_last: bool = False,
        cpu_bf16: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_dice = RegionDice(regions)
        self.views = tuple(views)
        self.slab_depth = slab_depth
        self.plane_size = None if plane_size is None else tuple(plane_size)
        self.slab_batch_size = slab_batch_size
        self.channels_last = channels_last
        self.cpu_bf16 = cpu_bf16
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, slabs: Tensor) -> Tensor:
        """(B, 4k, H, W) -> logits (B, classes, H, W)."""
        return self.net(slabs)

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        slabs = batch["image"]
        if self.channels_last:
            slabs = slabs.contiguous(memory_format=torch.channels_last)
        probabilities = torch.softmax(self(slabs).float(), dim=1)
        return self.loss(probabilities, batch["label"]), probabilities

    def training_step(self, batch: dict[str, Tensor], batch_index: int) -> Tensor:
        loss, _ = self._step(batch)
        self.log("stage1/train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_index: int) -> None:
        """One whole case: {"image" (1, 4, X, Y, Z), "label" (1, X, Y, Z)}."""
        prior = predict_prior(
            self.net,
            batch["image"][0],
            slab_depth=self.slab_depth,
            views=self.views,
            batch_size=self.slab_batch_size,
            device=self.device,
            fp16=False,  # under 16-mixed Lightning's autocast is already on
            plane_size=self.plane_size,
            cpu_bf16=self.cpu_bf16,
        )
        loss = self.loss(prior[None], batch["label"])
        self.val_dice.update(prior.argmax(0)[None], batch["label"])
        self.log(
            "stage1/val_loss", loss, on_epoch=True, sync_dist=True, prog_bar=True, batch_size=1
        )

    def on_validation_epoch_end(self) -> None:
        # RegionDice reduces its states across processes itself
        for region, dice in self.val_dice.compute().items():
            self.log(f"stage1/val_dice_{region}", dice, prog_bar=region == "mean")
        self.val_dice.reset()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        return optimizer_with_schedule(self, optimizer, self.scheduler_factory)
