"""The shape of the training config: every key of conf/, its type, and the values it may take.

``TrainConfig`` is stored in Hydra's ConfigStore as ``train_schema``, the first entry of
train.yaml's defaults, so Hydra rejects an unknown key or a value of the wrong type while it
composes: in train.yaml, in every group option, in experiments and on the command line. The values
live in conf/; every field here is ``???`` so that none is repeated. What a type cannot say
(ranges, choices, lengths, agreements between keys, the keyword arguments of the third-party
classes the open nodes are handed to) ``check_config`` checks once the config is composed, before
any data are read. A key added to or removed from conf/ is added to or removed from its dataclass.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, ValidationError

from cascade.data.labels import CLASS_NAMES, SCHEMES


class ConfigError(ValueError):
    """The composed config cannot run; the message names the key and what is wrong, in one line."""


# ---------------------------------------------------------------------------------------- schema
# Nodes handed whole to third-party classes (the Lightning Trainer, torch optimizers and
# schedulers, loggers) are open dicts: their keys are checked against the class's arguments.


@dataclass
class SyntheticConfig:
    cases: int = MISSING
    shape: list[int] = MISSING
    seed: int = MISSING
    # phantom: the fast ellipsoid brains of the tests; realistic: MNI152 anatomy (data=realistic)
    generator: str = "phantom"
    workers: int = 1  # cases generated in parallel processes


@dataclass
class EvaluationConfig:
    overlay_cases: int = MISSING


@dataclass
class PostprocessingConfig:
    min_enhancing_voxels: int | None = MISSING


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
    train_slabs_per_epoch: int = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
    flip_probability: float = MISSING
    intensity_probability: float = MISSING
    log_gamma: float = MISSING
    bias_field_coefficient: float = MISSING


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
    patches_per_epoch: int = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
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
    alpha_lr: float | None = MISSING
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
    optimized_metric: str = MISSING
    cache_dir: str = MISSING
    fit: FitConfig = field(default_factory=FitConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    postprocessing: PostprocessingConfig = field(default_factory=PostprocessingConfig)


def register_schemas() -> None:
    """Store the schema under the name train.yaml's defaults list gives it."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# ------------------------------------------------------------------------------------ value rules
