"""``cascade.ckpt``: both stages, the residual mix and everything needed to predict new cases; an
ensemble's file holds those modules once per member, all built from the same network settings.

The file holds only tensors and plain containers, so it is read with
``torch.load(weights_only=True)`` (no arbitrary unpickling), and networks are rebuilt only
from the explicit list of cascade network classes below, called with plain values: nothing in
the file is instantiated or imported by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cascade.data.cases import MODALITIES
from cascade.data.labels import SCHEMES, LabelScheme, get_scheme
from cascade.inference.settings import InferenceSettings, SettingsError
from cascade.io import atomic_path
from cascade.nn.attention_unet3d import AttentionUNet3d
from cascade.nn.members import CascadeNets
from cascade.nn.residual_mix import LearnableResidualMix
from cascade.nn.unet2d import UNet2d

FORMAT = "cascade-checkpoint"
# 2: the weights are a list of members; 1 (still read): the weights of one cascade
VERSION = 2
READABLE_VERSIONS = (1, 2)
# The only classes a checkpoint may name, by their config target.
NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (UNet2d, AttentionUNet3d, LearnableResidualMix)
}
_PLAIN_TYPES = (type(None), bool, int, float, str)
_MODULES = ("stage1", "stage2", "mix")


class CheckpointError(ValueError):
    """A file that is not a usable cascade checkpoint; the message names the file."""


@dataclass
class CascadeModel:
    """The trained cascade (one member, or an ensemble's several) as plain modules plus the
    settings inference needs."""

    members: list[CascadeNets]
    settings: InferenceSettings

    @property
    def scheme(self) -> LabelScheme:
        """The label scheme the nets were trained on."""
        return get_scheme(self.settings.labels)


def save_checkpoint(path: Path, model: CascadeModel, network_configs: dict[str, dict]) -> None:
    """Write ``cascade.ckpt`` atomically; ``network_configs`` are the Hydra node of each module."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "modalities": list(MODALITIES),
        "networks": network_configs,
        "settings": model.settings.to_stored(),
        "members": [
            {name: getattr(member, name).state_dict() for name in _MODULES}
            for member in model.members
        ],
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, _PLAIN_TYPES) for item in value)
    return isinstance(value, _PLAIN_TYPES)


def _build(name: str, node: Any, path: Path) -> nn.Module:
    """The network `name` from its stored config: a listed class called with plain values."""
    if not isinstance(node, dict):
        raise CheckpointError(f"{path}: network '{name}' is not a mapping of settings")
    target = node.get("_target_")
    network_class = NETWORK_CLASSES.get(target) if isinstance(target, str) else None
    if network_class is None:
        raise CheckpointError(f"{path}: network '{name}' names {target!r}, not a cascade network")
    arguments = {}
    for key, value in node.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or key.startswith("_") or not _is_plain(value):
            raise CheckpointError(
                f"{path}: network '{name}' setting {key!r} is not a plain value; refused"
            )
        arguments[key] = value
    try:
        return network_class(**arguments)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: network '{name}' cannot be built ({error})") from None


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
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')}, expected one of "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    if tuple(payload["modalities"]) != MODALITIES:
        raise CheckpointError(
            f"{path}: trained on modalities {payload['modalities']}, expected {MODALITIES}"
        )
    try:
        settings = InferenceSettings.from_stored(payload.get("settings", {}))
    except SettingsError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if settings.labels not in SCHEMES:
        raise CheckpointError(f"{path}: unknown label scheme {settings.labels!r} in the settings")
    stored = [payload.get("state_dicts")] if payload["version"] == 1 else payload.get("members")
    if not isinstance(stored, list) or not stored or not all(isinstance(s, dict) for s in stored):
        raise CheckpointError(f"{path}: the checkpoint holds no trained cascade")
    members = [_member(state_dicts, payload["networks"], path) for state_dicts in stored]
    return CascadeModel(members, settings=settings)


def _member(state_dicts: dict, networks: dict, path: Path) -> CascadeNets:
    """One member's three modules, built from the shared settings and given its weights."""
    modules = {}
    for name in _MODULES:
        module = _build(name, networks[name], path)
        try:
            module.load_state_dict(state_dicts[name])
        except (KeyError, RuntimeError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise CheckpointError(
                f"{path}: the {name} weights do not fit its network ({first_line})"
            ) from None
        modules[name] = module.eval()
    return CascadeNets(**modules)


def join_models(models: Sequence[CascadeModel], paths: Sequence[Path]) -> CascadeModel:
    """One ensemble of every member of `models` (read from `paths`, in order). They must share
    their settings: the predictor preprocesses a case once for all members and post-processes
    their mean."""
    first = models[0]
    for model, path in zip(models[1:], paths[1:], strict=True):
        differing = [
            field.name
            for field in dataclasses.fields(first.settings)
            if getattr(model.settings, field.name) != getattr(first.settings, field.name)
        ]
        if differing:
            raise CheckpointError(
                f"{path}: {', '.join(differing)} not as in {paths[0]}; "
                "an ensemble's members share their settings"
            )
    return CascadeModel([member for model in models for member in model.members], first.settings)


def build_predictor(
    model: CascadeModel,
    device: str | torch.device,
    tta: bool | None = None,
    fp16: bool = True,
    min_enhancing_voxels: int | None = None,
    cpu_bf16: bool = False,
    largest_tumor_component: bool | None = None,
):
    """A CascadePredictor with the checkpoint's settings; ``tta`` (both stages' mirroring),
    ``min_enhancing_voxels`` (0: off) and ``largest_tumor_component`` override the stored ones
    where not None. ``cpu_bf16`` takes the fast bf16 path on a CPU that has it
    (cascade.inference.precision)."""
    from cascade.data.preprocess import Preprocessor
    from cascade.inference.cascade import CascadePredictor

    settings = model.settings
    return CascadePredictor(
        members=model.members,
        preprocessing=Preprocessor.from_settings(settings.preprocessing),
        slab_depth=settings.slab_depth,
        views=settings.views,
        stage1_plane_size=settings.slab_size,
        patch_size=settings.patch_size,
        overlap=settings.overlap,
        roi_margin=settings.roi_margin,
        stage1_batch_size=settings.slab_batch_size_on(torch.device(device).type),
        stage2_batch_size=settings.window_batch_size,
        device=device,
        fp16=fp16,
        tta=settings.tta if tta is None else tta,
        stage1_tta=settings.stage1_tta if tta is None else tta,
        min_enhancing_voxels=(
            settings.min_enhancing_voxels if min_enhancing_voxels is None else min_enhancing_voxels
        ),
        largest_tumor_component=(
            settings.largest_tumor_component
            if largest_tumor_component is None
            else largest_tumor_component
        ),
        scheme=model.scheme,
        cpu_bf16=cpu_bf16,
    )
