import numpy as np
import pytest
import torch
from torch import nn

from cascade.data.discovery import discover_cases
from cascade.data.labels import SCHEMES
from cascade.data.preprocess import preprocess_case
from cascade.data.transforms import build_preprocessing
from cascade.inference.cascade import CascadePredictor, tumor_box
from cascade.inference.multiview import predict_prior
from cascade.inference.sliding import window_starts
from cascade.nn.attention_unet3d import AttentionUNet3d
from cascade.nn.members import CascadeNets
from cascade.nn.residual_mix import LearnableResidualMix
from cascade.nn.unet2d import UNet2d

SLAB_DEPTH = 3
VIEWS = ("axial", "coronal", "sagittal")
PATCH = (16, 16, 16)
SHAPE = (32, 32, 24)


class IntensityStage1(nn.Module):
    """Stage-1 stand-in: necrosis where the slab's mean intensity exceeds `threshold`.

    The synthetic tumor is about 10 robust standard deviations above the brain, so a threshold
    of 3 finds it and nothing else; a huge threshold finds no tumor at all.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, slabs: torch.Tensor) -> torch.Tensor:
        score = 20 * (slabs.mean(1, keepdim=True) - self.threshold)
        other = torch.full_like(score, -20.0)
        return torch.cat([torch.zeros_like(score), score, other, other], dim=1)


class CountingNet(nn.Module):
    """Wraps a Stage-2 net and counts the windows it is asked to segment."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.windows = 0

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        self.windows += windows.shape[0]
        return self.net(windows)


class ConstantStage2(nn.Module):
    """Stage-2 stand-in whose logits pick `winner` everywhere."""

    def __init__(self, winner: int) -> None:
        super().__init__()
        self.winner = winner

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        logits = torch.full((windows.shape[0], 4, *windows.shape[2:]), -10.0)
        logits[:, self.winner] = 10.0
        return logits


def tiny_stage2() -> CountingNet:
    torch.manual_seed(0)
    return CountingNet(
        AttentionUNet3d(8, 4, filters=4, depth=2, norm="instance", activation="relu")
    )


def make_predictor(
    stage1: nn.Module, stage2: nn.Module, mix: nn.Module | None = None, **overrides
) -> CascadePredictor:
    mix = LearnableResidualMix(0.5) if mix is None else mix
    return CascadePredictor(members=[CascadeNets(stage1, stage2, mix)], **settings_with(overrides))


def settings_with(overrides: dict) -> dict:
    """The test predictor's settings, with `overrides`."""
    settings = dict(
        preprocessing=build_preprocessing(0, 0.5, 99.5),
        slab_depth=SLAB_DEPTH,
        views=VIEWS,
        patch_size=PATCH,
        overlap=0.5,
        roi_margin=1,
        stage1_batch_size=8,
        stage2_batch_size=2,
        device="cpu",
        fp16=False,
        tta=False,
        min_enhancing_voxels=None,
    )
    settings.update(overrides)
    return settings


@pytest.fixture
def case(write_case, tmp_path):
    write_case(tmp_path / "in", shape=SHAPE)
    return discover_cases(tmp_path / "in")[0]


def test_tumor_box_is_dilated_and_clipped():
    classes = torch.zeros((20, 20, 20), dtype=torch.long)
    assert tumor_box(classes, margin=3) is None
    classes[5:8, 1, 15:19] = 2
    assert tumor_box(classes, margin=3) == ((2, 11), (0, 5), (12, 20))


