"""The two fits and the priors between them.

Each stage's outputs live in ``<cache_dir>/stage{1,2}-<hash>/``, keyed by a hash of every setting
that shapes them, so a sweep over Stage-2 settings trains Stage 1 once, a finished stage is reused
and an interrupted fit resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cascade.data.cache import PreprocessCache, settings_hash
from cascade.data.labels import LabelScheme, class_probabilities, class_weights
from cascade.data.stage1 import Stage1DataModule
from cascade.data.stage2 import Stage2DataModule
from cascade.inference.multiview import slab_batch_size, write_priors
from cascade.io import atomic_path
from cascade.lit.callbacks import AlphaHistory
from cascade.lit.stage1 import Stage1Module
from cascade.lit.stage2 import Stage2Module

log = logging.getLogger(__name__)

TRAINER_STAGE_KEYS = ("stage1", "stage2")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def stage_folder(cfg: DictConfig, stage: str, *parts: Any) -> Path:
    """``<cache_dir>/<stage>-<hash of the settings that shape it>``."""
    settings = {"stage": stage, "parts": [_plain(part) for part in parts]}
    return Path(cfg.cache_dir) / f"{stage}-{settings_hash(settings)}"


def trainer_settings(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """Lightning Trainer arguments of one stage: the shared ones plus the stage's own."""
    shared = {k: v for k, v in _plain(cfg.trainer).items() if k not in TRAINER_STAGE_KEYS}
    return {**shared, **_plain(cfg.trainer[stage])}


def build_trainer(
    cfg: DictConfig,
    stage: str,
    folder: Path,
    logger: Logger | None,
    callbacks: list[L.Callback],
    use_distributed_sampler: bool,
) -> tuple[L.Trainer, ModelCheckpoint]:
    checkpoint = ModelCheckpoint(
        dirpath=folder / "checkpoints",
        filename="best",
        monitor=f"{stage}/val_dice_mean",
        mode="max",
        save_last=True,
    )
    trainer = L.Trainer(
        **trainer_settings(cfg, stage),
        default_root_dir=folder,
        logger=logger if logger is not None else False,
        callbacks=[checkpoint, *callbacks],
        use_distributed_sampler=use_distributed_sampler,
    )
    return trainer, checkpoint


def _fit(trainer: L.Trainer, module: L.LightningModule, datamodule, folder: Path) -> None:
    """Fit, resuming from the stage's last.ckpt when an earlier fit was interrupted."""
    trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_path(folder))


def _resume_path(folder: Path) -> str | None:
    last = folder / "checkpoints" / "last.ckpt"
    return str(last) if last.exists() else None


def _best_state(module: L.LightningModule, checkpoint: ModelCheckpoint) -> None:
    """Load the best validation checkpoint's weights into ``module`` (our own file: full load)."""
    if checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])


def _save_weights(path: Path, modules: Mapping[str, nn.Module]) -> None:
    with atomic_path(path) as temporary:
        torch.save({name: module.state_dict() for name, module in modules.items()}, temporary)


