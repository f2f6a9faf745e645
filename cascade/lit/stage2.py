"""Stage2Module: 3D Attention U-Net on image + Stage-1 prior, blended with the prior by alpha."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric

from cascade.data.cases import MODALITIES
from cascade.inference.cascade import roi_probabilities
from cascade.inference.precision import autocast_dtype, autocast_to
from cascade.lit.optim import optimizer_with_schedule
from cascade.metrics import DEFAULT_REGIONS, RegionDice
from cascade.nn.residual_mix import LearnableResidualMix


class Stage2Module(L.LightningModule):
    """Trains `net` (image + prior channels -> logits) and `mix` on patches; validates whole cases.

    The loss is taken on the mixed probabilities mix(softmax(net(cat(image, prior))), prior).
    p1 is the prior the network saw, perturbed in training: the clean cached priors of training
    cases are better than inference-time priors (Stage 1 saw those labels), and alpha should learn
    how far to trust an imperfect prior. The Stage-1 network is not part of this module.
    `alpha_lr` gives alpha its own learning rate (None: the optimizer's); alpha never gets weight
    decay, which would pull it towards 0.5. `own_loss_weight` adds the loss of the net's own
    probabilities (before the mix) with that weight: through the mix the net's gradient is scaled
    by alpha, and where the prior is already right it gets almost none, so a short fit can leave
    it unable to segment alone (0: the mixed loss only). optimizer/scheduler: as in Stage1Module
    (the scheduler partial takes the optimizer and the run's total steps; stepped every step).
    Batches: {"image", "prior", "label"} as produced by Stage2DataModule. Validation scores the
    cascade as CascadePredictor runs it, so the best checkpoint is chosen on what is used:
    Stage 2 on the windows (`patch_size`, `overlap`, `window_batch_size`) around the prior's
    tumor box grown by `roi_margin`, the prior elsewhere;
    `channels_last` runs the net in channels_last_3d memory format; `compile` compiles it with
    torch.compile (in place: parameter names and checkpoints stay those of the plain net).
    `cpu_bf16` validates on a CPU in bf16 where it computes that natively, as the predictor
    runs there (cascade.inference.precision); the training steps stay as they are.
    """

    def __init__(
        self,
        net: nn.Module,
        mix: LearnableResidualMix,
        loss: nn.Module,
        optimizer: Callable[[Iterable[Any]], Optimizer],
        scheduler: Callable[[Optimizer, int], LRScheduler] | None,
        patch_size: Sequence[int],
        overlap: float,
        window_batch_size: int,
        alpha_lr: float | None = None,
        own_loss_weight: float = 0.0,
        roi_margin: int = 8,
        channels_last: bool = False,
        compile: bool = False,
        cpu_bf16: bool = False,
        regions: Mapping[str, tuple[int, ...]] = DEFAULT_REGIONS,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["net", "mix", "loss", "optimizer", "scheduler"], logger=False
        )
        self.net = net
        self.mix = mix
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.patch_size = tuple(int(size) for size in patch_size)
        self.overlap = overlap
        self.window_batch_size = window_batch_size
        self.alpha_lr = alpha_lr
        self.own_loss_weight = own_loss_weight
        self.roi_margin = roi_margin
        self.channels_last = channels_last
        self.cpu_bf16 = cpu_bf16
        if channels_last:
            self.net.to(memory_format=torch.channels_last_3d)
        if compile:
            # fuses the instance norms and activations around the convolutions
            self.net.compile()
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_dice = RegionDice(regions)

    def forward(self, image: Tensor, prior: Tensor) -> Tensor:
        """image (B, 4, X, Y, Z), prior (B, classes, X, Y, Z) probabilities -> mixed ones."""
        return self.mix(self.stage2_probabilities(image, prior), prior.float())

    def stage2_probabilities(self, image: Tensor, prior: Tensor) -> Tensor:
        """The Stage-2 net's own softmax (B, classes, X, Y, Z), before the mix."""
        inputs = torch.cat([image, prior.to(image.dtype)], dim=1)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        return torch.softmax(self.net(inputs).float(), dim=1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        own = self.stage2_probabilities(batch["image"], batch["prior"])
        probabilities = self.mix(own, batch["prior"].float())
        loss = self.loss(probabilities, batch["label"])
        if self.own_loss_weight:
            loss = loss + self.own_loss_weight * self.loss(own, batch["label"])
        batch_size = batch["image"].shape[0]
        self.train_loss(loss.detach())
        log_options = dict(on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log("stage2/train_loss", self.train_loss, **log_options)
        # alpha is the same on every rank: no sync needed
        self.log("stage2/alpha", self.mix.alpha.detach(), **log_options)
        return loss

    def _predict_patches(self, patches: Tensor) -> Tensor:
        """(B, 4 + classes, *patch) = image + prior channels -> mixed (B, classes, *patch)."""
        modalities = len(MODALITIES)
        return self(patches[:, :modalities], patches[:, modalities:])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # None on a GPU, where a 16-mixed run's autocast is already on
        dtype = autocast_dtype(self.device, fp16=False, cpu_bf16=self.cpu_bf16)
        for image, prior, label in zip(batch["image"], batch["prior"], batch["label"], strict=True):
            with autocast_to(self.device.type, dtype):
                probabilities = roi_probabilities(
                    self._predict_patches,
                    image,
                    prior.to(image.dtype),
                    patch_size=self.patch_size,
                    overlap=self.overlap,
                    batch_size=self.window_batch_size,
                    roi_margin=self.roi_margin,
                )
            self.val_loss(self.loss(probabilities[None], label[None]))
            self.val_dice.update(probabilities.argmax(0)[None], label[None])

    def on_validation_epoch_end(self) -> None:
        # compute() sums the per-case Dice over all ranks
        dice = self.val_dice.compute()
        for region in (*self.val_dice.regions, "mean"):
            self.log(f"stage2/val_dice_{region}", dice[region], prog_bar=region == "mean")
        self.log("stage2/val_loss", self.val_loss.compute())
        self.val_dice.reset()
        self.val_loss.reset()

    def configure_optimizers(self) -> Any:
        alpha_group: dict[str, Any] = {"params": list(self.mix.parameters()), "weight_decay": 0.0}
        if self.alpha_lr is not None:
            alpha_group["lr"] = self.alpha_lr
        optimizer = self.optimizer_factory([{"params": list(self.net.parameters())}, alpha_group])
        return optimizer_with_schedule(self, optimizer, self.scheduler_factory)
