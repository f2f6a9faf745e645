"""End-to-end cascade inference: preprocess, Stage-1 prior, Stage 2 around the tumor, labels.

Stage 2 runs only on windows that cover the dilated bounding box of the Stage-1 tumor (classes
1..3); elsewhere the Stage-1 probabilities stand, and a case without Stage-1 tumor skips Stage 2.
Each window's Stage-2 softmax (averaged over 8 mirrorings with `tta`) is mixed with that window's
prior by the learned residual mix before the windows are blended. An ensemble runs each member's
cascade in turn (each Stage 2 on its own Stage 1's prior and tumor box) and averages their
probabilities before the argmax and the post-processing.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchio as tio
from torch import Tensor

from cascade.boxes import Box, bounding_box, enclosing_box
from cascade.data.cases import MODALITIES, Case
from cascade.data.geometry import probabilities_onto_grid
from cascade.data.labels import DEFAULT_SCHEME, LabelScheme, writing_scheme
from cascade.data.preprocess import CaseMeta, Preprocessor, preprocess_case
from cascade.data.transforms import uncrop
from cascade.inference.multiview import predict_prior
from cascade.inference.postprocess import ClassMap, keep_largest_tumor, suppress_small_enhancing
from cascade.inference.precision import autocast_dtype, autocast_to
from cascade.inference.sliding import evaluated_region, sliding_window_predict
from cascade.nn.members import CascadeNets

# Every subset of the three spatial axes of a (B, C, X, Y, Z) batch: the 8 mirrorings.
MIRROR_AXES: tuple[tuple[int, ...], ...] = tuple(
    axes for count in range(4) for axes in itertools.combinations((2, 3, 4), count)
)


def mirrored_softmax(
    net: Callable[[Tensor], Tensor],
    windows: Tensor,
    mirror: bool,
    autocast: bool | torch.dtype | None,
) -> Tensor:
    """float32 softmax of `net` on (B, C, *patch) windows; with `mirror`, the mean over the 8
    mirrorings, each flipped back (test-time augmentation as nnU-Net does it). `autocast`: a
    dtype to autocast to, True for float16, False or None for none."""
    dtype = torch.float16 if autocast is True else autocast or None
    mirrorings = MIRROR_AXES if mirror else ((),)
    total = None
    for axes in mirrorings:
        flipped = windows.flip(axes) if axes else windows
        with autocast_to(windows.device.type, dtype):
            logits = net(flipped)
        softmax = torch.softmax(logits.float(), dim=1)
        softmax = softmax.flip(axes) if axes else softmax
        total = softmax if total is None else total.add_(softmax)
    return total.div_(len(mirrorings))


@dataclass(eq=False)
class VolumePrediction:
    """Result on the preprocessed (cropped) grid (x, y, z)."""

    probabilities: Tensor  # float32 (classes, x, y, z) on the predictor's device: mixed output
    classes: np.ndarray  # uint8 (x, y, z) classes, post-processed
    stage1_classes: np.ndarray  # uint8 (x, y, z) argmax of the Stage-1 prior (members' mean)
    # where Stage 2 ran ((x0, x1), (y0, y1), (z0, z1)), the box around all members' boxes;
    # None: skipped
    stage2_box: Box | None
    timings: dict[str, float]  # seconds: "stage1", "stage2"


@dataclass(eq=False)
class Prediction:
    """Result of one case on the input's grid (full shape, crop and any resampling undone)."""

    labels: np.ndarray  # uint8 (X, Y, Z) in the case's label convention, ready to write
    classes: np.ndarray  # uint8 (X, Y, Z) classes, post-processed
    stage1_classes: np.ndarray  # uint8 (X, Y, Z) Stage-1 argmax
    stage2_box: Box | None  # on the preprocessed grid; None when Stage 2 was skipped
    timings: dict[str, float]  # seconds: read_preprocess, stage1, stage2, finish, total
    meta: CaseMeta  # crop box, original shape, affine and header for writing


def tumor_box(classes: Tensor, margin: int) -> Box | None:
    """Bounding box of classes != 0 in an (X, Y, Z) map, grown by `margin` voxels and clipped."""
    return bounding_box(classes != 0, margin)


