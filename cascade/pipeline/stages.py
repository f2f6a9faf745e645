"""The two fits in their order: Stage 1, then Stage 2 on Stage 1's priors; each reused when its
folder (``cascade.pipeline.folders``) already holds its weights."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from torch import nn

from cascade.data.cache import PreprocessCache
from cascade.data.labels import LabelScheme, class_probabilities
from cascade.inference.multiview import slab_batch_size
from cascade.lit.callbacks import AlphaHistory
from cascade.pipeline.composition import build, build_loss, build_trainer, fit_keeping_best, plain
from cascade.pipeline.errors import StageError
from cascade.pipeline.folders import stage1_folder, stage2_folder, stage_lock
from cascade.pipeline.weights import read_stage1_weights, read_stage2_weights, save_weights

log = logging.getLogger(__name__)


def fit_stage1(
    cfg: DictConfig,
    scheme: LabelScheme,
    cache: PreprocessCache,
    train_ids: list[str],
    val_ids: list[str],
    logger: Logger | None,
    extra_callbacks: Sequence[L.Callback] = (),
) -> tuple[nn.Module, Path]:
    """Fit (or reuse) Stage 1; returns the net with its best weights and the weights file.

    `stage1_checkpoint` (a weights file or a Lightning .ckpt of Stage1Module) is used instead of
    fitting; `stage=2` needs a Stage 1, from there or already in the cache.
    """
    folder = stage1_folder(cfg, train_ids, val_ids, cache.identity(train_ids + val_ids))
    weights = folder / "stage1.pt"
    net = instantiate(cfg.model.stage1)
    if cfg.stage1_checkpoint:
        weights = Path(cfg.stage1_checkpoint)
        if not weights.is_file():
            raise StageError(f"{weights}: stage1_checkpoint not found")
    elif str(cfg.stage) == "2" and not weights.exists():
        raise StageError(
            f"stage=2 needs a Stage 1: none in {folder} for these settings and data; "
            "run stage=1 (or stage=all) first, or give stage1_checkpoint=<stage1.pt or .ckpt>"
        )
    with stage_lock(folder):
        if weights.exists():
            log.info("Stage 1: reusing %s", weights)
            net.load_state_dict(read_stage1_weights(weights))
            return net, weights
        return _fit_stage1(
            cfg, scheme, cache, train_ids, val_ids, logger, extra_callbacks, net, folder
        )


@dataclass
class StageParts:
    """What one stage's fit is made of, as conf/ builds it."""

    module: L.LightningModule
    datamodule: L.LightningDataModule


def stage1_parts(
    cfg: DictConfig,
    scheme: LabelScheme,
    cache: PreprocessCache,
    train_ids: list[str],
    val_ids: list[str],
    net: nn.Module,
    device: torch.device | str,
) -> StageParts:
    """Stage 1's LightningModule around `net` (validating with `device`'s slab batch size)
    and its DataModule."""
    module = build(cfg.model.lightning.stage1)(
        net=net,
        loss=build_loss(cfg, scheme),
        regions=dict(scheme.regions),
        slab_batch_size=slab_batch_size(cfg.model.inference, device),
    )
    datamodule = build(cfg.data.stage1, store=cache, train_ids=train_ids, val_ids=val_ids)
    return StageParts(module, datamodule)


def stage2_parts(
    cfg: DictConfig,
    scheme: LabelScheme,
    cache: PreprocessCache,
    train_ids: list[str],
    val_ids: list[str],
    prior_tag: str,
    net: nn.Module,
    mix: nn.Module,
) -> StageParts:
    """Stage 2's LightningModule around `net` and `mix` and its DataModule on the priors
    under `prior_tag`."""
    module = build(cfg.model.lightning.stage2)(
        net=net, mix=mix, loss=build_loss(cfg, scheme), regions=dict(scheme.regions)
    )
    datamodule = build(
        cfg.data.stage2,
        store=cache,
        train_ids=train_ids,
        val_ids=val_ids,
        prior_tag=prior_tag,
        label_probabilities=class_probabilities(scheme, plain(cfg.data.stage2.label_probabilities)),
    )
    return StageParts(module, datamodule)


def _fit_stage1(cfg, scheme, cache, train_ids, val_ids, logger, extra_callbacks, net, folder):
    weights = folder / "stage1.pt"
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
    parts = stage1_parts(cfg, scheme, cache, train_ids, val_ids, net, device)
    module = parts.module
    trainer = build_trainer(cfg, "stage1", folder, logger, extra_callbacks)
    fit_keeping_best(trainer, module, parts.datamodule)
    if trainer.is_global_zero:
        save_weights(weights, {"net": module.net})
    trainer.strategy.barrier("stage1 weights")
    return module.net, weights


def fit_stage2(
    cfg: DictConfig,
    scheme: LabelScheme,
    cache: PreprocessCache,
    train_ids: list[str],
    val_ids: list[str],
    prior_tag: str,
    logger: Logger | None,
    extra_callbacks: Sequence[L.Callback] = (),
) -> tuple[nn.Module, nn.Module, AlphaHistory | None]:
    """Fit (or reuse) Stage 2 on the cached priors; returns net, mix and alpha per step."""
    folder = stage2_folder(cfg, prior_tag, train_ids, val_ids, cache.identity(train_ids + val_ids))
    weights = folder / "stage2.pt"
    net, mix = instantiate(cfg.model.stage2), instantiate(cfg.model.mix)
    with stage_lock(folder):
        if weights.exists():
            log.info("Stage 2: reusing %s", weights)
            read_stage2_weights(weights, net, mix)
            return net, mix, None
        return _fit_stage2(
            cfg, scheme, cache, train_ids, val_ids, prior_tag, logger, extra_callbacks, net, mix,
            folder,
        )  # fmt: skip


def _fit_stage2(
    cfg, scheme, cache, train_ids, val_ids, prior_tag, logger, extra_callbacks, net, mix, folder
):
    weights = folder / "stage2.pt"
    parts = stage2_parts(cfg, scheme, cache, train_ids, val_ids, prior_tag, net, mix)
    module = parts.module
    alpha = AlphaHistory()
    trainer = build_trainer(cfg, "stage2", folder, logger, [alpha, *extra_callbacks])
    fit_keeping_best(trainer, module, parts.datamodule)
    if trainer.is_global_zero:
        save_weights(weights, {"net": module.net, "mix": module.mix})
    trainer.strategy.barrier("stage2 weights")
    return module.net, module.mix, alpha
