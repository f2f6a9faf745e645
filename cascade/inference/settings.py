"""What predicting needs besides the weights, as one typed object: training writes it into
``cascade.ckpt`` (``InferenceSettings.from_config``), the checkpoint reads it back
(``from_stored``) and the predictor is built from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cascade.data.labels import DEFAULT_SCHEME


class SettingsError(ValueError):
    """Stored settings that cannot be read; the message says which key."""


@dataclass(frozen=True)
class InferenceSettings:
    preprocessing: dict[str, Any]  # the Preprocessor's settings (conf/preprocessing)
    slab_depth: int  # Stage 1: slices per slab
    views: tuple[str, ...]
    slab_size: tuple[int, int]  # Stage-1 slices are padded to the training slab size
    patch_size: tuple[int, int, int]  # Stage-2 sliding windows
    overlap: float
    roi_margin: int  # voxels around Stage 1's tumor box where Stage 2 runs
    window_batch_size: int
    slab_batch_size: int  # Stage-1 slabs per forward pass on a GPU
    cpu_slab_batch_size: int  # and on a CPU
    tta: bool  # Stage 2 averaged over its 8 mirrorings by default
    stage1_tta: bool  # each Stage-1 view over its 4 in-plane mirrorings
    min_enhancing_voxels: int | None  # the run's post-processing
    largest_tumor_component: bool
    labels: str  # the label scheme the nets were trained on

    @classmethod
    def from_config(cls, cfg: DictConfig) -> InferenceSettings:
        inference = cfg.model.inference
        return cls(
            preprocessing=OmegaConf.to_container(cfg.preprocessing, resolve=True),
            slab_depth=cfg.data.stage1.slab_depth,
            views=tuple(cfg.data.stage1.views),
            slab_size=tuple(cfg.data.stage1.slab_size),
            patch_size=tuple(cfg.data.stage2.patch_size),
            overlap=inference.overlap,
            roi_margin=inference.roi_margin,
            window_batch_size=inference.window_batch_size,
            slab_batch_size=inference.slab_batch_size,
            cpu_slab_batch_size=inference.cpu_slab_batch_size,
            tta=inference.tta,
            stage1_tta=inference.stage1_tta,
            min_enhancing_voxels=cfg.postprocessing.min_enhancing_voxels,
            largest_tumor_component=cfg.postprocessing.largest_tumor_component,
            labels=cfg.data.labels,
        )

    def to_stored(self) -> dict[str, Any]:
        """Plain values in the layout cascade.ckpt has always used (inference keys nested)."""
        return {
            "preprocessing": dict(self.preprocessing),
            "slab_depth": self.slab_depth,
            "views": list(self.views),
            "slab_size": list(self.slab_size),
            "patch_size": list(self.patch_size),
            "inference": {
                "overlap": self.overlap,
                "roi_margin": self.roi_margin,
                "window_batch_size": self.window_batch_size,
                "slab_batch_size": self.slab_batch_size,
                "cpu_slab_batch_size": self.cpu_slab_batch_size,
                "tta": self.tta,
                "stage1_tta": self.stage1_tta,
            },
            "min_enhancing_voxels": self.min_enhancing_voxels,
            "largest_tumor_component": self.largest_tumor_component,
            "labels": self.labels,
        }

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> InferenceSettings:
        """Settings of any checkpoint version; keys that older checkpoints lack take the value
        those checkpoints were used with (no label scheme: BraTS 2020; no CPU batch size: the
        GPU one; no largest-component rule or Stage-1 mirroring: off)."""
        try:
            inference = stored["inference"]
            return cls(
                preprocessing=dict(stored["preprocessing"]),
                slab_depth=int(stored["slab_depth"]),
                views=tuple(stored["views"]),
                slab_size=tuple(stored["slab_size"]),
                patch_size=tuple(stored["patch_size"]),
                overlap=float(inference["overlap"]),
                roi_margin=int(inference["roi_margin"]),
                window_batch_size=int(inference["window_batch_size"]),
                slab_batch_size=int(inference["slab_batch_size"]),
                cpu_slab_batch_size=int(
                    inference.get("cpu_slab_batch_size", inference["slab_batch_size"])
                ),
                tta=bool(inference["tta"]),
                stage1_tta=bool(inference.get("stage1_tta", False)),
                min_enhancing_voxels=stored.get("min_enhancing_voxels"),
                largest_tumor_component=bool(stored.get("largest_tumor_component", False)),
                labels=stored.get("labels") or DEFAULT_SCHEME.name,
            )
        except KeyError as error:
            raise SettingsError(f"the settings have no {error.args[0]!r}") from None

    def slab_batch_size_on(self, device_type: str) -> int:
        """A GPU needs large batches to be busy; on a CPU small ones run faster, as one slab's
        activations stay in cache."""
        return self.cpu_slab_batch_size if device_type == "cpu" else self.slab_batch_size