# A rule says what is wrong with a value, or returns None.
Rule = Callable[[Any], "str | None"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def between(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Rule:
    def rule(value: Any) -> str | None:
        if _is_number(value):
            above = value > low if open_low else value >= low
            below = value < high if open_high else value <= high
            if above and below:
                return None
        return f"must be in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"

    return rule


def at_least(minimum: float) -> Rule:
    def rule(value: Any) -> str | None:
        return None if _is_number(value) and value >= minimum else f"must be at least {minimum}"

    return rule


probability = between(0, 1)


def positive(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "must be positive"


def one_of(*allowed: Any) -> Rule:
    def rule(value: Any) -> str | None:
        # by type too: true is not 1
        if any(type(value) is type(option) and value == option for option in allowed):
            return None
        names = [str(option) for option in allowed]
        return f"must be one of {', '.join(names)}{did_you_mean(str(value), names)}"

    return rule


def optional(rule: Rule) -> Rule:
    return lambda value: None if value is None else rule(value)


def each(rule: Rule) -> Rule:
    return lambda values: next(filter(None, map(rule, values)), None)


def values(count: int, rule: Rule) -> Rule:
    """`count` values, each passing `rule`."""

    def check(items: list) -> str | None:
        if len(items) != count:
            return f"must hold {count} values"
        problem = each(rule)(items)
        return problem and f"values {problem}"

    return check


def sizes(count: int) -> Rule:
    return values(count, at_least(1))


def ordered_pair(rule: Rule) -> Rule:
    def check(pair: list) -> str | None:
        problem = values(2, rule)(pair)
        if problem is None and pair[0] > pair[1]:
            problem = "must be [low, high] with low <= high"
        return problem

    return check


def by_class_name(weights: dict[str, float]) -> str | None:
    """Weights by class name, as the label schemes name their classes."""
    for name, weight in weights.items():
        if name not in CLASS_NAMES:
            return f"names no class {name}{did_you_mean(name, CLASS_NAMES)}"
        if weight < 0:
            return f"gives {name} a negative weight"
    return None


def metric_key(name: str) -> str | None:
    """A per-region mean of metrics.json: [stage1_](dice|hd95)_(REGION|mean), or alpha."""
    regions = sorted({region for scheme in SCHEMES.values() for region in scheme.region_names})
    keys = ["alpha"] + [
        f"{prefix}{metric}_{region}"
        for prefix in ("", "stage1_")
        for metric in ("dice", "hd95")
        for region in (*regions, "mean")
    ]
    return None if name in keys else f"is not a metric of metrics.json{did_you_mean(name, keys)}"


def net_option(kind: str) -> Rule:
    """One of cascade.nn.blocks' NORMS or ACTIVATIONS (imported on use: it needs torch)."""

    def rule(value: str) -> str | None:
        return one_of(*getattr(importlib.import_module("cascade.nn.blocks"), kind))(value)

    return rule


RULES: dict[str, Rule] = {
    "stage": one_of(1, 2, "all"),
    "optimized_metric": metric_key,
    "synthetic.cases": at_least(1),
    "synthetic.shape": sizes(3),
    "synthetic.generator": one_of("phantom", "realistic"),
    "synthetic.workers": at_least(1),
    "data.labels": one_of("auto", *SCHEMES),
    "data.split.val_count": optional(at_least(1)),
    "data.split.val_fraction": between(0, 1, open_low=True, open_high=True),
    "data.split.test_count": at_least(0),
    "data.stage1.slab_depth": at_least(1),
    "data.stage1.slab_size": sizes(2),
    "data.stage1.tumor_fraction": probability,
    "data.stage1.train_slabs_per_epoch": at_least(1),
    "data.stage1.batch_size": at_least(1),
    "data.stage1.num_workers": at_least(0),
    "data.stage1.flip_probability": probability,
    "data.stage1.intensity_probability": probability,
    "data.stage1.log_gamma": at_least(0),
    "data.stage1.bias_field_coefficient": at_least(0),
    "data.stage2.patch_size": sizes(3),
    "data.stage2.label_probabilities": by_class_name,
    "data.stage2.patches_per_epoch": at_least(1),
    "data.stage2.batch_size": at_least(1),
    "data.stage2.num_workers": at_least(0),
    "data.stage2.flip_axes": each(one_of(0, 1, 2)),
    "data.stage2.intensity_scale": at_least(0),
    "data.stage2.intensity_shift": at_least(0),
    "data.stage2.perturbation.p": probability,
    "data.stage2.perturbation.max_radius": at_least(0),
    "data.stage2.perturbation.drop_probability": probability,
    "data.stage2.perturbation.blend": ordered_pair(probability),
    "data.stage2.perturbation.noise_std": at_least(0),
    "preprocessing.margin": at_least(0),
    "preprocessing.lower_percentile": between(0, 100),
    "preprocessing.upper_percentile": between(0, 100),
    "preprocessing.spacing": values(3, positive),
    "model.stage1.filters": at_least(1),
    "model.stage1.depth": at_least(1),
    "model.stage1.norm": net_option("NORMS"),
    "model.stage1.activation": net_option("ACTIVATIONS"),
    "model.stage2.filters": at_least(1),
    "model.stage2.depth": at_least(2),  # at least one skip, so at least one attention gate
    "model.stage2.norm": net_option("NORMS"),
    "model.stage2.activation": net_option("ACTIVATIONS"),
    "model.mix.init": between(0, 1, open_low=True, open_high=True),
    "model.alpha_lr": optional(positive),
    "model.optimizer.lr": positive,
    "model.loss.class_weights": by_class_name,
    "model.loss.dice_weight": at_least(0),
    "model.loss.ce_weight": at_least(0),
    "model.inference.overlap": between(0, 1, open_high=True),
    "model.inference.roi_margin": at_least(0),
    "model.inference.window_batch_size": at_least(1),
    "model.inference.slab_batch_size": at_least(1),
    "model.inference.cpu_slab_batch_size": at_least(1),
    "trainer.num_nodes": at_least(1),
    "trainer.log_every_n_steps": at_least(1),
    "trainer.stage1.max_epochs": at_least(1),
    "trainer.stage1.check_val_every_n_epoch": optional(at_least(1)),
    "trainer.stage2.max_epochs": at_least(1),
    "trainer.stage2.check_val_every_n_epoch": optional(at_least(1)),
    "evaluation.overlay_cases": at_least(0),
    "postprocessing.min_enhancing_voxels": optional(at_least(0)),
}


def agreement_problem(cfg: DictConfig) -> str | None:
    """Rules between keys."""
    lower, upper = cfg.preprocessing.lower_percentile, cfg.preprocessing.upper_percentile
    if lower >= upper:
        return (
            f"preprocessing.lower_percentile={lower} must be below "
            f"preprocessing.upper_percentile={upper}"
        )
    if not cfg.data.generate:
        return None
    canvas, patch = list(cfg.synthetic.shape), list(cfg.data.stage2.patch_size)
    if any(size > room for size, room in zip(patch, canvas, strict=True)):
        return (
            f"data.stage2.patch_size={patch} is larger than the synthetic canvas "
            f"synthetic.shape={canvas}"
        )
    split = cfg.data.split
    if split.val_count is not None and split.val_count + split.test_count >= cfg.synthetic.cases:
        return (
            f"data.split.val_count={split.val_count} and test_count={split.test_count} leave no "
            f"training case of synthetic.cases={cfg.synthetic.cases}"
        )
    return None


# ------------------------------------------------------------------------------------ the check
# Keys Hydra's instantiate reads itself.
_INSTANTIATE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
_TRAINER_STAGES = ("stage1", "stage2")
# Classes that hand their other keywords on: their valid keys include the receiver's arguments.
_PASSES_KEYWORDS_TO = {"lightning.pytorch.loggers.wandb.WandbLogger": "wandb.init"}
_ABSENT = object()


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first problem of a composed training config.

    Cheap checks first; the last import the classes of the ``_target_`` nodes and the Lightning
    Trainer to read their arguments, as the run would a moment later.
    """
    problem = (
        _added_key(cfg)
        or _leaf_problem(cfg)
        or _rule_problem(cfg)
        or agreement_problem(cfg)
        or _target_problem(cfg)
        or _trainer_problem(cfg.trainer)
    )
    if problem:
        raise ConfigError(problem)


def did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, [str(name) for name in candidates], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_key(full_key: str, valid: Any) -> str:
    """``unknown key a.b.filtres (did you mean a.b.filters?)``: the nearest of `valid`, the keys
    a.b may hold, or (a short list) all of them."""
    parent, _, name = full_key.rpartition(".")
    valid = sorted({str(key) for key in valid})
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return f"unknown key {full_key} (did you mean {_join(parent, close[0])}?)"
    if len(valid) <= _LISTED_AT_MOST:
        return f"unknown key {full_key} (valid keys: {', '.join(valid)})"
    return f"unknown key {full_key}"


_LISTED_AT_MOST = 12


def _join(parent: str, key: Any) -> str:
    return f"{parent}[{key}]" if isinstance(key, int) else f"{parent}.{key}".lstrip(".")


def _has_content(node: Any) -> bool:
    """A dict or list node with content of its own (not None, ???, or an interpolation)."""
    return isinstance(node, (DictConfig, ListConfig)) and not (
        node._is_none() or node._is_missing() or node._is_interpolation()
    )


def _show(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _added_key(node: DictConfig, prefix: str = "") -> str | None:
    """A key added to a schema node with ``+key=value`` (Hydra lets that through)."""
    schema = OmegaConf.get_type(node)
    valid = [entry.name for entry in fields(schema)] if is_dataclass(schema) else None
    for key in node:
        if valid is not None and key not in valid:
            return unknown_key(_join(prefix, key), valid)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and _has_content(child):
            problem = _added_key(child, _join(prefix, key))
            if problem:
                return problem
    return None


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(full key, parent container, key) of every value, interpolations left unresolved."""
    for key in range(len(node)) if isinstance(node, ListConfig) else node.keys():
        child = node._get_node(key)
        if _has_content(child):
            yield from _leaves(child, _join(prefix, key))
        else:
            yield _join(prefix, key), node, key


def _leaf_problem(cfg: DictConfig) -> str | None:
    """A value left ``???``, or an interpolation of a key that does not exist."""
    for full_key, node, key in _leaves(cfg):
        if OmegaConf.is_missing(node, key):
            return f"{full_key} is not set (give {full_key}=...)"
        if not OmegaConf.is_interpolation(node, key):
            continue
        try:
            node[key]
        except InterpolationKeyError as error:
            missing = re.search(r"key '([^']+)'", str(error))[1]
            parent = missing.rpartition(".")[0]
            siblings = OmegaConf.select(cfg, parent) if parent else cfg
            siblings = [_join(parent, name) for name in siblings or ()]
            return (
                f"{full_key}={node._get_node(key)._value()} refers to unknown key {missing}"
                + did_you_mean(missing, siblings)
            )
        except ValidationError as error:
            return f"{full_key}: {str(error).splitlines()[0]}"
        except Exception:
            # other resolvers may need what start-up settles (data.labels=auto: the class count)
            continue
    return None


def _rule_problem(cfg: DictConfig) -> str | None:
    for key, rule in RULES.items():
        value = _show(OmegaConf.select(cfg, key, default=_ABSENT))
        if value is _ABSENT:  # a key of an open node that this config leaves out
            continue
        problem = rule(value)
        if problem:
            return f"{key}={value} {problem}"
    return None


def _target_nodes(node: Any, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig) and _has_content(node):
        if "_target_" in node:
            yield prefix, node
        for key in node:
            yield from _target_nodes(node._get_node(key), _join(prefix, key))


def _target_problem(cfg: DictConfig) -> str | None:
    """Every ``_target_`` imports; the keys of an open node are arguments of its target."""
    for key, node in _target_nodes(cfg):
        target = _imported(node._target_)
        if target is None:
            module = node._target_.rpartition(".")[0]
            known = [f"{module}.{name}" for name in dir(_imported(module) or object)]
            return f"{key}._target_={node._target_} cannot be imported" + did_you_mean(
                node._target_, known
            )
        if OmegaConf.get_type(node) is dict:
            # the trainer's per-stage nodes are checked by _trainer_problem
            stages = _TRAINER_STAGES if key == "trainer" else ()
            problem = _argument_problem(key, node, target, allowed=(*_INSTANTIATE_KEYS, *stages))
            if problem:
                return problem
    return None


def _imported(path: str) -> Any:
    """The object at a dotted path (a module, a class, a function), or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part, None)
        return found
    return None


def _trainer_problem(trainer: DictConfig) -> str | None:
    """Lightning Trainer arguments, shared and per stage."""
    from lightning import Trainer

    for stage in _TRAINER_STAGES:
        if not isinstance(trainer.get(stage), DictConfig):
            return f"trainer.{stage} is not set (the Trainer arguments of that stage)"
    for key, node, allowed in (
        ("trainer", trainer, (*_TRAINER_STAGES, "_target_")),
        *((f"trainer.{stage}", trainer[stage], ()) for stage in _TRAINER_STAGES),
    ):
        problem = _argument_problem(key, node, Trainer, allowed)
        if problem:
            return problem
    return None


def _argument_problem(key: str, node: DictConfig, target: Any, allowed=()) -> str | None:
    """The first key of `node` that is no argument of `target` (nor in `allowed`)."""
    parameters = [*inspect.signature(target).parameters.values()]
    receiver = _PASSES_KEYWORDS_TO.get(f"{target.__module__}.{target.__qualname__}")
    if receiver:
        parameters = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
        parameters += inspect.signature(_imported(receiver)).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None  # takes any keyword
    names = [parameter.name for parameter in parameters]
    for name in node:
        if name not in names and name not in allowed:
            return unknown_key(_join(key, name), names)
    return None