class CascadePredictor:
    """Segments cases with one or more trained cascades (`members`: Stage-1 net, Stage-2 net and
    residual mix each), averaging the members' probabilities.

    The nets are moved to `device` and put in eval mode. `fp16` autocasts to float16 on CUDA;
    `cpu_bf16` to bfloat16 on a CPU that computes it natively (the fast CPU path; False: fp32).
    `tta` averages Stage-2 softmax over the 8 mirrorings; `stage1_tta` averages each view of the
    prior over its 4 in-plane mirrorings, the flips Stage 1 trained with (4x Stage-1 cost).
    `stage1_plane_size` pads slices as `predict_prior` does for the cached priors; give the same.
    `scheme` is the label scheme the nets were trained on (their class count).
    """

    def __init__(
        self,
        members: Sequence[CascadeNets],
        preprocessing: Preprocessor | tio.Transform,
        slab_depth: int,
        views: Sequence[str],
        patch_size: Sequence[int],
        overlap: float,
        roi_margin: int,
        stage1_batch_size: int,
        stage2_batch_size: int,
        device: torch.device | str,
        fp16: bool,
        tta: bool,
        min_enhancing_voxels: int | None,
        largest_tumor_component: bool = False,
        stage1_tta: bool = False,
        stage1_plane_size: Sequence[int] | None = None,
        weighting: str = "gaussian",
        scheme: LabelScheme = DEFAULT_SCHEME,
        cpu_bf16: bool = False,
    ) -> None:
        if len(patch_size) != 3:
            raise ValueError(f"patch_size must have 3 values, got {patch_size}")
        if roi_margin < 0:
            raise ValueError(f"roi_margin must be >= 0, got {roi_margin}")
        if not members:
            raise ValueError("a cascade predictor needs at least one member")
        self.device = torch.device(device)
        self.members = tuple(member.to(self.device) for member in members)
        if not isinstance(preprocessing, Preprocessor):
            preprocessing = Preprocessor(preprocessing)
        self.preprocessing = preprocessing
        self.scheme = scheme
        self.slab_depth = slab_depth
        self.views = tuple(views)
        self.patch_size = tuple(int(size) for size in patch_size)
        self.overlap = overlap
        self.roi_margin = roi_margin
        self.stage1_batch_size = stage1_batch_size
        self.stage2_batch_size = stage2_batch_size
        self.autocast = autocast_dtype(self.device, fp16, cpu_bf16)
        self.fp16, self.cpu_bf16 = fp16, cpu_bf16
        self.tta = tta
        self.stage1_tta = stage1_tta
        self.stage1_plane_size = stage1_plane_size
        self.min_enhancing_voxels = min_enhancing_voxels
        self.largest_tumor_component = largest_tumor_component
        self.weighting = weighting

    @torch.inference_mode()
    def predict(self, case: Case, roi_only: bool = True, roi: Box | None = None) -> Prediction:
        """Segment one case; labels come back on the input's grid and label convention.

        `roi_only=False` runs Stage 2 on the whole volume (for comparison); `roi` forces the
        Stage-2 box on the preprocessed grid instead of the Stage-1 tumor box.
        """
        start = time.perf_counter()
        # The label, if any, is not needed to predict: do not read it.
        image, _, meta = preprocess_case(dataclasses.replace(case, label=None), self.preprocessing)
        read_done = time.perf_counter()
        volume = self.predict_arrays(image, roi_only=roi_only, roi=roi)
        stage2_done = time.perf_counter()

        if meta.resampled:
            classes, stage1_classes = self._onto_input_grid(volume, meta)
        else:
            classes = _uncrop_classes(volume.classes, meta)
            stage1_classes = _uncrop_classes(volume.stage1_classes, meta)
        labels = writing_scheme(case.scheme, self.scheme).from_classes(classes)
        end = time.perf_counter()
        timings = {
            "read_preprocess": read_done - start,
            **volume.timings,
            "finish": end - stage2_done,
            "total": end - start,
        }
        return Prediction(labels, classes, stage1_classes, volume.stage2_box, timings, meta)

    def _onto_input_grid(
        self, volume: VolumePrediction, meta: CaseMeta
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cascade and Stage-1 classes on the input's grid: probabilities resampled, then the
        argmax taken there (see cascade.data.geometry), then the post-processing."""
        model_affine = np.asarray(meta.model_affine)
        probabilities = _uncrop_probabilities(volume.probabilities.float().cpu(), meta)
        resampled = probabilities_onto_grid(probabilities, model_affine, meta.input_grid)
        classes = self.postprocess(resampled.argmax(0).to(torch.uint8))
        stage1 = torch.from_numpy(volume.stage1_classes.astype(np.int64))
        one_hot = torch.nn.functional.one_hot(stage1, probabilities.shape[0]).movedim(-1, 0)
        stage1_one_hot = _uncrop_probabilities(one_hot.float(), meta)
        stage1_resampled = probabilities_onto_grid(stage1_one_hot, model_affine, meta.input_grid)
        stage1_classes = stage1_resampled.argmax(0).to(torch.uint8)
        return classes.numpy(), stage1_classes.numpy()

    def postprocess(self, classes: ClassMap) -> ClassMap:
        """The model's post-processing (largest component, enhancing threshold) of one (X, Y, Z)
        class map, a tensor or an array; the cascade's output has it already."""
        if self.largest_tumor_component:
            classes = keep_largest_tumor(classes, self.scheme.regions["wt"])
        if self.min_enhancing_voxels:
            classes = suppress_small_enhancing(classes, self.min_enhancing_voxels)
        return classes

    @torch.inference_mode()
    def predict_arrays(
        self, image: np.ndarray | Tensor, roi_only: bool = True, roi: Box | None = None
    ) -> VolumePrediction:
        """Cascade on a preprocessed image (4, x, y, z); see `predict` for `roi_only` and `roi`."""
        modalities = len(MODALITIES)
        if not torch.is_tensor(image):
            # A copy: cached images are read-only memory maps.
            image = torch.tensor(np.asarray(image), dtype=torch.float32)
        if image.dim() != 4 or image.shape[0] != modalities:
            raise ValueError(f"image must be (4, x, y, z), got shape {tuple(image.shape)}")
        image = image.to(self.device, torch.float32)

        stage1_seconds = stage2_seconds = 0.0
        prior_sum = probability_sum = None
        boxes: list[Box] = []
        for member in self.members:
            start = time.perf_counter()
            prior = self._stage1_prior(member, image)
            self._synchronize()
            stage1_done = time.perf_counter()
            probabilities, box = self._member_output(member, image, prior, roi_only, roi)
            self._synchronize()
            stage1_seconds += stage1_done - start
            stage2_seconds += time.perf_counter() - stage1_done
            if box is not None:
                boxes.append(box)
            # Sums in place: one member's volumes at a time, whatever the ensemble's size. A
            # member without Stage 2 returns its prior itself: the prior sum starts as a copy.
            if prior_sum is None:
                prior_sum = prior.clone() if len(self.members) > 1 else prior
            else:
                prior_sum.add_(prior)
            probability_sum = (
                probabilities if probability_sum is None else probability_sum.add_(probabilities)
            )
        start = time.perf_counter()
        stage1_classes = prior_sum.argmax(0)
        self._synchronize()
        stage1_done = time.perf_counter()
        probabilities = probability_sum.div_(len(self.members))
        self._synchronize()
        stage1_seconds += stage1_done - start
        stage2_seconds += time.perf_counter() - stage1_done

        classes = self.postprocess(probabilities.argmax(0).to(torch.uint8))
        return VolumePrediction(
            probabilities=probabilities,
            classes=classes.cpu().numpy(),
            stage1_classes=stage1_classes.to(torch.uint8).cpu().numpy(),
            stage2_box=enclosing_box(boxes),
            timings={"stage1": stage1_seconds, "stage2": stage2_seconds},
        )

    def _member_output(
        self,
        member: CascadeNets,
        image: Tensor,
        prior: Tensor,
        roi_only: bool,
        roi: Box | None,
    ) -> tuple[Tensor, Box | None]:
        """One member's mixed probabilities, and the box its Stage 2 ran on (None: skipped)."""
        if not roi_only:
            box: Box | None = tuple((0, size) for size in image.shape[1:])  # type: ignore[assignment]
        elif roi is not None:
            box = roi
        else:
            box = tumor_box(prior.argmax(0), self.roi_margin)
        if box is None:
            return prior, None
        box = evaluated_region(image.shape[1:], self.patch_size, box)
        return self._stage2(member, image, prior, box), box

    def _stage1_prior(self, member: CascadeNets, image: Tensor) -> Tensor:
        """A member's Stage-1 probabilities (classes, x, y, z) over the views, optionally
        mirror-averaged."""
        return predict_prior(
            member.stage1,
            image,
            slab_depth=self.slab_depth,
            views=self.views,
            batch_size=self.stage1_batch_size,
            device=self.device,
            fp16=self.fp16,
            plane_size=self.stage1_plane_size,
            cpu_bf16=self.cpu_bf16,
            mirror=self.stage1_tta,
        )

    def _stage2(self, member: CascadeNets, image: Tensor, prior: Tensor, box: Box) -> Tensor:
        """The prior with a member's Stage-2 mixed probabilities in `box` (classes, x, y, z)."""
        return stage2_in_box(
            lambda windows: self._mixed_windows(member, windows),
            image,
            prior,
            box,
            self.patch_size,
            self.overlap,
            self.stage2_batch_size,
            self.weighting,
        )

    def _mixed_windows(self, member: CascadeNets, windows: Tensor) -> Tensor:
        """(B, 4 + classes, *patch) image + prior windows -> (B, classes, *patch) mixed by
        `member`."""
        # The net's own forward, not its __call__: a net compiled in place for training
        # (model.compile) would compile again for inference, 100 s for the first case on a CPU
        # and a minute on a GPU, where compiled prediction is no faster (experiments/bench).
        stage2 = mirrored_softmax(member.stage2.forward, windows, self.tta, self.autocast)
        return member.mix(stage2, windows[:, len(MODALITIES) :].float())

    def _synchronize(self) -> None:
        # CUDA kernels run asynchronously: wait before reading the clock.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def stage2_in_box(
    mixed_windows: Callable[[Tensor], Tensor],
    image: Tensor,
    prior: Tensor,
    box: Box,
    patch_size: Sequence[int],
    overlap: float,
    batch_size: int,
    weighting: str = "gaussian",
) -> Tensor:
    """The prior (classes, x, y, z) with `mixed_windows`' output (image + prior windows ->
    mixed probabilities) blended over the sliding windows of `box` pasted into it."""
    region = tuple(slice(start, stop) for start, stop in box)
    inputs = torch.cat(
        [image[(slice(None), *region)], prior[(slice(None), *region)].to(image.dtype)]
    )
    mixed = sliding_window_predict(
        mixed_windows,
        inputs,
        patch_size=tuple(patch_size),  # type: ignore[arg-type]
        overlap=overlap,
        batch_size=batch_size,
        num_outputs=prior.shape[0],
        weighting=weighting,
    )
    probabilities = prior.clone().float()
    probabilities[(slice(None), *region)] = mixed
    return probabilities


