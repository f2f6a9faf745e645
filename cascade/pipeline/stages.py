"""The two fits and the priors between them.

Each stage's outputs live in ``<cache_dir>/stage{1,2}-<hash>/``, keyed by a hash of the settings
that shape its weights and of the identity of its training data (the source files of its cases),
so a sweep over Stage-2 settings trains Stage 1 once, a finished stage is reused, an interrupted
fit resumes from its ``last.ckpt``, and settings that only change speed or logging (loader
workers, logging interval, inference batch sizes and test-time augmentation) retrain nothing.
A file lock per stage folder lets runs that share a cache wait for each other's fit instead of
writing the same checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cascade.data.cache import PreprocessCache, settings_hash
from cascade.data.labels import LabelScheme, class_probabilities, class_weights
from cascade.inference.multiview import slab_batch_size, write_priors
from cascade.io import atomic_path
from cascade.lit.callbacks import AlphaHistory
from cascade.ranks import distributed_rank_and_world, is_global_zero

log = logging.getLogger(__name__)

TRAINER_STAGE_KEYS = ("stage1", "stage2")
# Settings that change speed or logging, never the weights: left out of the stage hashes.
_NOT_SHAPING_LOADER = ("num_workers",)
_NOT_SHAPING_TRAINER = ("log_every_n_steps", "benchmark", "enable_progress_bar")
_NOT_SHAPING_STAGE2_MODULE = ("window_batch_size", "compile")


class StageError(RuntimeError):
    """A stage cannot run as asked; the message says why and what to do, in one line."""


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


def build(node: Any, **runtime: Any) -> Any:
    """Instantiate a ``_target_`` node of conf/ with what only the run knows (the cache, the
    case lists, nets built from the label scheme); lists and dicts arrive as plain Python."""
    # a runtime value replaces the configured one (instantiate would merge two dicts)
    node = {key: value for key, value in _plain(node).items() if key not in runtime}
    return instantiate(node, _convert_="all", **runtime)


def build_trainer(
    cfg: DictConfig,
    stage: str,
    folder: Path,
    logger: Logger | None,
    callbacks: Sequence[L.Callback],
    use_distributed_sampler: bool,
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
        use_distributed_sampler=use_distributed_sampler,
    )


def _fit(trainer: L.Trainer, module: L.LightningModule, datamodule) -> None:
    """Fit, resuming from the checkpoint callback's last.ckpt when an earlier fit was
    interrupted, then load the best validation checkpoint's weights into `module`."""
    trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_path(trainer.checkpoint_callback))
    _best_state(module, trainer.checkpoint_callback)


def _resume_path(checkpoint: ModelCheckpoint | None) -> str | None:
    if checkpoint is None or checkpoint.dirpath is None:
        return None
    last = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}.ckpt"
    return str(last) if last.exists() else None


def _best_state(module: L.LightningModule, checkpoint: ModelCheckpoint | None) -> None:
    """The best checkpoint's weights (our own file: full load); without a checkpoint callback,
    or one that monitors nothing, the last epoch's weights stay."""
    if checkpoint is not None and checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])


def _save_weights(path: Path, modules: Mapping[str, nn.Module]) -> None:
    with atomic_path(path) as temporary:
        torch.save({name: module.state_dict() for name, module in modules.items()}, temporary)


def file_tag(path: Path) -> str:
    """Short content hash of a weights file: names the priors it produced."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _shaping(node: Any, left_out: Sequence[str]) -> dict[str, Any]:
    return {key: value for key, value in _plain(node).items() if key not in left_out}


def _callbacks_shaping(cfg: DictConfig) -> Any:
    # as written, ${fit.*} unresolved: a callback (early stopping, the monitored metric) can
    # change which weights a fit ends with
    return OmegaConf.to_container(cfg.callbacks, resolve=False)


def stage1_folder(
    cfg: DictConfig, train_ids: list[str], val_ids: list[str], data_identity: str
) -> Path:
    return stage_folder(
        cfg, "stage1", cfg.preprocessing, _shaping(cfg.data.stage1, _NOT_SHAPING_LOADER),
        cfg.model.stage1, cfg.model.loss, cfg.model.lightning.stage1,
        _shaping(trainer_settings(cfg, "stage1"), _NOT_SHAPING_TRAINER), _callbacks_shaping(cfg),
        cfg.seed, train_ids, val_ids, data_identity,
    )  # fmt: skip


def stage2_folder(
    cfg: DictConfig,
    prior_tag: str,
    train_ids: list[str],
    val_ids: list[str],
    data_identity: str,
) -> Path:
    # the module's validation windows (overlap, margin) shape the Dice that picks the best
    # checkpoint; its batch size and compilation change only speed
    return stage_folder(
        cfg, "stage2", prior_tag, cfg.preprocessing,
        _shaping(cfg.data.stage2, _NOT_SHAPING_LOADER), cfg.model.stage2, cfg.model.mix,
        cfg.model.loss, _shaping(cfg.model.lightning.stage2, _NOT_SHAPING_STAGE2_MODULE),
        _shaping(trainer_settings(cfg, "stage2"), _NOT_SHAPING_TRAINER), _callbacks_shaping(cfg),
        cfg.seed, train_ids, val_ids, data_identity,
    )  # fmt: skip


def _stage_lock(folder: Path):
    """The stage folder's lock, taken by the job's rank 0 only: DDP ranks that Lightning starts
    inside the fit must not wait for their own parent."""
    folder.mkdir(parents=True, exist_ok=True)
    if not is_global_zero():
        return contextlib.nullcontext()
    return FileLock(folder / "fit.lock")


def _read_stage1_weights(path: Path) -> dict[str, torch.Tensor]:
    """Stage-1 net weights from the file `stage=1` writes ({"net": state}) or from a Lightning
    checkpoint of Stage1Module ("state_dict" with "net." keys), read without unpickling code."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a foreign or damaged file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StageError(f"{path}: not a readable Stage-1 weights file ({first})") from None
    if isinstance(content, dict) and isinstance(content.get("net"), dict):
        return content["net"]
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        prefix = "net."
        net = {
            k[len(prefix) :]: v for k, v in content["state_dict"].items() if k.startswith(prefix)
        }
        if net:
            return net
    raise StageError(
        f"{path}: neither Stage-1 weights (stage1.pt) nor a Lightning checkpoint of Stage1Module"
    )


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
    with _stage_lock(folder):
        if weights.exists():
            log.info("Stage 1: reusing %s", weights)
            net.load_state_dict(_read_stage1_weights(weights))
            return net, weights
        return _fit_stage1(
            cfg, scheme, cache, train_ids, val_ids, logger, extra_callbacks, net, folder
        )


