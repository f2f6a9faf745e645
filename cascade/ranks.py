"""Ranks: this process's global rank before any Trainer runs, as Lightning's cluster environments
read it, and the rank inside an initialised process group.

Lightning sets `rank_zero_only.rank` when a fit's strategy starts, and at import reads only
RANK, LOCAL_RANK, SLURM_PROCID and JSM_NAMESPACE_RANK. A run whose stages are all reused starts
no Trainer, and a node started by hand for ``trainer.num_nodes`` > 1 has only NODE_RANK: set the
rank at start-up from every variable the launchers use, so only global rank 0 writes outputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_only

_GLOBAL_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "OMPI_COMM_WORLD_RANK")


def global_rank_from_environment(devices_per_node: int) -> int:
    """The launcher's global rank: RANK (torchrun), SLURM_PROCID, ... or, for processes started
    per node, NODE_RANK * devices_per_node + LOCAL_RANK; 0 outside any launcher."""
    for name in _GLOBAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return node * max(int(devices_per_node), 1) + local


def set_rank_from_environment(devices_per_node: int | str) -> int:
    """Set Lightning's `rank_zero_only.rank` from the environment (see module notes)."""
    devices = int(devices_per_node) if str(devices_per_node).isdigit() else 1
    rank_zero_only.rank = global_rank_from_environment(devices)
    return rank_zero_only.rank


def is_global_zero() -> bool:
    return rank_zero_only.rank == 0


def distributed_rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_share(case_ids: Sequence[str], rank: int, world: int) -> list[str]:
    """This rank's cases of `case_ids`; like DistributedSampler, the list is padded by repeating
    cases so every rank runs the same number of steps (DDP needs it) and none is empty."""
    case_ids = list(case_ids)
    if not case_ids:
        return []
    padded = case_ids + case_ids[: -len(case_ids) % world]
    return padded[rank::world]
