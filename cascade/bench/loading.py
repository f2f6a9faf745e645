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
from typing import Any

import numpy as np
import torch
import torchio as tio
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from cascade.bench.fast_loading import PatchDataset
from cascade.bench.measure import median
from cascade.data.cache import PreprocessCache
from cascade.data.cases import Case, discover_cases
from cascade.data.labels import NUM_CLASSES
from cascade.data.stage1 import Stage1DataModule
from cascade.data.stage2 import CaseSubjects, Stage2DataModule
from cascade.data.synthetic import write_dataset

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
    synthetic = cfg.data.synthetic
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
    shape = "x".join(str(size) for size in cfg.data.synthetic.shape)
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


def _loader_rate(loader, batches: int, count_key: str = "image") -> dict[str, float]:
    """First-batch latency, and items/s over `batches` batches counted from the start
    (worker start and queue fills included: a queue's first batch holds a whole fill)."""
    start = time.perf_counter()
    items, first = 0, None
    for index, batch in enumerate(loader):
        items += batch[count_key].shape[0]
        if first is None:
            first = time.perf_counter() - start
        if index + 1 >= batches:
            break
    seconds = time.perf_counter() - start
    return {"first batch s": first or 0.0, "items/s": items / seconds, "items": items}


def stage1_loader(
    cfg: DictConfig, cache: PreprocessCache, ids: Sequence[str], num_workers: int
) -> tuple[Stage1DataModule, list[str]]:
    node = plain(cfg.data.stage1)
    runtime = {
        "store": cache,
        "train_ids": list(ids),
        "val_ids": [],
        "num_workers": num_workers,
        "val_seed": cfg.seed,
    }
    kwargs, off = constructor_kwargs(Stage1DataModule, node, runtime)
    datamodule = Stage1DataModule(**kwargs)
    datamodule.setup("fit")
    return datamodule, off


