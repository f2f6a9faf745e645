"""Preprocessing and data-loading benchmarks on synthetic BraTS-like cases."""

from __future__ import annotations

import cProfile
import inspect
import io
import pstats
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig, OmegaConf

from cascade.data.cache import CACHE_VERSION, PreprocessCache, prior_probabilities
from cascade.data.cases import Case
from cascade.data.discovery import discover_cases
from cascade.data.labels import DEFAULT_SCHEME, class_probabilities
from cascade.sampling.stage1 import Stage1DataModule
from cascade.sampling.stage2 import Stage2DataModule
from cascade.synthesis.dataset import write_dataset
from experiments.bench.measure import median

# The bench measures the four-class BraTS 2020 scheme of the paper.
NUM_CLASSES = DEFAULT_SCHEME.num_classes

# Constructor arguments that only switch augmentation on; when conf/ does not (yet) give them,
# the loader is measured with that augmentation off and the row says so.
_AUGMENTATION_OFF = {
    "flip_probability": 0.0,
    "intensity_probability": 0.0,
    "log_gamma": 0.0,
    "bias_field_coefficient": 0.0,
    "flip_axes": (),
    "intensity_scale": 0.0,
    "intensity_shift": 0.0,
    "perturbation": None,
}


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def constructor_kwargs(
    cls: type, node: Mapping[str, Any], runtime: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Arguments of `cls` from `runtime`, then the config `node`; augmentation switches that
    neither gives are turned off. Returns the kwargs and the names turned off."""
    parameters = inspect.signature(cls).parameters
    kwargs, missing, off = {}, [], []
    for name, parameter in parameters.items():
        if name in runtime:
            kwargs[name] = runtime[name]
        elif name in node:
            kwargs[name] = node[name]
        elif parameter.default is not inspect.Parameter.empty:
            continue
        elif name in _AUGMENTATION_OFF:
            kwargs[name] = _AUGMENTATION_OFF[name]
            off.append(name)
        else:
            missing.append(name)
    if missing:
        raise ValueError(
            f"conf/: {cls.__name__} needs {', '.join(missing)}, which the config does not give"
        )
    return kwargs, off


def synthetic_cases(cfg: DictConfig, root: Path, count: int) -> list[Case]:
    """`count` synthetic cases of the configured shape and seed, written under `root`."""
    synthetic = cfg.synthetic
    write_dataset(root, count, tuple(synthetic.shape), synthetic.seed, progress=False)
    return discover_cases(root)


def build_cache(cfg: DictConfig, cases: Sequence[Case], root: Path) -> PreprocessCache:
    cache = PreprocessCache(root, plain(cfg.preprocessing))
    cache.build(cases, progress=False)
    return cache


def write_priors(cache: PreprocessCache, case_ids: Sequence[str], tag: str, seed: int) -> None:
    """Plausible Stage-1 priors: the one-hot label blurred with noise, normalised per voxel."""
    rng = np.random.default_rng(seed)
    for case_id in case_ids:
        label = np.asarray(cache.label(case_id))
        prior = rng.random((NUM_CLASSES, *label.shape), dtype=np.float32)
        prior *= 0.4
        for index in range(NUM_CLASSES):
            prior[index] += label == index
        prior /= prior.sum(0, keepdims=True)
        cache.write_prior(case_id, tag, prior)


def preprocessing_rows(
    cfg: DictConfig, cases: Sequence[Case], repeats: int, thread_counts: Sequence[int]
) -> list[dict[str, Any]]:
    """Median seconds of PreprocessCache.build for one case (read, crop, clip, z-score, write)."""
    rows = []
    shape = "x".join(str(size) for size in cfg.synthetic.shape)
    default_threads = torch.get_num_threads()
    for threads in thread_counts:
        torch.set_num_threads(threads)
        seconds = []
        for repeat in range(repeats):
            case = cases[repeat % len(cases)]
            with tempfile.TemporaryDirectory(prefix="cascade-bench-") as root:
                start = time.perf_counter()
                build_cache(cfg, [case], Path(root))
                seconds.append(time.perf_counter() - start)
        rows.append(
            {
                "name": f"PreprocessCache.build, {threads} torch thread(s)",
                "setting": f"synthetic {shape}, .nii.gz int16, median of {repeats}",
                "s/case": median(seconds),
                "min s": min(seconds),
            }
        )
    torch.set_num_threads(default_threads)
    return rows


def training_batches(datamodule, device: torch.device | str = "cpu"):
    """The DataModule's training batches as a fit gets them: each loader item moved to
    `device` and passed through its on_after_batch_transfer (the pool, the crops and the
    augmentation), outside any Trainer."""
    datamodule.trainer = SimpleNamespace(
        training=True,
        world_size=1,
        global_rank=0,
        strategy=SimpleNamespace(root_device=torch.device(device)),
    )
    for item in datamodule.train_dataloader():
        yield datamodule.on_after_batch_transfer(move_data_to_device(item, device), 0)


def _loader_rate(datamodule, batches: int, count_key: str = "image") -> dict[str, float]:
    """First-batch latency (workers starting, the pool filling), then items/s over the next
    `batches` batches: the rate a training run sees, its persistent workers being started
    once per fit."""
    start = time.perf_counter()
    iterator = training_batches(datamodule)
    next(iterator)
    first = time.perf_counter() - start
    start, items = time.perf_counter(), 0
    for index, batch in enumerate(iterator):
        items += batch[count_key].shape[0]
        if index + 1 >= batches:
            break
    seconds = time.perf_counter() - start
    return {"first batch s": first, "items/s": items / seconds, "items": items}


def stage1_loader(
    cfg: DictConfig, cache: PreprocessCache, ids: Sequence[str], num_workers: int
) -> tuple[Stage1DataModule, list[str]]:
    node = plain(cfg.data.stage1)
    runtime = {
        "store": cache,
        "train_ids": list(ids),
        "val_ids": [],
        "num_workers": num_workers,
    }
    kwargs, off = constructor_kwargs(Stage1DataModule, node, runtime)
    return Stage1DataModule(**kwargs), off


def stage2_loader(
    cfg: DictConfig,
    cache: PreprocessCache,
    ids: Sequence[str],
    tag: str,
    num_workers: int,
    patches_per_epoch: int | None = None,
) -> tuple[Stage2DataModule, list[str]]:
    """The configured Stage2DataModule on `ids`; `patches_per_epoch` overrides conf/'s epoch."""
    node = plain(cfg.data.stage2)
    runtime: dict[str, Any] = {
        "store": cache,
        "train_ids": list(ids),
        "val_ids": [],
        "prior_tag": tag,
        "num_workers": num_workers,
        "seed": cfg.seed,
    }
    if patches_per_epoch is not None:
        runtime["patches_per_epoch"] = patches_per_epoch
    probabilities = node.get("label_probabilities")
    if isinstance(probabilities, dict):  # by class name in conf/
        runtime["label_probabilities"] = class_probabilities(DEFAULT_SCHEME, probabilities)
    perturbation = cfg.data.stage2.get("perturbation")
    if perturbation is not None and "_target_" in perturbation:
        runtime["perturbation"] = instantiate(perturbation)
    kwargs, off = constructor_kwargs(Stage2DataModule, node, runtime)
    return Stage2DataModule(**kwargs), off


def loading_rows(
    cfg: DictConfig,
    cache: PreprocessCache,
    tag: str,
    stage1_workers: Sequence[int],
    stage2_workers: Sequence[int],
    stage1_batches: int,
    stage2_batches: int,
) -> list[dict[str, Any]]:
    """Stage-1 slabs/s and Stage-2 patches/s of the configured training loaders (after their
    first batch), through the device hook that cuts and augments the batches (on the CPU here)."""
    ids = cache.case_ids()
    shape = "x".join(str(size) for size in cfg.synthetic.shape)
    rows = []
    for workers in stage1_workers:
        datamodule, off = stage1_loader(cfg, cache, ids, workers)
        rate = _loader_rate(datamodule, stage1_batches)
        slab = "x".join(str(size) for size in cfg.data.stage1.slab_size)
        rows.append(
            {
                "name": f"Stage-1 slabs, {workers} workers",
                "setting": f"{len(ids)} cases {shape}, slab {slab}, "
                f"batch {cfg.data.stage1.batch_size}"
                + (f"; off (not in conf): {', '.join(off)}" if off else ""),
                "items/s": rate["items/s"],
                "first batch s": rate["first batch s"],
                "items": rate["items"],
            }
        )
    stage2 = cfg.data.stage2
    patch = "x".join(str(size) for size in stage2.patch_size)
    epoch = (stage2_batches + 1) * stage2.batch_size  # the timed batches after the first
    for workers in stage2_workers:
        datamodule, off = stage2_loader(cfg, cache, ids, tag, workers, epoch)
        rate = _loader_rate(datamodule, stage2_batches)
        rows.append(
            {
                "name": f"Stage-2 patches, {workers} workers",
                "setting": f"{len(ids)} cases {shape}, patch {patch}, batch {stage2.batch_size}"
                + (f"; off (not in conf): {', '.join(off)}" if off else ""),
                "items/s": rate["items/s"],
                "first batch s": rate["first batch s"],
                "items": rate["items"],
            }
        )
    return rows


def case_bytes(cache: PreprocessCache, case_id: str) -> int:
    """Bytes a case takes in `cache`: its folder (image, label, class locations, meta) and
    its priors."""
    folder = cache.folder / "cases" / case_id
    files = [*folder.iterdir(), *(cache.folder / "priors").glob(f"*/{case_id}.npy")]
    return sum(path.stat().st_size for path in files if path.is_file())


def earlier_format_copy(cache: PreprocessCache, root: Path) -> PreprocessCache:
    """A copy of `cache` under `root` in the format before cache version 5: float32 images
    and float16 priors (read by the same code, which follows the stored dtypes)."""
    copy = PreprocessCache(root, cache.settings)
    shutil.copytree(cache.folder, copy.folder)
    for case_id in copy.case_ids():
        image = np.asarray(cache.image(case_id), dtype=np.float32)
        _save(copy.folder / "cases" / case_id / "image.npy", image)
    for path in (cache.folder / "priors").glob("*/*.npy"):
        prior = prior_probabilities(np.load(path, mmap_mode="r")).astype(np.float16)
        _save(copy.folder / "priors" / path.parent.name / path.name, prior)
    return copy


def _save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as stream:
        np.save(stream, array, allow_pickle=False)


def cache_format_rows(
    cfg: DictConfig,
    cache: PreprocessCache,
    tag: str,
    root: Path,
    workers: int,
    stage2_batches: int | None,
    label: str,
) -> list[dict[str, Any]]:
    """Bytes per case of the cache as written now (float16 images, uint8 priors) and in the
    format before (float32, float16), from the same arrays; with `stage2_batches`, the Stage-2
    loader's patches/s on each, alternating, best of two."""
    ids = cache.case_ids()
    earlier = earlier_format_copy(cache, root)
    formats = {
        "before (v4): float32 images, float16 priors": earlier,
        f"now (v{CACHE_VERSION}): float16 images, uint8 priors": cache,
    }
    rows = []
    before_bytes = None
    for name, store in formats.items():
        per_case = sum(case_bytes(store, case_id) for case_id in ids) / len(ids)
        before_bytes = before_bytes or per_case
        rows.append(
            {
                "name": f"cache bytes per case, {name}",
                "setting": f"{len(ids)} case(s): {label}",
                "MB/case": per_case / 1e6,
                "x before": per_case / before_bytes,
            }
        )
    if stage2_batches:
        stage2 = cfg.data.stage2
        epoch = (stage2_batches + 1) * stage2.batch_size
        rates: dict[str, list[float]] = {name: [] for name in formats}
        for _ in range(2):
            for name, store in formats.items():
                datamodule, _ = stage2_loader(cfg, store, ids, tag, workers, epoch)
                rate = _loader_rate(datamodule, stage2_batches)
                rates[name].append(rate["items/s"])
        before_rate = None
        for name, values in rates.items():
            before_rate = before_rate or max(values)
            rows.append(
                {
                    "name": f"Stage-2 patches, {workers} workers, cache {name}",
                    "setting": f"{len(ids)} cases {label}, best of {len(values)}",
                    "items/s": max(values),
                    "x before": max(values) / before_rate,
                }
            )
    shutil.rmtree(earlier.folder, ignore_errors=True)
    return rows


def stage2_breakdown(
    cfg: DictConfig, cache: PreprocessCache, tag: str, repeats: int
) -> tuple[list[dict[str, Any]], str]:
    """CPU time (process time, so other users' load does not count) of a training batch's two
    parts in one process: reading a step's whole cases (a loader worker's share), and the
    device hook (pool insert, patch crop, perturbation, intensity; here on the CPU); plus a
    cProfile of the hook."""
    ids = cache.case_ids()
    datamodule, _ = stage2_loader(cfg, cache, ids, tag, 0)
    clock = time.process_time
    stream = datamodule.train_dataloader().dataset
    reads, hooks = [], []
    profile = cProfile.Profile()
    batches = training_batches(datamodule)
    for step in range(1, 1 + 4 * repeats):
        start = clock()
        stream[step]
        reads.append((clock() - start) / datamodule.batch_size)
        start = clock()
        profile.enable()
        next(batches)
        profile.disable()
        hooks.append((clock() - start) / datamodule.batch_size)
    rows = [
        {
            "name": f"Stage-2 patch: {part}",
            "setting": f"per patch, mean of {len(values)} steps",
            "CPU ms": 1e3 * sum(values) / len(values),
        }
        for part, values in (("cases read for the pool", reads), ("device hook (CPU)", hooks))
    ]
    return rows, _profile_text(profile, 12)


def _profile_text(profile: cProfile.Profile, lines: int) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.strip_dirs()  # file names only: the report must not depend on where it ran
    stats.sort_stats("tottime").print_stats(lines)
    text = stream.getvalue()
    # keep the table, drop the header lines about the profile itself
    return text[text.find("   ncalls") :].rstrip() if "   ncalls" in text else text


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
