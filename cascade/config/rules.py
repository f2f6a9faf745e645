"""What a type cannot say about a config value: ranges, choices, lengths, and agreements between
keys. A rule returns what is wrong with a value, or None."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig

from cascade.config.suggestions import did_you_mean
from cascade.cores import OMP_WAITING
from cascade.data.labels import CLASS_NAMES, SCHEMES
from cascade.synthesis.variation import ScanVariation

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
    "omp_waiting": one_of(*OMP_WAITING),
    "ensemble_members": at_least(1),
    "synthetic.cases": at_least(1),
    "synthetic.shape": sizes(3),
    "data.generator": optional(one_of("phantom", "realistic")),
    "synthetic.workers": optional(at_least(1)),
    "synthetic.thick_slices": between(0, 1),
    "synthetic.faint_patches": between(0, 1),
    "synthetic.contrast_floor": between(0, 1, open_low=True),
    "data.labels": one_of("auto", *SCHEMES),
    "data.split.val_count": optional(at_least(1)),
    "data.split.val_fraction": between(0, 1, open_low=True, open_high=True),
    "data.split.test_count": at_least(0),
    "data.stage1.slab_depth": at_least(1),
    "data.stage1.slab_size": sizes(2),
    "data.stage1.tumor_fraction": probability,
    "data.stage1.lookalike_fraction": probability,
    "data.stage1.lookalike_margin": at_least(0),
    "data.stage1.train_slabs_per_epoch": at_least(1),
    "data.stage1.batch_size": at_least(1),
    "data.stage1.num_workers": at_least(0),
    "data.stage1.pool_size": at_least(1),
    "data.stage1.samples_per_case": at_least(1),
    "data.stage1.flip_probability": probability,
    "data.stage1.intensity_probability": probability,
    "data.stage1.log_gamma": at_least(0),
    "data.stage1.bias_field_coefficient": at_least(0),
    "data.stage2.patch_size": sizes(3),
    "data.stage2.label_probabilities": by_class_name,
    "data.stage2.lookalike_fraction": probability,
    "data.stage2.lookalike_margin": at_least(0),
    "data.stage2.patches_per_epoch": at_least(1),
    "data.stage2.batch_size": at_least(1),
    "data.stage2.num_workers": at_least(0),
    "data.stage2.pool_size": at_least(1),
    "data.stage2.samples_per_case": at_least(1),
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
    stage1 = cfg.data.stage1
    if stage1.tumor_fraction + stage1.lookalike_fraction > 1:
        return (
            f"data.stage1.tumor_fraction={stage1.tumor_fraction} and "
            f"lookalike_fraction={stage1.lookalike_fraction} share more than all the slabs"
        )
    if cfg.stage1_checkpoint and cfg.ensemble_members > 1:
        return (
            f"stage1_checkpoint gives one Stage 1, ensemble_members={cfg.ensemble_members} "
            "asks for one per member: leave one of them out"
        )
    if not cfg.data.generate:
        return None
    if cfg.data.generator is None:
        return "data.generate=true needs data.generator (phantom or realistic)"
    if cfg.data.generator != "realistic":
        for setting in fields(ScanVariation):  # each off at its default
            if cfg.synthetic[setting.name] != setting.default:
                return (
                    f"synthetic.{setting.name}={cfg.synthetic[setting.name]} needs data=realistic: "
                    f"the {cfg.data.generator} generator draws no {setting.metadata['draws']}"
                )
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