def stage2_loader(
    cfg: DictConfig,
    cache: PreprocessCache,
    ids: Sequence[str],
    tag: str,
    num_workers: int,
) -> tuple[Stage2DataModule, list[str]]:
    node = plain(cfg.data.stage2)
    runtime: dict[str, Any] = {
        "store": cache,
        "train_ids": list(ids),
        "val_ids": [],
        "prior_tag": tag,
        "num_workers": num_workers,
        "seed": cfg.seed,
    }
    probabilities = node.get("label_probabilities")
    if isinstance(probabilities, list):  # a list in conf/: class i -> probabilities[i]
        runtime["label_probabilities"] = dict(enumerate(probabilities))
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
    """Stage-1 slabs/s and Stage-2 patches/s of the configured DataModules."""
    ids = cache.case_ids()
    shape = "x".join(str(size) for size in cfg.data.synthetic.shape)
    rows = []
    for workers in stage1_workers:
        datamodule, off = stage1_loader(cfg, cache, ids, workers)
        rate = _loader_rate(datamodule.train_dataloader(), stage1_batches)
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
    # enough subjects for several queue fills: the few cases are repeated
    stage2 = cfg.data.stage2
    per_fill = max(1, stage2.queue_length // stage2.samples_per_volume)
    repeated = [ids[index % len(ids)] for index in range(3 * per_fill)]
    for workers in stage2_workers:
        datamodule, off = stage2_loader(cfg, cache, repeated, tag, workers)
        rate = _loader_rate(datamodule.train_dataloader(), stage2_batches)
        patch = "x".join(str(size) for size in stage2.patch_size)
        rows.append(
            {
                "name": f"Stage-2 patches (tio.Queue), {workers} workers",
                "setting": f"{len(ids)} cases {shape}, patch {patch}, batch {stage2.batch_size}, "
                f"queue {stage2.queue_length}, {stage2.samples_per_volume}/volume"
                + (f"; off (not in conf): {', '.join(off)}" if off else ""),
                "items/s": rate["items/s"],
                "first batch s": rate["first batch s"],
                "items": rate["items"],
            }
        )
        perturbation_only = tio.Compose(
            [datamodule.perturbation] if datamodule.perturbation is not None else []
        )
        for label, transform, half in (
            ("patch-first, proposed", datamodule.train_transform(), False),
            ("patch-first + flips/intensity on the device, proposed", perturbation_only, True),
        ):
            patches = PatchDataset(
                cache,
                ids,
                tag,
                datamodule.patch_size,
                datamodule.label_probabilities,
                length=stage2.batch_size * stage2_batches,
                transform=transform,
                half_prior=half,
            )
            loader = DataLoader(
                patches,
                batch_size=stage2.batch_size,
                num_workers=workers,
                pin_memory=torch.cuda.is_available(),
            )
            rate = _loader_rate(loader, stage2_batches)
            rows.append(
                {
                    "name": f"Stage-2 patches ({label}), {workers} workers",
                    "setting": "same cases, patch and batch"
                    + ("; float16 prior" if half else "; same augmentation"),
                    "items/s": rate["items/s"],
                    "first batch s": rate["first batch s"],
                    "items": rate["items"],
                }
            )
    return rows


def stage2_breakdown(
    cfg: DictConfig, cache: PreprocessCache, tag: str, repeats: int
) -> tuple[list[dict[str, Any]], str]:
    """CPU time (process time, so other users' load does not count) of each step of a queue
    subject and of a patch-first patch, in one process; plus a cProfile of the queue path."""
    ids = cache.case_ids()
    datamodule, _ = stage2_loader(cfg, cache, ids, tag, 0)
    subjects = CaseSubjects(cache, ids, tag, transform=None)
    transform = datamodule.train_transform()
    sampler = tio.LabelSampler(datamodule.patch_size, "label", datamodule.label_probabilities)
    count = cfg.data.stage2.samples_per_volume
    clock = time.process_time
    queue_parts: dict[str, list[float]] = {"read (load_case)": [], "augment": [], "sample": []}
    profile = cProfile.Profile()
    for repeat in range(repeats):
        start = clock()
        profile.enable()
        subject = subjects[repeat % len(ids)]
        read = clock()
        subject = transform(subject)
        augmented = clock()
        patches = list(zip(range(count), sampler(subject), strict=False))
        profile.disable()
        sampled = clock()
        assert len(patches) == count
        for part, seconds in zip(
            queue_parts, (read - start, augmented - read, sampled - augmented), strict=True
        ):
            queue_parts[part].append(seconds / count)
    rows = [
        {
            "name": f"queue, per patch: {part}",
            "setting": f"subject / {count}",
            "CPU ms": 1e3 * median(v),
        }
        for part, v in queue_parts.items()
    ]
    # what a worker sends to the queue's process per subject (pickled through shared memory)
    sent = sum(image.data.numel() * image.data.element_size() for image in subject.get_images())
    rows.append({"name": "queue: bytes a worker sends per subject", "MiB": sent / 2**20})

    steps = [step for step in transform.transforms]
    patches = PatchDataset(
        cache, ids, tag, datamodule.patch_size, datamodule.label_probabilities, 1, None
    )
    patch_parts: dict[str, list[float]] = {"read patch": []}
    patch_parts.update({type(step).__name__: [] for step in steps})
    for _ in range(3 * repeats):
        start = clock()
        item = patches[0]
        patch_parts["read patch"].append(clock() - start)
        subject = tio.Subject(
            image=tio.ScalarImage(tensor=item["image"]),
            prior=tio.ScalarImage(tensor=item["prior"]),
            label=tio.LabelMap(tensor=item["label"][None]),
        )
        for step in steps:
            start = clock()
            subject = step(subject)
            patch_parts[type(step).__name__].append(clock() - start)
    rows += [
        {
            "name": f"patch-first, per patch: {part}",
            "setting": "p as configured",
            "CPU ms": 1e3 * median(v),
        }
        for part, v in patch_parts.items()
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
