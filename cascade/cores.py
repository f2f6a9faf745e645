"""CPU cores a job may use, and torch threads and loader workers sized to them.

A job sees every core of the machine through ``os.cpu_count()``, but a launcher may give it
fewer: an affinity mask (``taskset``, SLURM, a sweep launcher pinning jobs) or a cgroup v2 CPU
quota (containers, ``systemd-run -p CPUQuota``). Torch's threads and the loader workers are sized
to the smaller of the two, or to ``CASCADE_CORES`` when set.

Torch gets every core and the loader workers share them: a worker crops samples and sleeps
while the training step runs, so keeping a core for it left one idle most of the time (a lone
run was 1.39x slower). What made sharing costly is OpenMP's busy waiting: a torch thread that
reaches a barrier spins for its peers, and when more threads than cores are runnable (two jobs
on one machine, or a worker awake) the spinning thread holds the core its peer needs; two jobs
on a 2-core machine with 2 threads each ran 6.5 times slower than one alone instead of about
twice. `choose_omp_waiting("passive")` makes waiting threads sleep instead. Sleeping has its own
cost where the nets train on a CPU: a small net's layers are short, and its threads then spend
a good part of each step waking each other, so a job that has the machine to itself may choose
"spin" (OpenMP's own default). The choice must be made before torch is imported, which is why
this module imports torch only where it sets threads.

Per-case work (checking, preprocessing, generating) runs one case per process over the job's
cores (`map_in_processes`), each process on one thread.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

CORES_VARIABLE = "CASCADE_CORES"
# How OpenMP threads wait for their peers (read once, when torch loads OpenMP): "passive", they
# sleep; "spin", OpenMP's default, they spin a while first (libgomp: a few milliseconds)
OMP_WAITING: dict[str, dict[str, str]] = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin": {}}
CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cores() -> int:
    """Cores in this process's affinity mask (all of them where the OS has no masks)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_quota_cores(
    cgroup_root: Path = CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs that the cgroup v2 ``cpu.max`` quotas of this process's cgroup and its parents
    allow (quota / period, the smallest along the path), or None where there is no quota."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    # cgroup v2: the single line "0::/path/of/the/group"
    paths = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    if not paths:
        return None
    group = cgroup_root / paths[0].lstrip("/")
    limits = []
    for folder in [group, *group.parents]:
        limit = _cpu_max(folder / "cpu.max")
        if limit is not None:
            limits.append(limit)
        if folder == cgroup_root:
            break
    return min(limits) if limits else None


def _cpu_max(path: Path) -> float | None:
    """quota / period from a cpu.max file ("max 100000" or "150000 100000"); None: no limit."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def available_cores(explicit: int | str | None = None) -> int:
    """Cores this job may keep busy: `explicit` (or ``CASCADE_CORES``) when given, otherwise
    the affinity mask capped by the cgroup quota (rounded up: 1.5 CPUs keep 2 threads busy
    part of the time)."""
    explicit = explicit if explicit not in (None, "") else os.environ.get(CORES_VARIABLE)
    if explicit not in (None, ""):
        cores = int(explicit)
        if cores < 1:
            raise ValueError(f"{CORES_VARIABLE} must be a whole number >= 1, got {explicit!r}")
        return cores
    cores = affinity_cores()
    quota = cgroup_quota_cores()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


@dataclass(frozen=True)
class JobSize:
    cores: int  # available to each process of the job
    torch_threads: int
    workers: dict[str, int]  # loader name -> workers


def plan(cores: int, workers: MutableMapping[str, int] | dict[str, int]) -> JobSize:
    """Torch threads on every core; loader workers capped at cores - 1, so that with the
    training process they never outnumber the cores when all of them are busy at once."""
    capped = {name: min(int(count), max(0, cores - 1)) for name, count in workers.items()}
    return JobSize(cores, cores, capped)


def choose_omp_waiting(policy: str, environment: MutableMapping[str, str] = os.environ) -> None:
    """Set how OpenMP's waiting threads wait (`OMP_WAITING`), before torch loads OpenMP; a
    policy the user chose with ``OMP_WAIT_POLICY`` is kept. An unknown name sets nothing (the
    config check reports it)."""
    wanted = {
        name: value
        for name, value in OMP_WAITING.get(policy, {}).items()
        if name not in environment
    }
    if wanted and "torch" in sys.modules:
        log.warning("torch is already imported: OpenMP keeps the waiting it started with")
        return
    environment.update(wanted)


def process_cores(devices: object = 1) -> int:
    """Cores of each process when the ``trainer.devices`` processes of DDP share the job's."""
    processes = devices if isinstance(devices, int) and devices > 1 else 1
    return max(1, available_cores() // processes)


def size_training(cfg) -> JobSize:
    """Set torch's threads and cap ``data.stage1/stage2.num_workers`` in `cfg` (in place) to the
    cores of this job, shared by the ``trainer.devices`` processes of DDP on one machine."""
    from omegaconf import open_dict

    cores = process_cores(cfg.trainer.get("devices", 1))
    loaders = {name: int(cfg.data[name].num_workers) for name in ("stage1", "stage2")}
    size = plan(cores, loaders)
    with open_dict(cfg):
        for name, count in size.workers.items():
            cfg.data[name].num_workers = count
    import torch

    torch.set_num_threads(size.torch_threads)
    if size.workers != loaders:
        log.info(
            "%d core(s) for this process: loader workers %s -> %s, %d torch thread(s)",
            cores,
            loaders,
            size.workers,
            size.torch_threads,
        )
    return size


def size_inference(threads: int | None = None) -> int:
    """Torch threads for prediction: `threads`, or one per available core."""
    import torch

    count = threads or available_cores()
    torch.set_num_threads(count)
    return count


def map_in_processes(
    function: Callable[[Item], Result], items: Iterable[Item], processes: int
) -> Iterator[Result]:
    """`function` of each item, in order, computed in `processes` processes of one torch thread
    each (in this process when one is enough). The processes are spawned, not forked: a fork
    of a process whose OpenMP threads have run can hang in the child; `function` and the items
    must therefore pickle (a module-level function)."""
    items = list(items)
    processes = min(processes, len(items))
    if processes <= 1:
        yield from map(function, items)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_one_thread) as pool:
        yield from pool.map(function, items)


def _one_thread() -> None:
    """Each of the processes sharing the cores runs on one (torch's and SimpleITK's threads)."""
    import SimpleITK
    import torch

    torch.set_num_threads(1)
    SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
