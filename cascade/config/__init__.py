"""Hydra plumbing shared by the entry points: where conf/ lives, the schema and resolvers, DDP
re-launches, and one-line messages for a config Hydra cannot compose."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from cascade.config.schema import register_schemas
from cascade.config.suggestions import did_you_mean, unknown_key

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

# Set by rank 0 before Lightning starts the other DDP ranks by re-running the command line.
_DDP_JOB_ENV = "CASCADE_DDP_JOB"


def _label_classes(labels: str) -> int:
    from cascade.data.labels import get_scheme

    if labels == "auto":
        raise ValueError(
            "data.labels is auto: the class count is known once the data are read "
            "(cascade.train settles it at start-up; set data.labels=<scheme> to fix it)"
        )
    return get_scheme(labels).num_classes


def _modality_count() -> int:
    from cascade.data.cases import MODALITIES

    return len(MODALITIES)


def register_resolvers() -> None:
    """What composing conf/ needs: the schema of train.yaml (``cascade.config.schema``) and the
    resolvers of derived sizes, ``${mul:a,b}``, ``${add:a,b}``, ``${modality_count:}`` (Stage 1's
    input channels, modalities x slab depth; Stage 2's, modalities + classes) and
    ``${label_classes:scheme}``."""
    register_schemas()
    resolvers = {
        "mul": lambda a, b: int(a) * int(b),
        "add": lambda a, b: int(a) + int(b),
        "modality_count": _modality_count,
        "label_classes": _label_classes,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def export_job_for_ddp_children(run_dir: Path, overrides: list[str]) -> None:
    """Remember this job's folder and overrides so re-launched DDP ranks join it.

    Lightning starts ranks 1..N-1 by re-running ``sys.argv``. Under ``-m`` that would re-run the
    whole sweep and under a plain run it would open a new timestamped folder; the children instead
    re-run exactly this job, in this folder.
    """
    os.environ[_DDP_JOB_ENV] = json.dumps({"run_dir": str(run_dir), "overrides": overrides})


def pin_ddp_child_to_parent_job() -> None:
    """In a re-launched DDP rank, rewrite the command line to the parent's single job."""
    job = os.environ.get(_DDP_JOB_ENV)
    if not job or os.environ.get("LOCAL_RANK", "0") == "0":
        return
    job = json.loads(job)
    rank = os.environ["LOCAL_RANK"]
    sys.argv = [
        sys.argv[0],
        *job["overrides"],
        f"hydra.run.dir={job['run_dir']}",
        "hydra.output_subdir=null",
        f"hydra.job.name=ddp_rank_{rank}",
    ]


def experiment_without_plus(overrides: list[str]) -> list[str]:
    """``+experiment=NAME`` as ``experiment=NAME``: train.yaml's defaults hold an
    ``experiment: null`` slot, which Hydra would refuse to append to ("Could not append"), and
    ``+experiment=NAME`` is the form many Hydra projects document."""
    return [item[1:] if item.startswith("+experiment=") else item for item in overrides]


def composition_error_line(error: Exception) -> str:
    """One line for a config Hydra could not compose: the full key and the nearest valid one,
    and where it was set (a file of conf/, or the command line)."""
    text = str(error)
    located = re.match(r"In '([^']+)': ", text)
    if located:
        where = f", in {located[1]}"
    elif re.match("Could not override|Could not append|Error merging override", text):
        where = ", on the command line"
    else:
        where = ""
    cause = error.__cause__ or error.__context__
    if isinstance(error, MissingConfigException):
        group, _, name = error.missing_cfg_file.rpartition("/")
        if error.options:
            # an option of train.yaml's defaults list or of the command line
            where = "" if located and located[1] == "train" else where
            return f"{group} has no option {name}{did_you_mean(name, error.options)}{where}"
        if group.startswith("hydra/"):
            return f"{error.missing_cfg_file} not found{where}: is the Hydra plugin installed?"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        if is_dataclass(cause.object_type):
            valid = [entry.name for entry in fields(cause.object_type)]
            return unknown_key(cause.full_key, valid) + where
        # a dict handed to a library class (the Trainer, an optimizer): it may take a new key
        siblings = list(cause.parent_node or ())
        if did_you_mean(cause.full_key.rpartition(".")[2], siblings):
            return unknown_key(cause.full_key, siblings) + where
        return f"unknown key {cause.full_key}{where} (add a key with +{cause.full_key}=...)"
    if isinstance(cause, ValidationError) and cause.full_key:
        return f"{cause.full_key}: {cause.msg.splitlines()[0]}{where}"
    lines = text.split("\nConfig search path:")[0].splitlines()
    return " ".join(line.strip() for line in lines if line.strip())
