"""Stage-1 prior of a whole volume: 2.5D slab predictions along each view, softmax averaged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from cascade.data.cache import quantise_prior
from cascade.data.slabs import slab_channels, view_axis
from cascade.inference.precision import autocast_dtype, autocast_to

# Flips of a (4, H, W, S) slab volume's two in-plane axes: none, H, W, both.
IN_PLANE_MIRRORINGS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (1, 2))


class PriorStore(Protocol):
    def image(self, case_id: str) -> np.ndarray: ...  # float (4, X, Y, Z)
    def has_prior(self, case_id: str, tag: str) -> bool: ...
    def write_prior(self, case_id: str, tag: str, prior: np.ndarray) -> None: ...


def slab_batch_size(inference: Mapping[str, Any], device: torch.device | str) -> int:
    """Slabs per forward pass on `device`, from the model's inference settings.

    A GPU needs large batches to be busy; on a CPU small ones run faster, as one slab's
    activations stay in cache. Settings saved before `cpu_slab_batch_size` existed use
    `slab_batch_size` on every device.
    """
    if torch.device(device).type == "cpu":
        return int(inference.get("cpu_slab_batch_size", inference["slab_batch_size"]))
    return int(inference["slab_batch_size"])


def _pad_plane(
    volume: Tensor, plane_size: Sequence[int] | None
) -> tuple[Tensor, tuple[slice, ...]]:
    """Zero-pad (C, H, W, S) in-plane to at least plane_size, centred; returns the crop back."""
    if plane_size is None:
        return volume, (slice(None),) * 4
    sizes = zip(volume.shape[1:3], plane_size, strict=True)
    extra = [max(int(target) - size, 0) for size, target in sizes]
    before = [amount // 2 for amount in extra]
    padded = F.pad(volume, (0, 0, before[1], extra[1] - before[1], before[0], extra[0] - before[0]))
    crop = tuple(slice(b, b + size) for b, size in zip(before, volume.shape[1:3], strict=True))
    return padded, (slice(None), *crop, slice(None))


def predict_view(
    net: nn.Module,
    image: Tensor,
    slab_depth: int,
    view: str,
    batch_size: int,
    fp16: bool,
    plane_size: Sequence[int] | None = None,
    cpu_bf16: bool = False,
    mirror: bool = False,
) -> Tensor:
    """Softmax of the net for every slice along `view`: image (4, X, Y, Z) -> (K, X, Y, Z).

    fp16 autocast with `fp16` on CUDA, bf16 with `cpu_bf16` on a CPU that computes it natively.
    `mirror` averages over the 4 in-plane mirrorings, the flips training augments with; the
    slab axis is never flipped (a reversed slice order is one the net has not seen).
    """
    axis = view_axis(view)
    volume = image.movedim(1 + axis, -1)  # (4, H, W, S), slice axis last as in training
    volume, crop = _pad_plane(volume, plane_size)
    mirrorings = IN_PLANE_MIRRORINGS if mirror else ((),)
    total = None
    for axes in mirrorings:
        flipped = volume.flip(axes) if axes else volume
        softmax = _slice_softmax(net, flipped, slab_depth, batch_size, fp16, cpu_bf16)
        softmax = softmax.flip(axes) if axes else softmax
        total = softmax if total is None else total.add_(softmax)
    if len(mirrorings) > 1:
        total.div_(len(mirrorings))
    return total[crop].movedim(-1, 1 + axis)


def _slice_softmax(
    net: nn.Module, volume: Tensor, slab_depth: int, batch_size: int, fp16: bool, cpu_bf16: bool
) -> Tensor:
    """(4, H, W, S) slice axis last -> the net's softmax (K, H, W, S) on every slice's slab."""
    half = slab_depth // 2
    # zero slices past both ends (background after the z-score), then every k-window is a slab
    slabs = F.pad(volume, (half, half)).unfold(-1, slab_depth, 1)  # (4, H, W, S, k), a view
    slice_count = volume.shape[-1]
    dtype = autocast_dtype(volume.device, fp16, cpu_bf16)
    probabilities = None
    for start in range(0, slice_count, batch_size):
        stop = min(start + batch_size, slice_count)
        batch = slab_channels(slabs[:, :, :, start:stop].movedim(3, 0))  # (b, 4k, H, W)
        if stop - start < batch_size and volume.device.type == "cuda":
            # every pass the same shape: with cudnn.benchmark each new shape (the last batch
            # of every view and case) would be autotuned anew, costing more than the pass
            batch = F.pad(batch, (0, 0, 0, 0, 0, 0, 0, batch_size - (stop - start)))
        with autocast_to(volume.device.type, dtype):
            logits = net(batch)[: stop - start]
        batch_probabilities = torch.softmax(logits.float(), dim=1)  # (b, K, H, W)
        if probabilities is None:
            probabilities = volume.new_empty((logits.shape[1], *volume.shape[1:3], slice_count))
        probabilities[..., start:stop] = batch_probabilities.movedim(0, -1)
    return probabilities


@torch.inference_mode()
def predict_prior(
    net: nn.Module,
    image: Tensor | np.ndarray,
    slab_depth: int,
    views: Sequence[str],
    batch_size: int,
    device: torch.device | str,
    fp16: bool,
    plane_size: Sequence[int] | None = None,
    cpu_bf16: bool = False,
    mirror: bool = False,
) -> Tensor:
    """Mean over views of the slab-wise softmax: image (4, X, Y, Z) -> float32 (K, X, Y, Z).

    Runs on `device` (the net must already be there); fp16 autocast only on CUDA, bf16 on a
    CPU only with `cpu_bf16` (see cascade.inference.precision). plane_size
    optionally zero-pads each slice to the training slab size so normalisation sees the same
    amount of background as in training. `mirror`: each view averaged over its in-plane
    mirrorings (test-time augmentation, 4x the cost).
    """
    if not views:
        raise ValueError("predict_prior: no views given")
    if isinstance(image, np.ndarray):
        # copy: cache images are read-only memmaps, which torch cannot wrap safely; in their
        # stored precision (float16 halves the bytes to the device), float32 once there
        image = torch.from_numpy(np.array(image))
    image = image.to(device=device).float()
    prior = None
    for view in views:
        view_probabilities = predict_view(
            net, image, slab_depth, view, batch_size, fp16, plane_size, cpu_bf16, mirror
        )
        prior = view_probabilities if prior is None else prior.add_(view_probabilities)
    return prior.div_(len(views))


def write_priors(
    net: nn.Module,
    cache: PriorStore,
    case_ids: Sequence[str],
    tag: str,
    slab_depth: int,
    views: Sequence[str],
    batch_size: int,
    device: torch.device | str,
    fp16: bool,
    progress: bool = True,
    plane_size: Sequence[int] | None = None,
    cpu_bf16: bool = False,
) -> None:
    """Predict and store the prior of every case that has none under `tag` yet, handed to the
    store as uint8 steps of 1/255 (`cascade.data.cache.quantise_prior`), quantised on the
    device: a quarter of the bytes back to the host, and no host pass over the volume.
    `fp16` and `cpu_bf16` choose the precision as for `predict_prior`."""
    todo = [case_id for case_id in case_ids if not cache.has_prior(case_id, tag)]
    if not todo:
        return
    was_training = net.training
    net.eval().to(device)
    try:
        for case_id in tqdm(todo, desc="stage-1 priors", disable=not progress):
            prior = predict_prior(
                net, cache.image(case_id), slab_depth, views, batch_size, device, fp16,
                plane_size, cpu_bf16,
            )  # fmt: skip
            cache.write_prior(case_id, tag, quantise_prior(prior).cpu().numpy())
    finally:
        net.train(was_training)