def _fit_stage1(cfg, scheme, cache, train_ids, val_ids, logger, extra_callbacks, net, folder):
    weights = folder / "stage1.pt"
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
    module = build(cfg.model.lightning.stage1)(
        net=net,
        loss=build_loss(cfg, scheme),
        regions=dict(scheme.regions),
        slab_batch_size=slab_batch_size(cfg.model.inference, device),
    )
    datamodule = build(cfg.data.stage1, store=cache, train_ids=train_ids, val_ids=val_ids)
    trainer = build_trainer(cfg, "stage1", folder, logger, extra_callbacks, True)
    _fit(trainer, module, datamodule)
    if trainer.is_global_zero:
        _save_weights(weights, {"net": module.net})
    trainer.strategy.barrier("stage1 weights")
    return module.net, weights


def write_stage1_priors(
    cfg: DictConfig, net: nn.Module, cache: PreprocessCache, case_ids: list[str], tag: str
) -> None:
    """Every case's three-view prior into the cache; DDP ranks split the cases. Other jobs on
    the same cache and Stage 1 wait on a lock of the prior tag and then find the priors written."""
    rank, world = distributed_rank_and_world()
    device = (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    )
    lock = cache.folder / "priors" / f"{tag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock) if world == 1 else contextlib.nullcontext():
        _write_priors(cfg, net, cache, case_ids[rank::world], tag, device, rank == 0)
    if world > 1:
        torch.distributed.barrier()


def _write_priors(cfg, net, cache, case_ids, tag, device, progress) -> None:
    write_priors(
        net,
        cache,
        case_ids,
        tag,
        slab_depth=cfg.data.stage1.slab_depth,
        views=list(cfg.data.stage1.views),
        batch_size=slab_batch_size(cfg.model.inference, device),
        device=device,
        fp16=str(cfg.trainer.precision).startswith("16"),
        progress=progress,
        # slices padded to the training slab size, so instance norm sees what it saw in training
        plane_size=list(cfg.data.stage1.slab_size),
    )


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
    with _stage_lock(folder):
        if weights.exists():
            log.info("Stage 2: reusing %s", weights)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state["net"])
            mix.load_state_dict(state["mix"])
            return net, mix, None
        return _fit_stage2(
            cfg, scheme, cache, train_ids, val_ids, prior_tag, logger, extra_callbacks, net, mix,
            folder,
        )  # fmt: skip


def _fit_stage2(
    cfg, scheme, cache, train_ids, val_ids, prior_tag, logger, extra_callbacks, net, mix, folder
):
    weights = folder / "stage2.pt"
    module = build(cfg.model.lightning.stage2)(
        net=net, mix=mix, loss=build_loss(cfg, scheme), regions=dict(scheme.regions)
    )
    datamodule = build(
        cfg.data.stage2,
        store=cache,
        train_ids=train_ids,
        val_ids=val_ids,
        prior_tag=prior_tag,
        label_probabilities=class_probabilities(
            scheme, _plain(cfg.data.stage2.label_probabilities)
        ),
    )
    alpha = AlphaHistory()
    # the patch loader shards the epoch per rank itself (a DistributedSampler of its own)
    trainer = build_trainer(cfg, "stage2", folder, logger, [alpha, *extra_callbacks], False)
    _fit(trainer, module, datamodule)
    if trainer.is_global_zero:
        _save_weights(weights, {"net": module.net, "mix": module.mix})
    trainer.strategy.barrier("stage2 weights")
    return module.net, module.mix, alpha
