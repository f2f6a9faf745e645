"""Stage 1's three-view priors of every case, written into the cache for Stage 2."""

from __future__ import annotations

import contextlib

import torch
from filelock import FileLock
from omegaconf import DictConfig
from torch import nn

from cascade.data.cache import PreprocessCache
from cascade.inference.multiview import slab_batch_size, write_priors
from cascade.inference.precision import autocast_dtype
from cascade.ranks import distributed_rank_and_world


def priors_device() -> torch.device | str:
    """This process's GPU where there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return "cpu"


def priors_precision(cfg: DictConfig) -> torch.dtype | None:
    """The dtype Stage 1 autocasts to for the priors (None: fp32): fp16 on a GPU in a 16-bit
    run, bf16 on a CPU that computes it natively with ``model.inference.cpu_bf16``. It changes
    the priors a little, so it is part of their tag."""
    return autocast_dtype(priors_device(), sixteen_bit(cfg), cfg.model.inference.cpu_bf16)


def sixteen_bit(cfg: DictConfig) -> bool:
    """Whether the run trains in 16-bit precision (and so predicts in fp16 on a GPU)."""
    return str(cfg.trainer.precision).startswith("16")


def write_stage1_priors(
    cfg: DictConfig, net: nn.Module, cache: PreprocessCache, case_ids: list[str], tag: str
) -> None:
    """Every case's three-view prior into the cache; DDP ranks split the cases. Other jobs on
    the same cache and Stage 1 wait on a lock of the prior tag and then find the priors written."""
    rank, world = distributed_rank_and_world()
    device = priors_device()
    lock = cache.folder / "priors" / f"{tag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock) if world == 1 else contextlib.nullcontext():
        _write_priors(cfg, net, cache, case_ids[rank::world], tag, device, rank == 0)
    if world > 1:
        torch.distributed.barrier()


def _write_priors(cfg, net, cache, case_ids, tag, device, progress) -> None:
    write_priors(
        net,
        cache,
        case_ids,
        tag,
        slab_depth=cfg.data.stage1.slab_depth,
        views=list(cfg.data.stage1.views),
        batch_size=slab_batch_size(cfg.model.inference, device),
        device=device,
        fp16=sixteen_bit(cfg),
        progress=progress,
        # slices padded to the training slab size, so instance norm sees what it saw in training
        plane_size=list(cfg.data.stage1.slab_size),
        cpu_bf16=cfg.model.inference.cpu_bf16,
    )
