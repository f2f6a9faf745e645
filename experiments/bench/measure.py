"""Measuring tools shared by the sections: clocks, peak memory, saved activations, config."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from cascade.config import CONFIG_DIR, experiment_without_plus, register_resolvers

GIB = 2**30
MIB = 2**20


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The training config of conf/ with `overrides`, as `python -m cascade.train` sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    # cache_dir interpolates hydra:runtime.cwd, which only exists inside a Hydra run
    overrides = [*overrides, f"cache_dir={os.getcwd()}/.cache"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose("train", overrides=experiment_without_plus(list(overrides)))


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels before reading a clock (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    function: Callable[[], Any], repeats: int, warmup: int, device: torch.device
) -> list[float]:
    """Seconds of each of `repeats` calls of `function`, after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory of a block: CUDA `max_memory_allocated` (absolute) on a GPU; on the CPU the
    growth of the process's peak resident set over the block (Linux VmHWM, reset at entry)."""

    device: torch.device
    bytes: int = 0
    kind: str = ""

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.kind = "CUDA max_memory_allocated"
            return
        exact = _reset_rss_peak()
        before = _rss_kib("VmRSS" if exact else "VmHWM") or 0
        yield self
        after = _rss_kib("VmHWM") or 0
        self.bytes = max(after - before, 0) * 1024
        self.kind = "CPU peak RSS delta" if exact else "CPU peak RSS delta (lower bound)"


def saved_activation_bytes(
    build: Callable[[], nn.Module], input_shape: Sequence[int], dtype: torch.dtype
) -> int:
    """Bytes of the tensors a forward pass keeps for backward, counted on the meta device.

    Nothing is allocated, so a whole 240 x 240 x 160 volume can be counted on any machine.
    Storages shared by several saved tensors (an activation saved by two ops) count once.
    """
    with torch.device("meta"):
        net = build().to(dtype)
        inputs = torch.empty(tuple(input_shape), dtype=dtype)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = max(storages.get(storage._cdata, 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(inputs)
    return sum(storages.values())


def parameter_count(net: nn.Module) -> int:
    return sum(parameter.numel() for parameter in net.parameters())


def machine() -> dict[str, Any]:
    """Where the numbers come from: host, CPU, threads, torch build and accelerator."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    baselines = {}
    for package in ("monai", "dynamic_network_architectures"):
        try:
            baselines[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            baselines[package] = None
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda if cuda else None,
        "baselines": baselines,
    }
