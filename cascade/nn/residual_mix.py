"""Learnable blend of the Stage-2 and Stage-1 class probabilities."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LearnableResidualMix(nn.Module):
    """final = alpha * p2 + (1 - alpha) * p1, with one trainable scalar alpha in [0, 1].

    alpha = sigmoid(logit): it can never leave [0, 1], and unlike clamping its gradient is never
    cut to zero at a bound, so an alpha pushed towards 0 or 1 can still come back.
    `init` must lie strictly inside (0, 1) (the logit of 0 or 1 is infinite).
    """

    def __init__(self, init: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < init < 1.0:
            raise ValueError(f"LearnableResidualMix: init must be in (0, 1), got {init}")
        self.logit = nn.Parameter(torch.tensor(math.log(init / (1.0 - init)), dtype=torch.float32))

    @property
    def alpha(self) -> Tensor:
        """The current weight of the Stage-2 probabilities, a 0-dim tensor in [0, 1]."""
        return torch.sigmoid(self.logit)

    def forward(self, stage2_probabilities: Tensor, stage1_probabilities: Tensor) -> Tensor:
        """Both (B, C, *spatial) probabilities -> mixed (B, C, *spatial); sums to 1 if both do."""
        alpha = self.alpha.to(stage2_probabilities.dtype)
        # written as two products (not a lerp) so that alpha = 0.5 gives exactly the mean
        return alpha * stage2_probabilities + (1 - alpha) * stage1_probabilities

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.item():.4f}"