def test_labels_in_original_geometry_and_input_convention(case):
    # Stage 2 votes enhancing everywhere and alpha ~ 1, so every brain voxel is enhancing.
    predictor = make_predictor(
        IntensityStage1(3.0), ConstantStage2(winner=3), mix=LearnableResidualMix(0.999)
    )
    prediction = predictor.predict(case, roi_only=False)
    assert prediction.labels.shape == SHAPE and prediction.labels.dtype == np.uint8
    assert set(np.unique(prediction.labels)) == {0, 4}
    (x0, x1), (y0, y1), (z0, z1) = prediction.meta.crop_box
    assert np.all(prediction.labels[x0:x1, y0:y1, z0:z1] == 4)
    assert prediction.labels.sum() == 4 * (x1 - x0) * (y1 - y0) * (z1 - z0)
    np.testing.assert_array_equal(prediction.classes, np.where(prediction.labels == 4, 3, 0))
    assert prediction.stage1_classes.shape == SHAPE
    assert prediction.meta.original_shape == SHAPE
    assert set(prediction.timings) == {"read_preprocess", "stage1", "stage2", "finish", "total"}


def test_brats2023_case_keeps_enhancing_as_3(write_case, tmp_path):
    write_case(tmp_path / "in", naming="brats2023", shape=SHAPE)
    case = discover_cases(tmp_path / "in")[0]
    assert case.scheme is SCHEMES["brats2023"]
    predictor = make_predictor(
        IntensityStage1(3.0), ConstantStage2(winner=3), mix=LearnableResidualMix(0.999)
    )
    labels = predictor.predict(case, roi_only=False).labels
    assert set(np.unique(labels)) == {0, 3}


def test_untrained_nets_give_valid_brats2020_labels(case):
    torch.manual_seed(0)
    stage1 = UNet2d(4 * SLAB_DEPTH, 4, filters=4, depth=2, norm="instance", activation="relu")
    predictor = make_predictor(stage1, tiny_stage2())
    prediction = predictor.predict(case)
    assert prediction.labels.shape == SHAPE
    assert set(np.unique(prediction.labels)) <= {0, 1, 2, 4}


def test_stage2_runs_only_around_the_stage1_tumor(case):
    stage2 = tiny_stage2()
    predictor = make_predictor(IntensityStage1(3.0), stage2, mix=LearnableResidualMix(0.5))
    prediction = predictor.predict(case)
    roi_windows = stage2.windows
    predictor.predict(case, roi_only=False)
    full_windows = stage2.windows - roi_windows
    assert 0 < roi_windows < full_windows
    # Outside the Stage-2 box the Stage-1 decision stands.
    x0, y0, z0 = (start for start, _ in prediction.meta.crop_box)
    box = prediction.stage2_box
    outside = np.ones(SHAPE, dtype=bool)
    outside[
        x0 + box[0][0] : x0 + box[0][1],
        y0 + box[1][0] : y0 + box[1][1],
        z0 + box[2][0] : z0 + box[2][1],
    ] = False
    np.testing.assert_array_equal(prediction.classes[outside], prediction.stage1_classes[outside])
    # The box holds the Stage-1 tumor.
    tumor = np.argwhere(prediction.stage1_classes > 0)
    assert len(tumor) > 0
    offset = np.array([x0, y0, z0])
    assert np.all(tumor.min(0) >= offset + [start for start, _ in box])
    assert np.all(tumor.max(0) < offset + [stop for _, stop in box])


def test_stage2_is_mixed_with_the_prior_inside_the_box(case):
    image, _, _ = preprocess_case(case, build_preprocessing(0, 0.5, 99.5))
    stage1 = IntensityStage1(3.0)
    predictor = make_predictor(stage1, ConstantStage2(winner=2), mix=LearnableResidualMix(0.25))
    result = predictor.predict_arrays(image)
    prior = predict_prior(stage1, image, SLAB_DEPTH, VIEWS, 8, "cpu", False)
    stage2 = torch.softmax(torch.tensor([-10.0, -10.0, 10.0, -10.0]), 0).view(4, 1, 1, 1)
    expected = prior.clone()
    region = (slice(None), *(slice(a, b) for a, b in result.stage2_box))
    expected[region] = 0.25 * stage2 + 0.75 * prior[region]
    torch.testing.assert_close(result.probabilities, expected, rtol=1e-5, atol=1e-5)


