"""Where each stage's outputs live: ``<cache_dir>/stage{1,2}-<hash>/``, keyed by a hash of the
settings that shape its weights and of the identity of its training data (the source files of its
cases). So a sweep over Stage-2 settings trains Stage 1 once, a finished stage is reused, and
settings that only change speed or logging (loader workers, logging interval, inference batch sizes
and test-time augmentation) retrain nothing. A file lock per stage folder lets runs that share a
cache wait for each other's fit instead of writing the same checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from cascade.data.cache import settings_hash
from cascade.pipeline.composition import plain, trainer_settings
from cascade.ranks import is_global_zero

# Settings that change speed or logging, never the weights: left out of the stage hashes.
_NOT_SHAPING_LOADER = ("num_workers",)
_NOT_SHAPING_TRAINER = (
    "log_every_n_steps", "benchmark", "enable_progress_bar", "num_sanity_val_steps",
)  # fmt: skip
# a memory format or compilation changes which kernels run, not what they compute
_NOT_SHAPING_STAGE1_MODULE = ("channels_last",)
_NOT_SHAPING_STAGE2_MODULE = ("window_batch_size", "compile", "channels_last")
# Callbacks that only report on a fit.
_REPORTING_CALLBACKS = (
    "cascade.lit.callbacks.EpochProgress",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.ModelSummary",
)


def stage_folder(cfg: DictConfig, stage: str, *parts: Any) -> Path:
    """``<cache_dir>/<stage>-<hash of the settings that shape it>``."""
    settings = {"stage": stage, "parts": [plain(part) for part in parts]}
    return Path(cfg.cache_dir) / f"{stage}-{settings_hash(settings)}"


def file_tag(path: Path) -> str:
    """Short content hash of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def priors_tag(stage1_weights: Path, precision: Any = None) -> str:
    """Names the priors of one Stage 1: its weights' hash, and the reduced precision (a torch
    dtype) they were predicted in, if any."""
    tag = file_tag(stage1_weights)
    return tag if precision is None else f"{tag}-{str(precision).removeprefix('torch.')}"


def _shaping(node: Any, left_out: Sequence[str]) -> dict[str, Any]:
    return {key: value for key, value in plain(node).items() if key not in left_out}


def _callbacks_shaping(cfg: DictConfig) -> Any:
    # as written, ${fit.*} unresolved: a callback (early stopping, the monitored metric) can
    # change which weights a fit ends with; one that only reports cannot
    callbacks = OmegaConf.to_container(cfg.callbacks, resolve=False)
    return {
        name: node
        for name, node in callbacks.items()
        if not (isinstance(node, dict) and node.get("_target_") in _REPORTING_CALLBACKS)
    }


def stage1_folder(
    cfg: DictConfig, train_ids: list[str], val_ids: list[str], data_identity: str
) -> Path:
    return stage_folder(
        cfg, "stage1", cfg.preprocessing, _shaping(cfg.data.stage1, _NOT_SHAPING_LOADER),
        cfg.model.stage1, cfg.model.loss,
        _shaping(cfg.model.lightning.stage1, _NOT_SHAPING_STAGE1_MODULE),
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
    # checkpoint; its batch size, memory format and compilation change only speed
    return stage_folder(
        cfg, "stage2", prior_tag, cfg.preprocessing,
        _shaping(cfg.data.stage2, _NOT_SHAPING_LOADER), cfg.model.stage2, cfg.model.mix,
        cfg.model.loss, _shaping(cfg.model.lightning.stage2, _NOT_SHAPING_STAGE2_MODULE),
        _shaping(trainer_settings(cfg, "stage2"), _NOT_SHAPING_TRAINER), _callbacks_shaping(cfg),
        cfg.seed, train_ids, val_ids, data_identity,
    )  # fmt: skip


def stage_lock(folder: Path):
    """The stage folder's lock, taken by the job's rank 0 only: DDP ranks that Lightning starts
    inside the fit must not wait for their own parent."""
    folder.mkdir(parents=True, exist_ok=True)
    if not is_global_zero():
        return contextlib.nullcontext()
    return FileLock(folder / "fit.lock")
