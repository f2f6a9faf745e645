"""The shape of the training config: every key of conf/ and its type.

``TrainConfig`` is stored in Hydra's ConfigStore as ``train_schema``, the first entry of
train.yaml's defaults, so Hydra rejects an unknown key or a value of the wrong type while it
composes: in train.yaml, in every group option, in experiments and on the command line. The values
live in conf/; every field here is ``???`` so that none is repeated. What a type cannot say
(ranges, choices, lengths, agreements between keys: ``cascade.config.rules``; the keyword arguments
of the third-party classes the open nodes are handed to) ``cascade.config.check`` checks once the
config is composed, before any data are read. A key added to or removed from conf/ is added to or
removed from its dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Nodes handed whole to third-party classes (the Lightning Trainer, torch optimizers and
# schedulers, loggers) are open dicts: their keys are checked against the class's arguments.


@dataclass
class SyntheticConfig:
    cases: int = MISSING
    shape: list[int] = MISSING
    seed: int = MISSING
    workers: int | None = MISSING  # null: one per core of the job
    thick_slices: float = MISSING  # realistic: probability of a sequence in thick slices
    faint_patches: float = MISSING  # realistic: probability of a case with faint bright patches
    contrast_floor: float = MISSING  # realistic: contrast shrunk by a factor in [floor, 1]


@dataclass
class EvaluationConfig:
    overlay_cases: int = MISSING


@dataclass
class PostprocessingConfig:
    min_enhancing_voxels: int | None = MISSING
    largest_tumor_component: bool = MISSING


@dataclass
class SplitConfig:
    val_count: int | None = MISSING
    val_fraction: float = MISSING
    seed: int = MISSING
    test_count: int = MISSING
    test_cases: str | None = MISSING  # a file of case ids


@dataclass
class Stage1DataConfig:
    _target_: str = MISSING
    slab_depth: int = MISSING
    views: list[str] = MISSING
    slab_size: list[int] = MISSING
    tumor_fraction: float = MISSING
    lookalike_fraction: float = MISSING
    lookalike_flair_z: float = MISSING
    lookalike_margin: int = MISSING
    train_slabs_per_epoch: int = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
    pool_size: int = MISSING
    samples_per_case: int = MISSING
    flip_probability: float = MISSING
    intensity_probability: float = MISSING
    log_gamma: float = MISSING
    bias_field_coefficient: float = MISSING
    gamma_per_modality: bool = MISSING
    seed: int = MISSING


@dataclass
class PerturbationConfig:
    _target_: str = MISSING
    p: float = MISSING
    max_radius: int = MISSING
    drop_probability: float = MISSING
    blend: list[float] = MISSING
    noise_std: float = MISSING


@dataclass
class Stage2DataConfig:
    _target_: str = MISSING
    patch_size: list[int] = MISSING
    label_probabilities: dict[str, float] = MISSING
    lookalike_fraction: float = MISSING
    lookalike_flair_z: float = MISSING
    lookalike_margin: int = MISSING
    patches_per_epoch: int = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
    pool_size: int = MISSING
    samples_per_case: int = MISSING
    flip_axes: list[int] = MISSING
    intensity_scale: float = MISSING
    intensity_shift: float = MISSING
    perturbation: PerturbationConfig | None = MISSING  # null: off
    seed: int = MISSING


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    generate: bool = MISSING
    generator: str | None = MISSING
    labels: str = MISSING  # set to the detected scheme at start-up
    num_classes: int = MISSING
    split: SplitConfig = field(default_factory=SplitConfig)
    stage1: Stage1DataConfig = field(default_factory=Stage1DataConfig)
    stage2: Stage2DataConfig = field(default_factory=Stage2DataConfig)


@dataclass
class PreprocessingConfig:
    margin: int = MISSING
    lower_percentile: float = MISSING
    upper_percentile: float = MISSING
    orientation: str = MISSING
    spacing: list[float] = MISSING


@dataclass
class UNetConfig:
    _target_: str = MISSING
    in_channels: int = MISSING
    num_classes: int = MISSING
    filters: int = MISSING
    depth: int = MISSING
    norm: str = MISSING
    activation: str = MISSING


@dataclass
class MixConfig:
    _target_: str = MISSING
    init: float = MISSING


@dataclass
class LossConfig:
    _target_: str = MISSING
    class_weights: dict[str, float] = MISSING
    dice_weight: float = MISSING
    ce_weight: float = MISSING


@dataclass
class InferenceConfig:
    overlap: float = MISSING
    roi_margin: int = MISSING
    window_batch_size: int = MISSING
    slab_batch_size: int = MISSING
    cpu_slab_batch_size: int = MISSING
    tta: bool = MISSING
    stage1_tta: bool = MISSING
    cpu_bf16: bool = MISSING


@dataclass
class LightningConfig:
    # partials of the LightningModules, open: their keys are checked against the classes
    stage1: dict[str, Any] = MISSING
    stage2: dict[str, Any] = MISSING


@dataclass
class FitConfig:
    stage: str | None = MISSING
    dir: str | None = MISSING


@dataclass
class ModelConfig:
    stage1: UNetConfig = field(default_factory=UNetConfig)
    stage2: UNetConfig = field(default_factory=UNetConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    lightning: LightningConfig = field(default_factory=LightningConfig)
    compile: bool = MISSING
    channels_last: bool = MISSING
    alpha_lr: float | None = MISSING
    stage2_own_loss_weight: float = MISSING
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: dict[str, Any] = MISSING
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    scheduler: dict[str, Any] | None = MISSING


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: dict[str, Any] = MISSING  # lightning.Trainer arguments, per stage under stage1/2
    logger: dict[str, Any] | None = None  # logger=none: no experiment logger
    callbacks: dict[str, Any] = MISSING  # name -> a Lightning callback's _target_ node (or null)
    stage: Any = MISSING  # 1, 2 or all
    stage1_checkpoint: str | None = MISSING
    seed: int = MISSING
    ensemble_members: int = MISSING
    optimized_metric: str = MISSING
    omp_waiting: str = MISSING  # passive or spin
    cache_dir: str = MISSING
    fit: FitConfig = field(default_factory=FitConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    postprocessing: PostprocessingConfig = field(default_factory=PostprocessingConfig)


def register_schemas() -> None:
    """Store the schema under the name train.yaml's defaults list gives it."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