def test_roi_covering_the_volume_equals_full_volume_stage2(case):
    stage2 = tiny_stage2()
    full = make_predictor(IntensityStage1(3.0), stage2).predict(case, roi_only=False)
    huge = make_predictor(IntensityStage1(3.0), stage2, roi_margin=1000).predict(case)
    assert huge.stage2_box == full.stage2_box
    np.testing.assert_array_equal(huge.labels, full.labels)


def test_no_stage1_tumor_skips_stage2(case):
    stage2 = tiny_stage2()
    prediction = make_predictor(IntensityStage1(1e6), stage2).predict(case)
    assert stage2.windows == 0
    assert prediction.stage2_box is None
    assert not prediction.labels.any()


def test_mirroring_tta(case):
    stage2 = tiny_stage2()
    predictor = make_predictor(IntensityStage1(3.0), stage2, tta=True, stage1_tta=True)
    prediction = predictor.predict(case)
    assert prediction.labels.shape == SHAPE
    assert set(np.unique(prediction.labels)) <= {0, 1, 2, 4}
    box = prediction.stage2_box
    windows = np.prod(
        [len(window_starts(b - a, p, 0.5)) for (a, b), p in zip(box, PATCH, strict=True)]
    )
    assert stage2.windows == 8 * windows
    # A flip-equivariant Stage 1 and a constant Stage 2 give the same answer with or without TTA.
    constant = make_predictor(IntensityStage1(3.0), ConstantStage2(2), tta=True, stage1_tta=True)
    no_tta = make_predictor(IntensityStage1(3.0), ConstantStage2(2))
    np.testing.assert_array_equal(constant.predict(case).labels, no_tta.predict(case).labels)


def test_a_net_compiled_in_place_for_training_predicts_eagerly(case):
    """model.compile compiles the Stage-2 net in place; prediction must not compile it again."""
    stage2 = tiny_stage2()

    def compiled_call(*args, **kwargs):
        raise AssertionError("the compiled call ran")

    stage2._compiled_call_impl = compiled_call  # what nn.Module.compile() sets
    predictor = make_predictor(IntensityStage1(threshold=3.0), stage2)
    prediction = predictor.predict(case)
    assert prediction.stage2_box is not None and stage2.windows > 0


@pytest.mark.parametrize("missing_first", [False, True])
def test_an_ensemble_averages_its_members_probabilities(case, missing_first):
    """One member finds the tumor and runs Stage 2 around it, the other finds none and skips
    Stage 2: the ensemble's output is the mean of the two members' own outputs, in either
    order."""
    image, _, _ = preprocess_case(case, build_preprocessing(0, 0.5, 99.5))
    finds = CascadeNets(IntensityStage1(3.0), ConstantStage2(winner=2), LearnableResidualMix(0.4))
    misses = CascadeNets(IntensityStage1(1e6), tiny_stage2(), LearnableResidualMix(0.5))
    alone = [
        CascadePredictor(members=[member], **settings_with({})).predict_arrays(image)
        for member in (finds, misses)
    ]
    members = [misses, finds] if missing_first else [finds, misses]
    both = CascadePredictor(members=members, **settings_with({})).predict_arrays(image)

    expected = (alone[0].probabilities + alone[1].probabilities) / 2
    torch.testing.assert_close(both.probabilities, expected)
    assert misses.stage2.windows == 0
    assert alone[1].stage2_box is None and both.stage2_box == alone[0].stage2_box
    np.testing.assert_array_equal(both.classes, expected.argmax(0).numpy())
    # a tumor only one of two members sees is left out: background keeps at least half the vote
    assert (alone[0].classes > 0).any() and not (both.classes > 0).any()
    assert set(both.timings) == {"stage1", "stage2"}


def test_a_predictor_without_members_is_refused():
    with pytest.raises(ValueError, match="at least one member"):
        CascadePredictor(members=[], **settings_with({}))
