"""Segmentation loss on class probabilities: class-weighted soft Dice plus cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class DiceCELoss(nn.Module):
    """dice_weight * weighted soft Dice loss + ce_weight * cross-entropy, from probabilities.

    Dice is computed per class over all voxels of the batch, then averaged with `class_weights`
    (the weights act on the Dice term only). Cross-entropy is the mean NLL of log(clamp(p, eps)).
    Takes probabilities rather than logits so Stage 2 can apply it to its mixed output.
    Always evaluated in float32, also under autocast.
    """

    def __init__(
        self,
        class_weights: Sequence[float],
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth: float = 1e-5,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError("DiceCELoss: dice_weight and ce_weight must be >= 0, not both 0")
        weights = torch.as_tensor(list(class_weights), dtype=torch.float32)
        if weights.ndim != 1 or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"DiceCELoss: bad class_weights {list(class_weights)}")
        self.register_buffer("class_weights", weights, persistent=False)
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.smooth = smooth
        self.eps = eps

    def forward(self, probabilities: Tensor, target: Tensor) -> Tensor:
        """probabilities (B, C, *spatial), target (B, *spatial) integer classes -> scalar loss."""
        num_classes = probabilities.shape[1]
        if num_classes != self.class_weights.numel():
            raise ValueError(
                f"DiceCELoss: {num_classes} classes in the input, "
                f"{self.class_weights.numel()} class weights"
            )
        # reductions over ~1e6 voxels lose precision in fp16; keep the whole loss in fp32
        with torch.autocast(device_type=probabilities.device.type, enabled=False):
            probabilities = probabilities.float()
            target = target.long()
            loss = probabilities.new_zeros(())
            if self.dice_weight > 0:
                loss = loss + self.dice_weight * self._dice_loss(probabilities, target)
            if self.ce_weight > 0:
                loss = loss + self.ce_weight * self._cross_entropy(probabilities, target)
        return loss

    def _dice_loss(self, probabilities: Tensor, target: Tensor) -> Tensor:
        classes = torch.arange(probabilities.shape[1], device=target.device)
        one_hot = (target.unsqueeze(1) == classes.view(1, -1, *([1] * (target.ndim - 1)))).float()
        reduce_dims = [0, *range(2, probabilities.ndim)]
        overlap = (probabilities * one_hot).sum(reduce_dims)
        total = probabilities.sum(reduce_dims) + one_hot.sum(reduce_dims)
        dice = (2 * overlap + self.smooth) / (total + self.smooth)
        weights = self.class_weights.to(dice.device)
        return ((1 - dice) * weights).sum() / weights.sum()

    def _cross_entropy(self, probabilities: Tensor, target: Tensor) -> Tensor:
        log_probabilities = probabilities.clamp_min(self.eps).log()
        return -log_probabilities.gather(1, target.unsqueeze(1)).mean()
