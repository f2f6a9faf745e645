"""``cascade.ckpt``: both stages, the residual mix and everything needed to predict new cases.

The file holds only tensors and plain containers, so it is read with
``torch.load(weights_only=True)`` (no arbitrary unpickling), and networks are rebuilt only
from classes inside ``cascade.nn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from cascade.data.cases import MODALITIES
from cascade.io import atomic_path

FORMAT = "cascade-checkpoint"
VERSION = 1
_ALLOWED_TARGET_PREFIX = "cascade.nn."


class CheckpointError(ValueError):
    """A file that is not a usable cascade checkpoint; the message names the file."""


@dataclass
class CascadeModel:
    """The trained cascade as plain modules plus the settings inference needs."""

    stage1: nn.Module
    stage2: nn.Module
    mix: nn.Module
    settings: dict[str, Any]  # preprocessing, slab_depth, views, patch_size, inference, modalities


def save_checkpoint(path: Path, model: CascadeModel, network_configs: dict[str, dict]) -> None:
    """Write ``cascade.ckpt`` atomically; ``network_configs`` are the Hydra node of each module."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "modalities": list(MODALITIES),
        "networks": network_configs,
        "settings": model.settings,
        "state_dicts": {
            "stage1": model.stage1.state_dict(),
            "stage2": model.stage2.state_dict(),
            "mix": model.mix.state_dict(),
        },
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _build(name: str, node: dict, path: Path) -> nn.Module:
    target = str(node.get("_target_", ""))
    if not target.startswith(_ALLOWED_TARGET_PREFIX):
        raise CheckpointError(f"{path}: network '{name}' names {target!r}, not a cascade network")
    return instantiate(node)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> CascadeModel:
    """Read a checkpoint written by ``save_checkpoint``; raise CheckpointError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a foreign or damaged file
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise CheckpointError(
            f"{path}: not a readable cascade checkpoint ({first_line})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a cascade checkpoint (train one with python -m cascade.train)"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')}, expected {VERSION}"
        )
    if tuple(payload["modalities"]) != MODALITIES:
        raise CheckpointError(
            f"{path}: trained on modalities {payload['modalities']}, expected {MODALITIES}"
        )
    modules = {}
    for name in ("stage1", "stage2", "mix"):
        module = _build(name, payload["networks"][name], path)
        module.load_state_dict(payload["state_dicts"][name])
        modules[name] = module.eval()
    return CascadeModel(**modules, settings=payload["settings"])


def build_predictor(
    model: CascadeModel,
    device: str | torch.device,
    tta: bool | None = None,
    fp16: bool = True,
    min_enhancing_voxels: int | None = None,
):
    """A CascadePredictor with the checkpoint's settings (``tta`` None: the trained default)."""
    from cascade.data.transforms import build_preprocessing
    from cascade.inference.cascade import CascadePredictor
    from cascade.inference.multiview import slab_batch_size

    settings = model.settings
    inference = settings["inference"]
    return CascadePredictor(
        stage1_net=model.stage1,
        stage2_net=model.stage2,
        mix=model.mix,
        preprocessing=build_preprocessing(**settings["preprocessing"]),
        slab_depth=settings["slab_depth"],
        views=settings["views"],
        stage1_plane_size=settings["slab_size"],
        patch_size=settings["patch_size"],
        overlap=inference["overlap"],
        roi_margin=inference["roi_margin"],
        stage1_batch_size=slab_batch_size(inference, device),
        stage2_batch_size=inference["window_batch_size"],
        device=device,
        fp16=fp16,
        tta=inference["tta"] if tta is None else tta,
        min_enhancing_voxels=(
            settings.get("min_enhancing_voxels")
            if min_enhancing_voxels is None
            else min_enhancing_voxels
        ),
    )
