"""The `pipeline` section: each stage's real fit against its networks alone, in one run.

For each stage the fit is what `cascade.train` runs: the DataModule and LightningModule built
from conf/ (`cascade.pipeline.stages`) and a Lightning Trainer, here with no logger, no
checkpoints and no validation, for `warmup` untimed steps and then `steps` timed ones. The
same nets' optimiser step on random tensors of the fit's batch shapes gives the network's own
rate; their ratio is how much of the device's time the run around the nets leaves unused.

Host CPU per sample: the train loader alone, each batch moved to the device and through the
DataModule's transfer hooks as in a fit (with a Trainer attached and training), counting the
CPU time of this process (all threads: pinning, the hooks) and of its loader workers, read
from /proc while they run. On a CPU the hooks' work is host work too.

Whole-case work: Stage-1 validation (Trainer.validate) and the priors
(`cascade.pipeline.priors`) per case, after the first case (workers starting).
"""

from __future__ import annotations

import copy
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from cascade.data.cache import PreprocessCache
from cascade.data.labels import DEFAULT_SCHEME
from cascade.pipeline.composition import build_loss, build_trainer
from cascade.pipeline.priors import write_stage1_priors
from cascade.pipeline.stages import StageParts, stage1_parts, stage2_parts
from experiments.bench.measure import synchronize, time_calls
from experiments.bench.networks import NUM_CLASSES, TrainStep, random_inputs

PROC = Path("/proc")


def batch_samples(batch: Any) -> int:
    """Samples in a batch as the training step sees it: the first size of its image."""
    image = batch["image"] if isinstance(batch, Mapping) else batch[0]
    return int(image.shape[0])


class StepClock(L.Callback):
    """Wall time of the training steps after the first `warmup`, the samples they saw, and
    the shapes of the last batch's image and label (for the network-only step)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        if warmup < 1:
            raise ValueError("the pipeline bench needs at least one warm-up step")
        self.warmup = warmup
        self.device = device
        self.ends: list[float] = []
        self.samples: list[int] = []
        self.shapes: dict[str, tuple[int, ...]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self.device)
        self.ends.append(time.perf_counter())
        self.samples.append(batch_samples(batch))
        self.shapes = {key: tuple(batch[key].shape) for key in ("image", "label")}

    def samples_per_second(self) -> float:
        if len(self.ends) <= self.warmup:
            raise RuntimeError(f"the fit ran {len(self.ends)} steps, fewer than the warm-up")
        seconds = self.ends[-1] - self.ends[self.warmup - 1]
        return sum(self.samples[self.warmup :]) / seconds


class ValidationClock(L.Callback):
    """Seconds per validation batch (one case), after the first (workers starting); the
    first alone when there is only one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ends: list[float] = []
        self.start = 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        synchronize(self.device)
        self.ends.append(time.perf_counter())

    def seconds_per_case(self) -> float:
        if len(self.ends) == 1:
            return self.ends[0] - self.start
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)


