"""Hydra plumbing shared by the entry points: where conf/ lives, resolvers, DDP re-launches."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"

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


def register_resolvers() -> None:
    """Resolvers for derived sizes: ``${mul:a,b}``, ``${add:a,b}`` (Stage 1's input channels,
    4 x slab depth; Stage 2's, 4 + classes) and ``${label_classes:scheme}``."""
    resolvers = {
        "mul": lambda a, b: int(a) * int(b),
        "add": lambda a, b: int(a) + int(b),
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
