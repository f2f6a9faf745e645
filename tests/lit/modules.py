"""Tiny LightningModules for tests of how a module runs its net (memory format, compilation)."""

from __future__ import annotations

from functools import partial

import torch

from cascade.lit.stage2 import Stage2Module
from cascade.nn.attention_unet3d import AttentionUNet3d
from cascade.nn.losses import DiceCELoss
from cascade.nn.residual_mix import LearnableResidualMix


def tiny_stage2(**options) -> Stage2Module:
    """A Stage2Module on 8^3 patches of 4 modalities + 4 prior channels, seeded weights."""
    torch.manual_seed(0)
    return Stage2Module(
        net=AttentionUNet3d(8, 4, filters=2, depth=2, norm="instance", activation="leaky_relu"),
        mix=LearnableResidualMix(0.5),
        loss=DiceCELoss([1.0, 1.0, 1.0, 2.5]),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
        patch_size=(8, 8, 8),
        overlap=0.5,
        window_batch_size=1,
        **options,
    )