def file_tag(path: Path) -> str:
    """Short content hash of a weights file: names the priors it produced."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def stage1_folder(cfg: DictConfig, train_ids: list[str], val_ids: list[str]) -> Path:
    return stage_folder(
        cfg, "stage1", cfg.preprocessing, cfg.data.stage1, cfg.model.stage1, cfg.model.loss,
        cfg.model.optimizer, cfg.model.scheduler, trainer_settings(cfg, "stage1"), cfg.seed,
        train_ids, val_ids,
    )  # fmt: skip


def stage2_folder(
    cfg: DictConfig, prior_tag: str, train_ids: list[str], val_ids: list[str]
) -> Path:
    return stage_folder(
        cfg, "stage2", prior_tag, cfg.preprocessing, cfg.data.stage2, cfg.model.stage2,
        cfg.model.mix, cfg.model.alpha_lr, cfg.model.loss, cfg.model.optimizer, cfg.model.scheduler,
        cfg.model.inference, trainer_settings(cfg, "stage2"), cfg.seed, train_ids, val_ids,
    )  # fmt: skip


def build_loss(cfg: DictConfig, scheme: LabelScheme) -> nn.Module:
    """The loss with one weight per class of `scheme` (the config names weights by class)."""
    node = _plain(cfg.model.loss)
    node["class_weights"] = class_weights(scheme, node["class_weights"])
    return instantiate(node)


def fit_stage1(
    cfg: DictConfig,
    scheme: LabelScheme,
    cache: PreprocessCache,
    train_ids: list[str],
    val_ids: list[str],
    logger: Logger | None,
    extra_callbacks: Sequence[L.Callback] = (),
) -> tuple[nn.Module, Path]:
    """Fit (or reuse) Stage 1; returns the net with its best weights and the weights file."""
    folder = stage1_folder(cfg, train_ids, val_ids)
    weights = folder / "stage1.pt"
    net = instantiate(cfg.model.stage1)
    if cfg.stage1_checkpoint:
        weights = Path(cfg.stage1_checkpoint)
    if weights.exists():
        log.info("Stage 1: reusing %s", weights)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["net"])
        return net, weights
    module = Stage1Module(
        net=net,
        regions=dict(scheme.regions),
        loss=build_loss(cfg, scheme),
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
    )
    datamodule = Stage1DataModule(cache, train_ids, val_ids, **_plain(cfg.data.stage1))
    trainer, checkpoint = build_trainer(cfg, "stage1", folder, logger, [*extra_callbacks], True)
    _fit(trainer, module, datamodule, folder)
    _best_state(module, checkpoint)
    if trainer.is_global_zero:
        _save_weights(weights, {"net": module.net})
    trainer.strategy.barrier("stage1 weights")
    return module.net, weights


def write_stage1_priors(
    cfg: DictConfig, net: nn.Module, cache: PreprocessCache, case_ids: list[str], tag: str
) -> None:
    """Every case's three-view prior into the cache; DDP ranks split the cases."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    )
    write_priors(
        net,
        cache,
        case_ids[rank::world],
        tag,
        slab_depth=cfg.data.stage1.slab_depth,
        views=list(cfg.data.stage1.views),
        batch_size=slab_batch_size(cfg.model.inference, device),
        device=device,
        fp16=str(cfg.trainer.precision).startswith("16"),
        progress=rank == 0,
        # slices padded to the training slab size, so instance norm sees what it saw in training
        plane_size=list(cfg.data.stage1.slab_size),
    )
    if world > 1:
        torch.distributed.barrier()


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
    folder = stage2_folder(cfg, prior_tag, train_ids, val_ids)
    weights = folder / "stage2.pt"
    net, mix = instantiate(cfg.model.stage2), instantiate(cfg.model.mix)
    if weights.exists():
        log.info("Stage 2: reusing %s", weights)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        mix.load_state_dict(state["mix"])
        return net, mix, None
    module = Stage2Module(
        net=net,
        mix=mix,
        regions=dict(scheme.regions),
        loss=build_loss(cfg, scheme),
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        patch_size=list(cfg.data.stage2.patch_size),
        overlap=cfg.model.inference.overlap,
        window_batch_size=cfg.model.inference.window_batch_size,
        alpha_lr=cfg.model.alpha_lr,
        compile=cfg.model.compile,
    )
    loading = _plain(cfg.data.stage2)
    perturbation = loading.pop("perturbation", None)  # null switches it off
    perturbation = instantiate(perturbation) if perturbation else None
    loading["label_probabilities"] = class_probabilities(scheme, loading["label_probabilities"])
    datamodule = Stage2DataModule(
        cache, train_ids, val_ids, prior_tag, **loading, perturbation=perturbation, seed=cfg.seed
    )
    alpha = AlphaHistory()
    # the patch loader shards the epoch per rank itself (a DistributedSampler of its own)
    trainer, checkpoint = build_trainer(
        cfg, "stage2", folder, logger, [alpha, *extra_callbacks], False
    )
    _fit(trainer, module, datamodule, folder)
    _best_state(module, checkpoint)
    if trainer.is_global_zero:
        _save_weights(weights, {"net": module.net, "mix": module.mix})
    trainer.strategy.barrier("stage2 weights")
    return module.net, module.mix, alpha
