"""How long each phase of a run took: one log line per phase, ``timings.json`` in the run folder
and the experiment logger.

``timings.json`` is ``{"phases": [phase, ...]}`` in the order the phases ended, each phase::

    {"name": "preprocessing",          # generation, checking, preprocessing, stage1_fit, ...
     "seconds": 12.5,                  # wall time
     "count": 12, "unit": "cases",     # what the phase went through (cases or samples)
     "per_second": 0.96,               # count / seconds
     "peak_memory_bytes": 1318061056,  # torch.cuda.max_memory_allocated in the phase; null on CPU
     "detail": "4 of 16 already cached"}   # or null

It is rewritten (atomically) as each phase ends, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger

from cascade.io import write_text_atomic
from cascade.ranks import is_global_zero

log = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"


@dataclass
class Phase:
    """One finished phase, as written to ``timings.json``."""

    name: str
    seconds: float
    count: int
    unit: str
    per_second: float
    peak_memory_bytes: int | None
    detail: str | None

    def line(self) -> str:
        """``stage1_fit: 41.3 s, 3200 samples, 77.5 samples/s, peak GPU memory 1.23 GiB``."""
        parts = [f"{self.seconds:.1f} s", f"{self.count} {self.unit}"]
        parts.append(f"{self.per_second:.3g} {self.unit}/s")
        if self.peak_memory_bytes is not None:
            parts.append(f"peak GPU memory {self.peak_memory_bytes / 2**30:.2f} GiB")
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.name}: {', '.join(parts)}{detail}"


@dataclass
class PhaseProgress:
    """What the code inside a phase reports about it before it ends."""

    count: int = 0
    detail: str | None = None


class PhaseTimings:
    """Times the phases of one run; global rank 0 writes the file and the log lines."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / TIMINGS_FILE
        self.phases: list[Phase] = []
        self._logger: Logger | None = None

    @contextlib.contextmanager
    def phase(self, name: str, unit: str) -> Iterator[PhaseProgress]:
        """Time the block as phase `name`; set ``.count`` (in `unit`) and ``.detail`` on what
        it yields. A block that raises records nothing."""
        progress = PhaseProgress()
        _reset_peak_memory()
        start = time.perf_counter()
        yield progress
        seconds = round(time.perf_counter() - start, 3)
        phase = Phase(
            name=name,
            seconds=seconds,
            count=progress.count,
            unit=unit,
            per_second=float(f"{progress.count / seconds:.4g}") if seconds > 0 else 0.0,
            peak_memory_bytes=_peak_memory(),
            detail=progress.detail,
        )
        self.phases.append(phase)
        if is_global_zero():
            log.info("phase %s", phase.line())
            write_text_atomic(
                self.path, json.dumps({"phases": [asdict(p) for p in self.phases]}, indent=2)
            )
            self._log_metrics([phase])

    def log_to(self, logger: Logger | None) -> None:
        """Send the phases so far, and every later one, to the experiment logger."""
        self._logger = logger
        if is_global_zero():
            self._log_metrics(self.phases)

    def _log_metrics(self, phases: list[Phase]) -> None:
        if self._logger is None:
            return
        metrics = {}
        for phase in phases:
            metrics[f"timings/{phase.name}/seconds"] = phase.seconds
            metrics[f"timings/{phase.name}/per_second"] = phase.per_second
            if phase.peak_memory_bytes is not None:
                metrics[f"timings/{phase.name}/peak_memory_bytes"] = phase.peak_memory_bytes
        if metrics:
            self._logger.log_metrics(metrics)


def _reset_peak_memory() -> None:
    # only where CUDA is already in use: initialising it here would cost the CPU-only phases
    # a context, and forked workers (generation, preprocessing) must not inherit one
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> int | None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return None