def _parents() -> dict[int, int]:
    """Parent of every process on the machine, from /proc/PID/stat."""
    parents = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (Path(entry.path) / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # the command name may hold spaces and brackets: the fields follow its last ")"
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (loader workers, also under a forkserver)."""
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds of the processes `pids` so far (those still running)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def _endless(loader) -> Iterator[Any]:
    """The loader's batches epoch after epoch (persistent workers keep running)."""
    while True:
        yield from loader


def host_cost(
    datamodule: L.LightningDataModule,
    trainer: L.Trainer,
    device: torch.device,
    batches: int,
    warmup: int,
) -> dict[str, float]:
    """CPU ms per sample of the train loader alone over `batches` batches after `warmup`:
    this process and its workers, each batch moved to `device` through the transfer hooks."""
    # the hooks run as in a fit: with the Trainer attached and training
    datamodule.trainer = trainer
    trainer.training = True
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    before = descendants(os.getpid())
    batches_of = _endless(loader)
    samples = 0
    for index in range(warmup + batches):
        if index == warmup:  # the workers run by now
            synchronize(device)
            workers = descendants(os.getpid()) - before
            wall, main, worker = time.perf_counter(), time.process_time(), cpu_seconds(workers)
        batch = next(batches_of)
        batch = datamodule.on_before_batch_transfer(batch, 0)
        batch = datamodule.transfer_batch_to_device(batch, device, 0)
        batch = datamodule.on_after_batch_transfer(batch, 0)
        if index >= warmup:
            samples += batch_samples(batch)
    synchronize(device)
    wall = time.perf_counter() - wall
    main = time.process_time() - main
    worker = cpu_seconds(workers) - worker
    batches_of.close()
    del batches_of, loader, batch
    gc.collect()  # the workers end with their loader
    return {
        "host ms/sample": 1e3 * (main + worker) / samples,
        "main ms/sample": 1e3 * main / samples,
        "workers ms/sample": 1e3 * worker / samples,
        "loader samples/s": samples / wall,
    }


def bench_trainer(
    cfg: DictConfig,
    stage: str,
    folder: Path,
    device: torch.device,
    callbacks: Sequence[L.Callback],
    parts: StageParts,
    **settings: Any,
) -> L.Trainer:
    """The stage's Trainer as conf/ builds it, on one `device`, without logger, checkpoints,
    progress bar or the configured callbacks; `settings` replace the stage's own."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.callbacks = {}
        cfg.trainer.update(accelerator=device.type, devices=1, num_nodes=1, strategy="auto")
        cfg.trainer[stage].update(
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **settings,
        )
    return build_trainer(cfg, stage, folder, None, list(callbacks))


def network_rate(
    cfg: DictConfig,
    stage: str,
    shapes: Mapping[str, tuple[int, ...]],
    device: torch.device,
    steps: int,
    warmup: int,
) -> float:
    """Samples/s of the stage's net alone (fresh weights): its optimiser step on random
    tensors of the fit's batch shapes, mean over `steps` after `warmup`."""
    batch, _, *spatial = shapes["image"]
    stage2 = stage == "stage2"
    torch.manual_seed(0)
    step = TrainStep(
        instantiate(cfg.model[stage]),
        build_loss(cfg, DEFAULT_SCHEME),
        instantiate(cfg.model.optimizer),
        random_inputs(batch, cfg.model[stage].in_channels, spatial, prior=stage2),
        torch.randint(NUM_CLASSES, shapes["label"]),
        device,
        fp16=str(cfg.trainer.precision).startswith("16"),
        mix=instantiate(cfg.model.mix) if stage2 else None,
        compiled=stage2 and bool(cfg.model.compile),
    )
    seconds = time_calls(step, steps, warmup, device)
    return batch * steps / sum(seconds)


def _stage_row(
    cfg: DictConfig,
    stage: str,
    build_parts,
    folder: Path,
    device: torch.device,
    steps: int,
    warmup: int,
) -> tuple[dict[str, Any], StageParts]:
    """Host cost, fit and network rates of one stage; returns the row and the fitted parts."""
    probe = build_parts()
    hooks_trainer = bench_trainer(cfg, stage, folder, device, [], probe)
    row: dict[str, Any] = {"name": "", "setting": ""}  # filled by the caller
    host = host_cost(probe.datamodule, hooks_trainer, device, steps, warmup)
    del probe, hooks_trainer
    gc.collect()
    parts = build_parts()
    clock = StepClock(warmup, device)
    trainer = bench_trainer(
        cfg,
        stage,
        folder,
        device,
        [clock],
        parts,
        max_steps=warmup + steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(parts.module, datamodule=parts.datamodule)
    fit = clock.samples_per_second()
    del trainer
    gc.collect()  # the fit's loader workers end with it
    network = network_rate(cfg, stage, clock.shapes, device, steps, warmup)
    row.update(
        {
            "host ms/sample": host["host ms/sample"],
            "fit samples/s": fit,
            "network samples/s": network,
            "fit/network": fit / network,
            "main ms/sample": host["main ms/sample"],
            "workers ms/sample": host["workers ms/sample"],
            "loader samples/s": host["loader samples/s"],
        }
    )
    row["batch"] = "x".join(map(str, clock.shapes["image"]))
    return row, parts


def _nets(cfg: DictConfig, stage: str) -> str:
    net = cfg.model[stage]
    return f"f{net.filters}_d{net.depth}"


def pipeline_rows(
    cfg: DictConfig,
    cache: PreprocessCache,
    device: torch.device,
    steps: int,
    warmup: int,
    label: str,
) -> list[dict[str, Any]]:
    """The rows `pipeline Stage-1` and `pipeline Stage-2`: every case of `cache` trains and
    validates; Stage 2 trains on the priors of the Stage-1 net the bench fitted."""
    if not (PROC / "self" / "stat").exists():
        raise SystemExit("--sections pipeline: reads the loader workers' CPU time from /proc")
    ids = cache.case_ids()
    scheme = DEFAULT_SCHEME
    precision = str(cfg.trainer.precision)
    data = cfg.data
    shape = f"{len(ids)} cases {label}"
    timing = f"{precision}, {steps} steps after {warmup}"
    tag = f"pipeline-bench-{time.time_ns()}"
    with tempfile.TemporaryDirectory(prefix="cascade-pipeline-") as temporary:
        folder = Path(temporary)
        row1, parts1 = _stage_row(
            cfg,
            "stage1",
            lambda: stage1_parts(
                cfg, scheme, cache, ids, ids, instantiate(cfg.model.stage1), device
            ),
            folder / "stage1",
            device,
            steps,
            warmup,
        )
        validation = ValidationClock(device)
        trainer = bench_trainer(cfg, "stage1", folder / "stage1", device, [validation], parts1)
        trainer.validate(parts1.module, datamodule=parts1.datamodule, verbose=False)
        row1["validation s/case"] = validation.seconds_per_case()
        del trainer
        gc.collect()
        net = parts1.module.net
        start = time.perf_counter()
        write_stage1_priors(cfg, net, cache, ids, tag)
        row1["priors s/case"] = (time.perf_counter() - start) / len(ids)
        row1["name"] = "pipeline Stage-1"
        row1["setting"] = (
            f"{shape}; slabs {'x'.join(map(str, data.stage1.slab_size))}, "
            f"views {'+'.join(data.stage1.views)}, {data.stage1.num_workers} workers; "
            f"net {_nets(cfg, 'stage1')}, {timing}"
        )
        del parts1
        gc.collect()
        row2, _ = _stage_row(
            cfg,
            "stage2",
            lambda: stage2_parts(
                cfg,
                scheme,
                cache,
                ids,
                ids,
                tag,
                instantiate(cfg.model.stage2),
                instantiate(cfg.model.mix),
            ),
            folder / "stage2",
            device,
            steps,
            warmup,
        )
        row2["name"] = "pipeline Stage-2"
        row2["setting"] = (
            f"{shape}; patches {'x'.join(map(str, data.stage2.patch_size))} with priors, "
            f"{data.stage2.num_workers} workers; net {_nets(cfg, 'stage2')}"
            f"{', compiled' if cfg.model.compile else ''}, {timing}"
        )
    shutil.rmtree(cache.folder / "priors" / tag, ignore_errors=True)
    return [row1, row2]
