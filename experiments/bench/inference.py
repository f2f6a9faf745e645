"""Inference time per case (CascadePredictor) and profiles of the Stage-2 step and windows."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cascade.checkpoint import CascadeModel, build_predictor, load_checkpoint
from cascade.data.cache import PreprocessCache
from cascade.data.cases import Case
from cascade.data.labels import DEFAULT_SCHEME, LabelScheme
from cascade.inference.cascade import CascadePredictor, mirrored_softmax, tumor_box
from cascade.inference.settings import InferenceSettings
from cascade.inference.sliding import evaluated_region, sliding_window_predict
from cascade.nn.members import CascadeNets
from experiments.bench.measure import median, time_calls
from experiments.bench.networks import NNUNET_PATCH, nnunet_plain_unet

# The bench measures the four-class BraTS 2020 scheme of the paper.
NUM_CLASSES = DEFAULT_SCHEME.num_classes


def untrained_predictor(
    cfg: DictConfig, device: torch.device, tta: bool, fast: bool = False
) -> CascadePredictor:
    """The configured cascade with freshly initialised nets (speed does not depend on weights);
    `fast`: the CPU's bf16 path as cascade.predict takes it (cascade.inference.precision)."""
    torch.manual_seed(0)
    nets = CascadeNets(
        instantiate(cfg.model.stage1), instantiate(cfg.model.stage2), instantiate(cfg.model.mix)
    )
    model = CascadeModel([nets], settings=InferenceSettings.from_config(cfg))
    fp16 = str(cfg.trainer.precision).startswith("16")
    return build_predictor(model, device, tta=tta, fp16=fp16, cpu_bf16=fast)


def truth_roi(cache: PreprocessCache, case_id: str, margin: int):
    """The case's true tumor box (+margin) on the preprocessed grid: an untrained Stage 1 finds
    no realistic tumor, so Stage 2's region is forced to where a trained one would run."""
    label = torch.from_numpy(np.array(cache.label(case_id)))
    return tumor_box(label, margin)


def agreement_dice(
    prediction: np.ndarray, reference: np.ndarray, scheme: LabelScheme = DEFAULT_SCHEME
) -> dict[str, float]:
    """Dice of each region of `prediction` against `reference` (class maps); 1 where both
    are empty, as BraTS scores it."""
    result = {}
    masks = scheme.region_masks(prediction)
    for region, reference_mask in scheme.region_masks(reference).items():
        mask = masks[region]
        total = int(mask.sum()) + int(reference_mask.sum())
        overlap = int(np.logical_and(mask, reference_mask).sum())
        result[region.upper()] = 1.0 if total == 0 else 2.0 * overlap / total
    return result


Variant = tuple[bool, bool, bool]  # roi_only, tta, fast


def inference_rows(
    cfg: DictConfig,
    name: str,
    case: Case,
    cache: PreprocessCache,
    device: torch.device,
    repeats: int,
    variants: Sequence[Variant | tuple[bool, bool]],
) -> list[dict[str, Any]]:
    """Per-case seconds split into reading/preprocessing, Stage 1, Stage 2 and the rest.

    variants: (roi_only, tta[, fast]) triples; a fast variant whose exact twin ran too gets
    'x exact' (its network time over the twin's) and the agreement of its segmentation with
    the twin's (WT/TC/ET Dice, the accuracy guard). On a GPU a first, untimed case runs before
    (cuDNN tuning, kernel loading): its total is 'first case s'.
    """
    roi = truth_roi(cache, case.case_id, cfg.model.inference.roi_margin)
    shape = cache.meta(case.case_id).original_shape
    rows = []
    exact: dict[tuple[bool, bool], tuple[float, np.ndarray]] = {}
    for variant in variants:
        roi_only, tta, fast = (*variant, False)[:3]
        predictor = untrained_predictor(cfg, device, tta, fast)
        first: dict[str, Any] = {}
        if device.type == "cuda":
            warmup = predictor.predict(case, roi_only=roi_only, roi=roi)
            first = {"first case s": warmup.timings["total"]}
        predictions = [predictor.predict(case, roi_only=roi_only, roi=roi) for _ in range(repeats)]
        timings = [prediction.timings for prediction in predictions]
        box = evaluated_region(cache.image(case.case_id).shape[1:], predictor.patch_size, roi)
        region = "ROI (true tumor box, forced)" if roi_only else "full volume"
        setting = f"{'x'.join(map(str, shape))}, patch {'x'.join(map(str, predictor.patch_size))}"
        if roi_only:
            setting += ", Stage-2 box " + "x".join(str(stop - start) for start, stop in box)
        setting += ", " + _precision_label(predictor)
        network = median([timing["stage1"] + timing["stage2"] for timing in timings])
        row = {
            "name": f"cascade {name}, Stage 2 on {region}"
            + (", 8x TTA" if tta else "")
            + (", fast CPU path" if fast else ""),
            "setting": setting,
            **{
                f"{part} s": median([timing[part] for timing in timings])
                for part in ("read_preprocess", "stage1", "stage2", "finish", "total")
            },
            "network s": network,
            **first,
        }
        if not fast:
            exact[(roi_only, tta)] = (network, predictions[-1].classes)
        elif (roi_only, tta) in exact:
            exact_network, exact_classes = exact[(roi_only, tta)]
            row["x exact"] = network / exact_network
            dice = agreement_dice(predictions[-1].classes, exact_classes)
            row.update({f"guard {region} Dice": value for region, value in dice.items()})
        rows.append(row)
    return rows