def roi_probabilities(
    mixed_windows: Callable[[Tensor], Tensor],
    image: Tensor,
    prior: Tensor,
    patch_size: Sequence[int],
    overlap: float,
    batch_size: int,
    roi_margin: int,
    weighting: str = "gaussian",
) -> Tensor:
    """The cascade's output as the predictor runs it: Stage 2 on the windows that cover the
    prior's tumor box grown by `roi_margin`, the prior elsewhere (all of it without tumor)."""
    box = tumor_box(prior.argmax(0), roi_margin)
    if box is None:
        return prior.float()
    box = evaluated_region(image.shape[1:], patch_size, box)
    return stage2_in_box(
        mixed_windows, image, prior, box, patch_size, overlap, batch_size, weighting
    )


def _uncrop_classes(classes: np.ndarray, meta: CaseMeta) -> np.ndarray:
    return uncrop(classes, meta.crop_box, meta.original_shape, fill=0).astype(np.uint8)


def _uncrop_probabilities(probabilities: Tensor, meta: CaseMeta) -> Tensor:
    """(classes, x, y, z) on the crop -> (classes, *original_shape); background outside it."""
    full = torch.zeros((probabilities.shape[0], *meta.original_shape), dtype=probabilities.dtype)
    full[0] = 1.0
    region = tuple(slice(start, stop) for start, stop in meta.crop_box)
    full[(slice(None), *region)] = probabilities
    return full
