"""The experiment logger from ``conf/logger``: W&B (offline unless logged in), CSV, or none."""

from __future__ import annotations

import netrc
import os

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