def _precision_label(predictor: CascadePredictor) -> str:
    dtype = predictor.autocast
    return {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}.get(
        dtype, str(dtype)
    )


def trained_guard_rows(
    checkpoint: Path, case: Case, device: torch.device, threads: int
) -> list[dict[str, Any]]:
    """A trained cascade (cascade.predict's checkpoint) on `case`, exact and on the fast CPU
    path, each on the Stage-2 region its own Stage 1 finds: times and the fast path's WT/TC/ET
    Dice against the exact segmentation (the accuracy guard)."""
    model = load_checkpoint(checkpoint)
    rows, reference, exact_network = [], None, None
    for fast in (False, True):
        predictor = build_predictor(model, device, cpu_bf16=fast)
        prediction = predictor.predict(case)
        timings = prediction.timings
        network = timings["stage1"] + timings["stage2"]
        box = prediction.stage2_box
        row = {
            "name": f"trained cascade ({checkpoint.name}), Stage 2 on its own ROI"
            + (", fast CPU path" if fast else ""),
            "setting": f"{_precision_label(predictor)}, {threads} thread(s), Stage-2 box "
            + ("none" if box is None else "x".join(str(b - a) for a, b in box)),
            **{f"{part} s": timings[part] for part in ("stage1", "stage2", "total")},
            "network s": network,
        }
        if reference is None:
            reference, exact_network = prediction.classes, network
        else:
            row["x exact"] = network / exact_network
            dice = agreement_dice(prediction.classes, reference, model.scheme)
            row.update({f"guard {region} Dice": value for region, value in dice.items()})
        rows.append(row)
    return rows


def nnunet_window_rows(
    cache: PreprocessCache,
    case_id: str,
    device: torch.device,
    fp16: bool,
    variants: Sequence[bool],
    patch_size: Sequence[int] = NNUNET_PATCH,
) -> list[dict[str, Any]]:
    """nnU-Net's full-resolution network over the whole (brain-cropped) case: sliding window,
    step half a patch, Gaussian weighting, one window at a time as nnU-Net predicts; with
    `variants` True the softmax is averaged over the 8 mirrorings. Network time only."""
    torch.manual_seed(0)
    net = nnunet_plain_unet(4, NUM_CLASSES)().to(device).eval()
    autocast = fp16 and device.type == "cuda"
    volume = torch.from_numpy(np.array(cache.image(case_id), dtype=np.float32)).to(device)
    rows = []
    for tta in variants:

        def run(tta=tta) -> None:
            sliding_window_predict(
                lambda windows: mirrored_softmax(net, windows, tta, autocast),
                volume,
                patch_size=tuple(patch_size),
                overlap=0.5,
                batch_size=1,
                num_outputs=NUM_CLASSES,
                weighting="gaussian",
            )

        with torch.inference_mode():
            cuda = device.type == "cuda"
            seconds = time_calls(run, 3 if cuda else 1, 1 if cuda else 0, device)
        rows.append(
            {
                "name": "nnU-Net PlainConvUNet, whole case" + (", 8x TTA" if tta else ""),
                "setting": f"cropped {'x'.join(map(str, volume.shape[1:]))}, "
                f"patch {'x'.join(map(str, patch_size))}, step 0.5, Gaussian, batch 1"
                + (", fp16" if autocast else ", fp32"),
                "network s": median(seconds),
            }
        )
    return rows


def window_overhead_rows(
    cfg: DictConfig, cache: PreprocessCache, case_id: str, device: torch.device
) -> list[dict[str, Any]]:
    """Sliding window over the whole cropped case: with the Stage-2 net, and with a stand-in
    that returns constant outputs, which leaves the cost of slicing, weighting and summing."""
    predictor = untrained_predictor(cfg, device, tta=False)
    image = torch.from_numpy(np.array(cache.image(case_id), dtype=np.float32)).to(device)
    prior = torch.full((NUM_CLASSES, *image.shape[1:]), 1.0 / NUM_CLASSES, device=device)
    volume = torch.cat([image, prior])
    patch = predictor.patch_size
    common = {
        "volume": volume,
        "patch_size": patch,
        "overlap": predictor.overlap,
        "batch_size": predictor.stage2_batch_size,
        "num_outputs": NUM_CLASSES,
    }

    def constant(windows: torch.Tensor) -> torch.Tensor:
        return windows.new_full((windows.shape[0], NUM_CLASSES, *windows.shape[2:]), 0.25)

    rows = []
    for label, function in (
        (
            "net + mix (CascadePredictor windows)",
            functools.partial(predictor._mixed_windows, predictor.members[0]),
        ),
        ("windowing only (constant stand-in)", constant),
    ):
        cuda = device.type == "cuda"  # a first, untimed pass tunes cuDNN for the window shape
        with torch.inference_mode():
            seconds = median(
                time_calls(lambda f=function: sliding_window_predict(f, **common), 1, cuda, device)
            )
        rows.append(
            {
                "name": f"sliding window, {label}",
                "setting": f"cropped {'x'.join(map(str, image.shape[1:]))}, "
                f"patch {'x'.join(map(str, patch))}, overlap {predictor.overlap}",
                "s": seconds,
            }
        )
    return rows


def torch_profile(function, device: torch.device, rows: int) -> str:
    """Top operators by self time of one call of `function` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    with profile(activities=activities) as profiler:
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return profiler.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=40)
