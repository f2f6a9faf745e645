"""The experiment logger from ``conf/logger``: W&B (offline unless logged in), CSV, or none."""

from __future__ import annotations

import contextlib
import netrc
import os
from collections.abc import Iterator

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf


def wandb_logged_in() -> bool:
    """True when W&B credentials exist (env var or ~/.netrc), so runs can go online."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_logger(logger_cfg: DictConfig | None) -> Logger | None:
    """Instantiate the configured logger; W&B ``offline: null`` means offline unless logged in."""
    if not logger_cfg or "_target_" not in logger_cfg:
        return None
    logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
    if logger_cfg["_target_"].endswith("WandbLogger") and logger_cfg.get("offline") is None:
        logger_cfg["offline"] = not wandb_logged_in()
    return instantiate(logger_cfg)


@contextlib.contextmanager
def metric_prefix(logger: Logger | None, prefix: str) -> Iterator[None]:
    """Metrics logged inside the block carry `prefix` (joined by the logger's own character),
    so that the members of an ensemble draw separate curves in one run. Lightning's W&B and CSV
    loggers keep the `prefix` their constructor takes in ``_prefix``; a logger without one logs
    unprefixed."""
    if logger is None or not hasattr(logger, "_prefix") or not prefix:
        yield
        return
    before = logger._prefix
    logger._prefix = prefix
    try:
        yield
    finally:
        logger._prefix = before
