"""The weights files the stages write and read: only tensors, so they are read with
``torch.load(weights_only=True)`` and nothing in them can run code."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from cascade.io import atomic_path
from cascade.pipeline.errors import StageError


def save_weights(path: Path, modules: Mapping[str, nn.Module]) -> None:
    """{name: state dict} of `modules`, written atomically."""
    with atomic_path(path) as temporary:
        torch.save({name: module.state_dict() for name, module in modules.items()}, temporary)


def read_stage1_weights(path: Path) -> dict[str, torch.Tensor]:
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


def read_stage2_weights(path: Path, net: nn.Module, mix: nn.Module) -> None:
    """Load the file `stage=2` writes ({"net", "mix"}) into `net` and `mix`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["net"])
    mix.load_state_dict(state["mix"])
