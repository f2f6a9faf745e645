import importlib
import math
import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from cascade.data.labels import SCHEMES
from cascade.metrics import (
    HD95_EMPTY_MM,
    METRIC_KEYS,
    RegionDice,
    case_metrics,
    hd95,
    metric_keys,
    missing_prediction_metrics,
    region_volumes_ml,
    summarize,
    volume_comparison,
    volume_keys,
)

EDEMA, NECROSIS, ENHANCING = 2, 1, 3


def reference_package(name: str):
    """A comparison package of the test extra: skipped where it is not installed, except in CI,
    which installs it and must fail without it."""
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


def cube(shape, corner, size, value=1) -> np.ndarray:
    volume = np.zeros(shape, dtype=np.uint8)
    x, y, z = corner
    volume[x : x + size, y : y + size, z : z + size] = value
    return volume


def random_blobs(rng, shape=(20, 22, 18)) -> np.ndarray:
    """Class map with irregular, nested WT/TC/ET blobs."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2)
    classes = np.zeros(shape, dtype=np.uint8)
    classes[noise > 0.05] = EDEMA
    classes[noise > 0.15] = NECROSIS
    classes[noise > 0.25] = ENHANCING
    return classes


def with_false_positive_blobs(rng, mask: np.ndarray, count: int = 3) -> np.ndarray:
    """The mask plus small blobs at random places, most of them away from it."""
    mask = mask.copy()
    for _ in range(count):
        x, y, z = rng.integers(0, np.asarray(mask.shape) - 2)
        mask[x : x + 2, y : y + 2, z : z + 1] = True
    return mask


def reference_hd95(prediction: np.ndarray, truth: np.ndarray, spacing, convention: str) -> float:
    """Brute force: surfaces from the 6-neighbourhood, all pairwise distances."""

    def surface_points(mask):
        padded = np.pad(mask, 1)
        interior = mask.copy()
        for axis in range(3):
            for step in (-1, 1):
                interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~interior) * np.asarray(spacing)

    a, b = surface_points(prediction), surface_points(truth)
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    to_truth, to_prediction = distances.min(1), distances.min(0)
    if convention == "pooled":
        return np.percentile(np.concatenate([to_truth, to_prediction]), 95)
    return max(np.percentile(to_truth, 95), np.percentile(to_prediction, 95))


def test_keys_and_overlapping_cubes():
    truth = cube((16, 16, 16), (3, 2, 2), 4, EDEMA)
    prediction = cube((16, 16, 16), (2, 2, 2), 4, EDEMA)  # overlap 3 x 4 x 4 = 48 of 64
    result = case_metrics(prediction, truth, (1.0, 1.0, 1.0))
    assert tuple(result) == METRIC_KEYS
    assert result["dice_wt"] == pytest.approx(2 * 48 / 128)
    # No core or enhancing tumor in either: perfect by the BraTS rule.
    assert result["dice_tc"] == result["dice_et"] == 1.0
    assert result["hd95_tc"] == result["hd95_et"] == 0.0


def test_sensitivity_and_specificity():
    truth = cube((16, 16, 16), (3, 2, 2), 4, NECROSIS)
    prediction = cube((16, 16, 16), (2, 2, 2), 4, NECROSIS)
    result = case_metrics(prediction, truth, (1.0, 1.0, 1.0))
    negatives = 16**3 - 64
    assert result["sens_wt"] == result["sens_tc"] == pytest.approx(48 / 64)
    assert result["spec_wt"] == pytest.approx((negatives - 16) / negatives)
    assert result["sens_et"] == result["spec_et"] == 1.0  # nothing to find, nothing found


@pytest.mark.parametrize("convention", ["pooled", "max_directed"])
def test_hd95_of_shifted_plate_with_anisotropic_spacing(convention):
    # A one-voxel-thick plate is all surface: every point lies exactly 3 voxels from the other.
    truth = np.zeros((16, 12, 12), dtype=bool)
    truth[4, 2:10, 2:10] = True
    prediction = np.roll(truth, 3, axis=0)
    assert hd95(prediction, truth, (2.5, 1.0, 0.7), convention) == pytest.approx(7.5)
    assert hd95(prediction, truth, (1.0, 1.0, 1.0), convention) == pytest.approx(3.0)


@pytest.mark.parametrize("convention", ["pooled", "max_directed"])
def test_hd95_of_shifted_cube_matches_brute_force(convention):
    truth = cube((20, 20, 20), (4, 4, 4), 8).astype(bool)
    prediction = np.roll(truth, 3, axis=1)
    spacing = (1.0, 2.0, 0.5)
    assert hd95(prediction, truth, spacing, convention) == pytest.approx(
        reference_hd95(prediction, truth, spacing, convention)
    )


@pytest.mark.parametrize("convention", ["pooled", "max_directed"])
def test_hd95_touching_the_volume_border_matches_brute_force(convention):
    rng = np.random.default_rng(3)
    for _ in range(3):
        prediction = with_false_positive_blobs(rng, random_blobs(rng) > 0)
        truth = random_blobs(rng) > 0
        spacing = (0.9, 1.3, 2.0)
        assert hd95(prediction, truth, spacing, convention) == pytest.approx(
            reference_hd95(prediction, truth, spacing, convention)
        )


def test_pooled_hd95_is_below_max_directed_with_a_distant_false_positive():
    # 8^3 cubes one voxel apart, and a 3^3 false-positive speck far away: its 26 surface voxels
    # are 8% of the prediction's 322 (above that side's P95) but 4% of the 618 pooled.
    truth = cube((32, 32, 32), (4, 4, 4), 8).astype(bool)
    prediction = np.roll(truth, 1, axis=0)
    prediction[25:28, 25:28, 25:28] = True
    pooled = hd95(prediction, truth, (1.0, 1.0, 1.0))
    directed = hd95(prediction, truth, (1.0, 1.0, 1.0), convention="max_directed")
    assert pooled == pytest.approx(reference_hd95(prediction, truth, (1, 1, 1), "pooled"))
    assert directed == pytest.approx(reference_hd95(prediction, truth, (1, 1, 1), "max_directed"))
    assert directed > pooled + 1.0
    result = case_metrics(prediction.astype(np.uint8) * 2, truth.astype(np.uint8) * 2, (1, 1, 1))
    assert result["hd95_wt"] == pooled
    directed_result = case_metrics(
        prediction.astype(np.uint8) * 2,
        truth.astype(np.uint8) * 2,
        (1, 1, 1),
        hd95_convention="max_directed",
    )
    assert directed_result["hd95_wt"] == directed


def test_hd95_rejects_unknown_convention():
    mask = cube((8, 8, 8), (2, 2, 2), 3).astype(bool)
    with pytest.raises(ValueError, match="convention"):
        hd95(mask, mask, (1, 1, 1), convention="mean")


def test_pooled_hd95_agrees_with_medpy():
    medpy = reference_package("medpy.metric.binary")
    rng = np.random.default_rng(11)
    spacing = (0.9, 1.3, 2.0)
    for _ in range(6):
        truth = ndimage.gaussian_filter(rng.standard_normal((24, 26, 20)), sigma=2.5) > 0.1
        prediction = ndimage.gaussian_filter(rng.standard_normal((24, 26, 20)), sigma=2.5) > 0.1
        prediction = with_false_positive_blobs(rng, prediction)
        expected = medpy.hd95(prediction, truth, voxelspacing=spacing)
        assert hd95(prediction, truth, spacing) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("empty_side", ["prediction", "truth"])
def test_region_empty_on_one_side_only(empty_side):
    core = cube((16, 16, 16), (4, 4, 4), 5, NECROSIS)
    with_et = core.copy()
    with_et[6:8, 6:8, 6:8] = ENHANCING
    prediction, truth = (core, with_et) if empty_side == "prediction" else (with_et, core)
    result = case_metrics(prediction, truth, (1.0, 1.0, 1.0))
    assert result["dice_et"] == 0.0
    assert result["hd95_et"] == HD95_EMPTY_MM
    assert result["dice_wt"] == result["dice_tc"] == 1.0
    assert result["hd95_wt"] == 0.0


def test_everything_empty():
    empty = np.zeros((8, 8, 8), dtype=np.uint8)
    result = case_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert all(
        result[f"dice_{r}"] == 1.0 and result[f"hd95_{r}"] == 0.0 for r in ("wt", "tc", "et")
    )


def test_rejects_bad_inputs():
    volume = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        case_metrics(volume, np.zeros((4, 4, 5), dtype=np.uint8), (1, 1, 1))
    with pytest.raises(ValueError, match="classes"):
        case_metrics(volume + 5, volume, (1, 1, 1))


def test_region_dice_equals_case_metrics_over_batches():
    rng = np.random.default_rng(0)
    predictions = np.stack([random_blobs(rng) for _ in range(4)])
    truths = np.stack([random_blobs(rng) for _ in range(4)])
    truths[1][truths[1] == ENHANCING] = NECROSIS  # one case without ET: BraTS rule applies
    predictions[2][predictions[2] == ENHANCING] = NECROSIS
    truths[2][truths[2] == ENHANCING] = NECROSIS  # ... and one with ET empty on both sides

    metric = RegionDice()
    metric.update(torch.from_numpy(predictions[:2]).long(), torch.from_numpy(truths[:2]).long())
    metric.update(torch.from_numpy(predictions[2:]), torch.from_numpy(truths[2:]))
    result = metric.compute()

    rows = [case_metrics(p, t, (1.0, 1.0, 1.0)) for p, t in zip(predictions, truths, strict=True)]
    for region in ("wt", "tc", "et"):
        expected = np.mean([row[f"dice_{region}"] for row in rows])
        assert result[region].item() == pytest.approx(expected, abs=1e-6)
    assert (predictions[1] == ENHANCING).any() and rows[1]["dice_et"] == 0.0
    assert rows[2]["dice_et"] == 1.0
    assert result["mean"].item() == pytest.approx(
        np.mean([result[r].item() for r in ("wt", "tc", "et")])
    )


def test_summarize_is_deterministic_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    rows = [
        {"case_id": f"c{i}", "dice_wt": float(d), "hd95_wt": float(h)}
        for i, (d, h) in enumerate(
            zip(rng.uniform(0.6, 1.0, 30), rng.gamma(2.0, 3.0, 30), strict=True)
        )
    ]
    summary = summarize(rows)
    assert set(summary) == {"dice_wt", "hd95_wt"}
    assert summary == summarize(rows)
    assert summary != summarize(rows, seed=1)
    values = np.array([row["dice_wt"] for row in rows])
    dice = summary["dice_wt"]
    assert dice["mean"] == pytest.approx(values.mean())
    assert dice["median"] == pytest.approx(np.median(values))
    assert dice["std"] == pytest.approx(values.std(ddof=1))
    for stats in summary.values():
        assert stats["ci_low"] < stats["mean"] < stats["ci_high"]
    # The interval of the mean is about 4 standard errors wide.
    assert dice["ci_high"] - dice["ci_low"] == pytest.approx(
        2 * 1.96 * values.std(ddof=1) / np.sqrt(len(values)), rel=0.25
    )


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI deprecates its own argument
def test_max_directed_hd95_and_dice_agree_with_monai():
    # MONAI's edges are the same (erosion by the 6-neighbourhood); its distances are float32.
    monai_metrics = reference_package("monai.metrics")
    rng = np.random.default_rng(7)
    spacing = (1.0, 1.5, 0.8)
    predictions = np.stack([random_blobs(rng) for _ in range(3)])
    for prediction in predictions:  # false-positive ET specks, where the conventions differ
        specks = with_false_positive_blobs(rng, np.zeros(prediction.shape, dtype=bool))
        prediction[specks] = ENHANCING
    truths = np.stack([random_blobs(rng) for _ in range(3)])

    def one_hot_regions(classes):  # (B, 3, X, Y, Z) in WT, TC, ET order
        return torch.from_numpy(
            np.stack([classes > 0, np.isin(classes, (1, 3)), classes == 3], axis=1)
        ).float()

    expected_hd = monai_metrics.compute_hausdorff_distance(
        one_hot_regions(predictions),
        one_hot_regions(truths),
        include_background=True,
        percentile=95,
        spacing=spacing,
    ).numpy()
    dice_metric = monai_metrics.DiceMetric(include_background=True, reduction="none")
    expected_dice = dice_metric(one_hot_regions(predictions), one_hot_regions(truths)).numpy()

    compared = differing = 0
    for b in range(len(predictions)):
        result = case_metrics(predictions[b], truths[b], spacing, hd95_convention="max_directed")
        for r, region in enumerate(("wt", "tc", "et")):
            if not np.isfinite(expected_hd[b, r]):
                continue  # MONAI gives NaN/inf for an empty region, where BraTS fixes values
            assert result[f"hd95_{region}"] == pytest.approx(expected_hd[b, r], abs=1e-4)
            pooled = case_metrics(predictions[b], truths[b], spacing)[f"hd95_{region}"]
            differing += abs(pooled - expected_hd[b, r]) > 0.1
            assert result[f"dice_{region}"] == pytest.approx(expected_dice[b, r], abs=1e-5)
            compared += 1
    assert compared >= 6
    assert differing >= 3  # the pooled default would not pass this comparison


def test_region_dice_states_merge_like_ddp_ranks():
    rng = np.random.default_rng(5)
    predictions = torch.from_numpy(np.stack([random_blobs(rng) for _ in range(4)]))
    truths = torch.from_numpy(np.stack([random_blobs(rng) for _ in range(4)]))
    whole, rank0, rank1 = RegionDice(), RegionDice(), RegionDice()
    whole.update(predictions, truths)
    rank0.update(predictions[:3], truths[:3])  # uneven shards, as with a last partial batch
    rank1.update(predictions[3:], truths[3:])
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), whole.compute()
    for key in ("wt", "tc", "et", "mean"):
        assert merged[key].item() == pytest.approx(expected[key].item(), abs=1e-6)


def test_region_volumes_in_ml_from_the_voxel_size():
    classes = np.zeros((10, 10, 10), dtype=np.uint8)
    classes[0:4, 0:5, 0:2] = EDEMA  # 40 voxels
    classes[5:7, 0:5, 0:1] = NECROSIS  # 10
    classes[8, 0:3, 0] = ENHANCING  # 3
    spacing = (0.5, 2.0, 3.0)  # 3 mm^3 per voxel
    volumes = region_volumes_ml(classes, spacing)
    assert volumes == pytest.approx(
        {"volume_ml_wt": 53 * 3 / 1000, "volume_ml_tc": 13 * 3 / 1000, "volume_ml_et": 9 / 1000}
    )
    with_cavity = classes.copy()
    with_cavity[9, 9, 9] = 4
    volumes_2024 = region_volumes_ml(with_cavity, spacing, SCHEMES["brats2024"].regions)
    assert volumes_2024["volume_ml_rc"] == pytest.approx(3 / 1000)
    assert volumes_2024["volume_ml_wt"] == volumes["volume_ml_wt"]  # the cavity is no tumour
    with pytest.raises(ValueError, match="spacing"):
        region_volumes_ml(classes, (1.0, 1.0))


def test_volume_comparison_and_a_missing_prediction():
    truth = cube((12, 12, 12), (2, 2, 2), 4, EDEMA)  # 64 voxels
    prediction = cube((12, 12, 12), (2, 2, 2), 5, EDEMA)  # 125
    spacing = (1.0, 1.0, 2.0)
    result = volume_comparison(prediction, truth, spacing)
    assert tuple(result) == volume_keys()
    assert result["pred_volume_ml_wt"] == pytest.approx(0.25)
    assert result["ref_volume_ml_wt"] == pytest.approx(0.128)
    assert result["volume_error_ml_wt"] == pytest.approx(0.122)
    assert result["volume_error_ml_et"] == 0.0
    missing = volume_comparison(None, truth, spacing)
    assert missing["pred_volume_ml_wt"] == 0.0
    assert missing["volume_error_ml_wt"] == pytest.approx(-0.128)


def test_missing_prediction_metrics_are_the_worst_case_in_every_region():
    regions = SCHEMES["brats2024"].regions
    worst = missing_prediction_metrics(regions)
    assert tuple(worst) == metric_keys(regions)
    for region in regions:
        assert worst[f"dice_{region}"] == 0.0 and worst[f"sens_{region}"] == 0.0
        assert worst[f"hd95_{region}"] == HD95_EMPTY_MM and worst[f"spec_{region}"] == 1.0


def test_summarize_leaves_out_undefined_values():
    rows = [{"dice": 0.5, "hd95": 2.0}, {"dice": math.nan, "hd95": 4.0}, {"dice": 0.7, "hd95": 9.0}]
    summary = summarize(rows)
    assert summary["dice"]["mean"] == pytest.approx(0.6)
    assert summary["dice"]["median"] == pytest.approx(0.6)
    assert summary["dice"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert 0.5 <= summary["dice"]["ci_low"] <= summary["dice"]["ci_high"] <= 0.7
    assert summary["hd95"]["mean"] == pytest.approx(5.0)
    undefined = summarize([{"dice": math.nan}, {"dice": math.nan}])["dice"]
    assert all(math.isnan(value) for value in undefined.values())
