"""``check_config``: the first problem of a composed training config, in one line, before any data
are read: a key added to a schema node, a value left ``???`` or interpolating a missing key, a
value rule broken, a ``_target_`` that does not import or a key that is no argument of it, or
more GPUs than the machine has."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, ValidationError

from cascade.config.rules import RULES, agreement_problem
from cascade.config.suggestions import did_you_mean, join_key, unknown_key


class ConfigError(ValueError):
    """The composed config cannot run; the message names the key and what is wrong, in one line."""


# Keys Hydra's instantiate reads itself.
_INSTANTIATE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
_TRAINER_STAGES = ("stage1", "stage2")
# Classes that hand their other keywords on: their valid keys include the receiver's arguments.
_PASSES_KEYWORDS_TO = {"lightning.pytorch.loggers.wandb.WandbLogger": "wandb.init"}
_ABSENT = object()


def check_config(cfg: DictConfig, gpus: int | None = None) -> None:
    """Raise ConfigError for the first problem of a composed training config.

    Cheap checks first; the last import the classes of the ``_target_`` nodes and the Lightning
    Trainer to read their arguments, as the run would a moment later, and compare the GPUs the
    trainer asks for with `gpus` (None: those torch sees on this machine).
    """
    problem = (
        _added_key(cfg)
        or _leaf_problem(cfg)
        or _rule_problem(cfg)
        or agreement_problem(cfg)
        or _target_problem(cfg)
        or _trainer_problem(cfg.trainer)
        or _device_problem(cfg.trainer, gpus)
    )
    if problem:
        raise ConfigError(problem)


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
            return unknown_key(join_key(prefix, key), valid)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and _has_content(child):
            problem = _added_key(child, join_key(prefix, key))
            if problem:
                return problem
    return None


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(full key, parent container, key) of every value, interpolations left unresolved."""
    for key in range(len(node)) if isinstance(node, ListConfig) else node.keys():
        child = node._get_node(key)
        if _has_content(child):
            yield from _leaves(child, join_key(prefix, key))
        else:
            yield join_key(prefix, key), node, key


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
            siblings = [join_key(parent, name) for name in siblings or ()]
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
            yield from _target_nodes(node._get_node(key), join_key(prefix, key))


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
            return unknown_key(join_key(key, name), names)
    return None


def _gpus_asked(devices: Any, gpus: int) -> int:
    """GPUs a Trainer's ``devices`` takes on a machine with `gpus`: a count, -1 or "auto" (all,
    at least one), a list of indices or a string of them ("0,1"); the highest index counts."""
    if devices in (-1, "-1", "auto"):
        return max(gpus, 1)
    if isinstance(devices, str):
        devices = [int(index) for index in devices.split(",") if index.strip()]
        if len(devices) == 1:  # "2" is a count, as Lightning reads it
            return devices[0]
    if isinstance(devices, (list, tuple, ListConfig)):
        return max((int(index) + 1 for index in devices), default=0)
    return int(devices)


def _device_problem(trainer: DictConfig, gpus: int | None) -> str | None:
    """More GPUs than the machine has (``accelerator: auto`` asks for GPUs only where there are
    some: without, Lightning runs on the CPU). Lightning would fail only after the data were
    checked and preprocessed, with a message that names no override."""
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    for stage in _TRAINER_STAGES:
        # a stage's own value wins, as the pipeline merges them
        accelerator_key, devices_key = (
            f"{stage}.{key}" if key in trainer[stage] else key for key in ("accelerator", "devices")
        )
        accelerator = OmegaConf.select(trainer, accelerator_key, default="auto")
        devices = OmegaConf.select(trainer, devices_key, default=1)
        if accelerator not in ("gpu", "cuda") and not (accelerator == "auto" and gpus):
            continue
        try:
            asked = _gpus_asked(_show(devices), gpus)
        except (TypeError, ValueError):
            return (
                f"trainer.{devices_key}={devices} is not a GPU count, -1, auto or a list of GPU "
                "indices"
            )
        if asked <= gpus:
            continue
        fix = "trainer=default to run on the CPU"
        if gpus:
            fix = f"trainer.devices={gpus} trainer.strategy=auto, or trainer=default for one device"
        return (
            f"trainer.{accelerator_key}={accelerator} trainer.{devices_key}={_show(devices)} "
            f"asks for {asked} GPU(s), this machine has {gpus or 'none'}: add {fix}"
        )
    return None
