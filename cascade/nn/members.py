"""The three trained modules of one cascade, held together; an ensemble is several of them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(eq=False)
class CascadeNets:
    """One trained cascade: its Stage-1 net, its Stage-2 net and the residual mix between them
    (a Stage 2 is trained on its own Stage 1's priors, so the three belong together)."""

    stage1: nn.Module
    stage2: nn.Module
    mix: nn.Module

    def to(self, device) -> CascadeNets:
        """The three modules moved to `device` in eval mode (in place); returns self."""
        for module in (self.stage1, self.stage2, self.mix):
            module.to(device).eval()
        return self
