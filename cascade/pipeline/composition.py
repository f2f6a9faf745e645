"""The objects of a fit built from conf/ with hydra.utils.instantiate: the Trainer with its
callbacks, DataModules, LightningModules and the loss; and the fit itself, resumed when it was
interrupted and ending on its best checkpoint's weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cascade.data.labels import LabelScheme, class_weights

TRAINER_STAGE_KEYS = ("stage1", "stage2")


def plain(node: Any) -> Any:
    """A config node as plain Python, interpolations resolved (anything else unchanged)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def trainer_settings(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """Lightning Trainer arguments of one stage: the shared ones plus the stage's own."""
    shared = {k: v for k, v in plain(cfg.trainer).items() if k not in TRAINER_STAGE_KEYS}
    return {**shared, **plain(cfg.trainer[stage])}


def build(node: Any, **runtime: Any) -> Any:
    """Instantiate a ``_target_`` node of conf/ with what only the run knows (the cache, the
    case lists, nets built from the label scheme); lists and dicts arrive as plain Python."""
    # a runtime value replaces the configured one (instantiate would merge two dicts)
    node = {key: value for key, value in plain(node).items() if key not in runtime}
    return instantiate(node, _convert_="all", **runtime)


def build_trainer(
    cfg: DictConfig,
    stage: str,
    folder: Path,
    logger: Logger | None,
    callbacks: Sequence[L.Callback],
) -> L.Trainer:
    """The stage's Trainer from ``trainer`` with the callbacks of ``callbacks``, which see this
    fit as ``${fit.stage}`` and ``${fit.dir}``, plus the pipeline's own `callbacks`."""
    cfg.fit.stage, cfg.fit.dir = stage, str(folder)
    configured = [build(node) for node in cfg.callbacks.values() if node is not None]
    return build(
        trainer_settings(cfg, stage),
        default_root_dir=folder,
        logger=logger if logger is not None else False,
        callbacks=[*configured, *callbacks],
        # the DataModules give each rank its own cases (cascade.sampling): no sampler injection
        use_distributed_sampler=False,
    )


def build_loss(cfg: DictConfig, scheme: LabelScheme) -> nn.Module:
    """The loss with one weight per class of `scheme` (the config names weights by class)."""
    node = plain(cfg.model.loss)
    node["class_weights"] = class_weights(scheme, node["class_weights"])
    return instantiate(node)


def fit_keeping_best(trainer: L.Trainer, module: L.LightningModule, datamodule) -> None:
    """Fit, resuming from the checkpoint callback's last.ckpt when an earlier fit was
    interrupted, then load the best validation checkpoint's weights into `module`."""
    resume = _resume_path(trainer.checkpoint_callback)
    # weights-only, as every checkpoint read here: a cache folder can come from elsewhere
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    _best_state(module, trainer.checkpoint_callback)


def _resume_path(checkpoint: ModelCheckpoint | None) -> str | None:
    if checkpoint is None or checkpoint.dirpath is None:
        return None
    last = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}.ckpt"
    return str(last) if last.exists() else None


def _best_state(module: L.LightningModule, checkpoint: ModelCheckpoint | None) -> None:
    """The best checkpoint's weights; without a checkpoint callback, or one that monitors
    nothing, the last epoch's weights stay. Read weights-only: a cache folder can come from
    elsewhere, and nothing in it may run code."""
    if checkpoint is not None and checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
