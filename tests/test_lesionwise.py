import csv
import importlib
import json
import math
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from cascade.data.labels import SCHEMES
from cascade.evaluate import main, read_classes
from cascade.metrics import case_metrics, hd95, volume_keys


def reference_package(name: str):
    """A package of the test extra: skipped where it is not installed, except in CI."""
    if os.environ.get("CI"):
        return importlib.import_module(name)
    return pytest.importorskip(name)


reference_package("panoptica")

from cascade.lesionwise import (  # noqa: E402 (after the check that panoptica is there)
    OFFICIAL_HD95_MAX,
    brats_evaluator,
    lesion_groups,
    lesionwise_keys,
    lesionwise_metrics,
    missing_prediction_lesionwise,
    statistic_rows,
)

NECROSIS, EDEMA, ENHANCING, CAVITY = 1, 2, 3, 4
SHAPE = (32, 32, 32)
REAL_CASE = Path(__file__).resolve().parents[2] / "shared" / "data"


def box(volume: np.ndarray, corner, size, value) -> np.ndarray:
    x, y, z = corner
    volume[x : x + size, y : y + size, z : z + size] = value
    return volume


def surface_fractions_within(a: np.ndarray, b: np.ndarray, spacing, tolerance) -> float:
    """Mean of the two directed fractions of surface voxels within `tolerance` of the other
    surface (brute force): panoptica's NSD."""

    def surface_points(mask):
        return np.argwhere(mask & ~ndimage.binary_erosion(mask)) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    distances = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    return ((distances.min(1) <= tolerance).mean() + (distances.min(0) <= tolerance).mean()) / 2


@pytest.fixture(scope="module")
def glioma_groups():
    return lesion_groups(SCHEMES["brats2020"])


@pytest.fixture(scope="module")
def evaluator(glioma_groups):
    return brats_evaluator(glioma_groups)


def test_groups_follow_the_scheme():
    assert lesion_groups(SCHEMES["brats2020"]) == {
        "wt": (1, 2, 3),
        "tc": (1, 3),
        "et": (3,),
        "netc": (1,),
        "snfh": (2,),
    }
    assert lesion_groups(SCHEMES["msd"]) == lesion_groups(SCHEMES["brats2023"])
    groups_2024 = lesion_groups(SCHEMES["brats2024"])
    assert list(groups_2024) == ["wt", "tc", "et", "netc", "snfh", "rc"]
    assert groups_2024["rc"] == (CAVITY,)
    keys = lesionwise_keys(groups_2024)
    for name in ("global_dsc_rc", "global_nsd_rc", "global_hd95_rc", "lesionwise_dsc_mean_rc"):
        assert name in keys
    for name in ("lesionwise_nsd_mean_et", "lesionwise_hd95_mean_et", "lesionwise_hd95_std_et"):
        assert name in keys
    for name in ("all_instance_tp_wt", "all_instance_fp_wt", "all_instance_fn_wt"):
        assert name in keys


def test_matched_missed_and_false_positive_lesions(glioma_groups, evaluator):
    truth = np.zeros(SHAPE, dtype=np.uint8)
    box(truth, (4, 4, 4), 6, ENHANCING)  # lesion A, 216 voxels
    box(truth, (20, 4, 4), 4, ENHANCING)  # lesion D, 64 voxels
    box(truth, (20, 20, 20), 4, ENHANCING)  # lesion B, 64 voxels: missed
    prediction = np.zeros(SHAPE, dtype=np.uint8)
    box(prediction, (5, 4, 4), 6, ENHANCING)  # A shifted by one voxel: Dice 5/6
    box(prediction, (23, 4, 4), 4, ENHANCING)  # D shifted by three: Dice 1/4, still a match
    # A false positive of two 2^3 cubes touching at a corner: one 26-connected lesion.
    box(prediction, (4, 22, 22), 2, ENHANCING)
    box(prediction, (6, 24, 24), 2, ENHANCING)
    spacing = (1.0, 1.0, 1.0)
    row = lesionwise_metrics(prediction, truth, spacing, glioma_groups, evaluator)
    assert tuple(row) == lesionwise_keys(glioma_groups)

    counts = (row["all_instance_tp_et"], row["all_instance_fp_et"], row["all_instance_fn_et"])
    assert counts == (2, 1, 1)
    assert row["all_instance_prec_et"] == row["all_instance_rec_et"] == pytest.approx(2 / 3)
    assert row["all_instance_f1_et"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))

    # Lesion-wise means run over the matched pairs only.
    def only(mask, xs, ys):
        part = np.zeros_like(mask)
        part[xs, ys] = mask[xs, ys]
        return part

    pairs = [
        (
            only(prediction == ENHANCING, slice(0, 16), slice(0, 16)),
            only(truth == 3, slice(0, 16), slice(0, 16)),
        ),
        (
            only(prediction == ENHANCING, slice(16, 32), slice(0, 16)),
            only(truth == 3, slice(16, 32), slice(0, 16)),
        ),
    ]
    dice = [2 * 180 / (216 + 216), 2 * 16 / (64 + 64)]
    assert row["lesionwise_dsc_mean_et"] == pytest.approx(np.mean(dice))
    assert row["lesionwise_dsc_std_et"] == pytest.approx(np.std(dice))
    distances = [hd95(p, t, spacing) for p, t in pairs]
    assert row["lesionwise_hd95_mean_et"] == pytest.approx(np.mean(distances))
    surface_dice = [surface_fractions_within(p, t, spacing, tolerance=1.0) for p, t in pairs]
    assert row["lesionwise_nsd_mean_et"] == pytest.approx(np.mean(surface_dice))
    # Global metrics see the whole group; the global NSD's tolerance is 0.5.
    whole_truth, whole_prediction = truth == ENHANCING, prediction == ENHANCING
    assert row["global_dsc_et"] == pytest.approx(2 * (180 + 16) / (216 + 64 + 64 + 216 + 64 + 16))
    assert row["global_hd95_et"] == pytest.approx(hd95(whole_prediction, whole_truth, spacing))
    assert row["global_nsd_et"] == pytest.approx(
        surface_fractions_within(whole_prediction, whole_truth, spacing, tolerance=0.5)
    )
    # ET is the whole tumour here: WT and TC see the same lesions.
    assert row["global_dsc_wt"] == row["global_dsc_tc"] == row["global_dsc_et"]
    assert row["all_instance_tp_wt"] == 2 and row["all_instance_fp_tc"] == 1


def test_lesion_metrics_use_the_spacing_global_ones_voxels(glioma_groups, evaluator):
    truth = box(np.zeros(SHAPE, dtype=np.uint8), (4, 4, 4), 8, EDEMA)
    prediction = box(np.zeros(SHAPE, dtype=np.uint8), (6, 4, 4), 8, EDEMA)
    spacing = (2.0, 1.0, 1.0)
    row = lesionwise_metrics(prediction, truth, spacing, glioma_groups, evaluator)
    assert row["lesionwise_hd95_mean_snfh"] == pytest.approx(
        hd95(prediction > 0, truth > 0, spacing)
    )
    assert row["global_hd95_snfh"] == pytest.approx(hd95(prediction > 0, truth > 0, (1, 1, 1)))
    assert row["lesionwise_hd95_mean_snfh"] > row["global_hd95_snfh"] + 1.0


def test_empty_regions_follow_the_official_edge_cases(glioma_groups, evaluator):
    truth = box(np.zeros(SHAPE, dtype=np.uint8), (4, 4, 4), 6, EDEMA)
    box(truth, (6, 6, 6), 2, NECROSIS)
    prediction = box(np.zeros(SHAPE, dtype=np.uint8), (4, 4, 4), 6, EDEMA)
    row = lesionwise_metrics(prediction, truth, (1.0, 1.0, 1.0), glioma_groups, evaluator)
    # ET is in neither: undefined, left out of the means.
    assert math.isnan(row["global_dsc_et"]) and math.isnan(row["lesionwise_dsc_mean_et"])
    assert math.isnan(row["global_hd95_et"])
    assert row["all_instance_tp_et"] == row["all_instance_fp_et"] == row["all_instance_fn_et"] == 0
    # NETC is missed: 0, the official 373 for the global HD95, and an infinite lesion-wise HD95.
    assert row["global_dsc_netc"] == 0.0 and row["global_nsd_netc"] == 0.0
    assert row["global_hd95_netc"] == OFFICIAL_HD95_MAX
    assert row["lesionwise_dsc_mean_netc"] == 0.0
    assert math.isinf(row["lesionwise_hd95_mean_netc"])
    assert row["all_instance_fn_netc"] == 1 and row["all_instance_rec_netc"] == 0.0


def test_nothing_on_either_side_is_undefined_everywhere(glioma_groups, evaluator):
    empty = np.zeros(SHAPE, dtype=np.uint8)
    row = lesionwise_metrics(empty, empty, (1.0, 1.0, 1.0), glioma_groups, evaluator)
    for group in glioma_groups:
        assert math.isnan(row[f"global_dsc_{group}"]) and math.isnan(row[f"global_hd95_{group}"])
        assert math.isnan(row[f"lesionwise_nsd_mean_{group}"])
        assert row[f"all_instance_tp_{group}"] == row[f"all_instance_fp_{group}"] == 0


def test_missing_prediction_as_the_official_parser_fills_it(glioma_groups):
    row = missing_prediction_lesionwise(glioma_groups)
    assert tuple(row) == lesionwise_keys(glioma_groups)
    assert row["global_hd95_wt"] == row["lesionwise_hd95_mean_et"] == 373.0
    assert row["lesionwise_hd95_std_et"] == 0.0
    assert row["global_dsc_tc"] == row["lesionwise_nsd_mean_snfh"] == 0.0
    assert row["all_instance_tp_wt"] == row["all_instance_fn_wt"] == 0.0


def test_statistics_match_pandas_like_the_official_parser():
    pandas = reference_package("pandas")
    rows = [
        {"subject_id": "a", "global_dsc_et": 0.8, "lesionwise_hd95_mean_et": 2.0},
        {"subject_id": "b", "global_dsc_et": math.nan, "lesionwise_hd95_mean_et": 4.0},
        {"subject_id": "c", "global_dsc_et": 0.5, "lesionwise_hd95_mean_et": 12.0},
        {"subject_id": "d", "global_dsc_et": 0.6, "lesionwise_hd95_mean_et": 3.0},
    ]
    summary, table = statistic_rows(rows)
    frame = pandas.DataFrame(rows)
    by_name = {row["subject_id"]: row for row in table}
    assert list(by_name) == ["mean", "std", "median", "ci_low", "ci_high"]
    for column in ("global_dsc_et", "lesionwise_hd95_mean_et"):
        assert by_name["mean"][column] == pytest.approx(frame[column].mean())
        assert by_name["std"][column] == pytest.approx(frame[column].std())
        assert by_name["median"][column] == pytest.approx(frame[column].median())
        assert by_name["ci_low"][column] <= by_name["mean"][column] <= by_name["ci_high"][column]
        assert summary[column]["mean"] == by_name["mean"][column]


def save(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def write_2024_case(root: Path, case_id: str, label: np.ndarray) -> None:
    folder = root / case_id
    folder.mkdir(parents=True)
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        save(folder / f"{case_id}-{suffix}.nii.gz", np.ones(label.shape, dtype=np.int16))
    save(folder / f"{case_id}-seg.nii.gz", label)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_lesionwise_with_a_cavity_and_a_missing_prediction(tmp_path, capsys):
    labels, predictions = tmp_path / "labels", tmp_path / "predictions"
    predictions.mkdir()
    label = np.zeros((24, 24, 24), dtype=np.uint8)
    box(label, (3, 3, 3), 8, EDEMA)
    box(label, (5, 5, 5), 4, NECROSIS)
    box(label, (6, 6, 6), 2, ENHANCING)
    box(label, (15, 15, 15), 5, CAVITY)
    for case_id in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        write_2024_case(labels, case_id, label)
    save(predictions / "BraTS-GLI-00001-000-seg.nii.gz", label)

    argv = ["--predictions", str(predictions), "--labels", str(labels), "--protocol", "lesionwise"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    missing = [line for line in captured.err.splitlines() if "00002" in line]
    assert len(missing) == 1 and missing[0].endswith(
        "prediction missing for case BraTS-GLI-00002-000, scored as the worst case"
    )
    assert "RC" in captured.out and "panoptica" in captured.out

    groups = lesion_groups(SCHEMES["brats2024"])
    rows = read_rows(predictions / "evaluation.csv")
    assert list(rows[0]) == ["subject_id", *lesionwise_keys(groups), *volume_keys(groups)]
    perfect, absent = ({k: float(v) for k, v in row.items() if k != "subject_id"} for row in rows)
    for group in groups:
        assert perfect[f"global_dsc_{group}"] == perfect[f"lesionwise_dsc_mean_{group}"] == 1.0
        assert perfect[f"global_hd95_{group}"] == 0.0 and perfect[f"all_instance_tp_{group}"] == 1
        assert absent[f"global_hd95_{group}"] == absent[f"lesionwise_hd95_mean_{group}"] == 373.0
        assert absent[f"global_dsc_{group}"] == absent[f"all_instance_tp_{group}"] == 0.0
    assert perfect["ref_volume_ml_rc"] == pytest.approx(0.125)
    assert absent["pred_volume_ml_rc"] == 0.0

    statistics = read_rows(predictions / "evaluation_summary.csv")
    assert [row["subject_id"] for row in statistics] == [
        "mean",
        "std",
        "median",
        "ci_low",
        "ci_high",
    ]
    assert float(statistics[0]["global_dsc_rc"]) == pytest.approx(0.5)
    assert float(statistics[0]["global_hd95_wt"]) == pytest.approx(373.0 / 2)
    report = json.loads((predictions / "evaluation_summary.json").read_text())
    assert report["protocol"] == "lesionwise" and report["missing"] == ["BraTS-GLI-00002-000"]

    with pytest.raises(SystemExit):
        main([*argv, "--hd95", "max_directed"])


def test_real_case_agrees_with_the_whole_volume_metrics(glioma_groups, evaluator):
    label_path = REAL_CASE / "real" / "TCGA-FG-6692" / "TCGA-FG-6692_seg.nii.gz"
    prediction_path = REAL_CASE / "reference-segmentations" / "TCGA-FG-6692" / "isen-20.nii.gz"
    if not (label_path.exists() and prediction_path.exists()):
        pytest.skip("the real BraTS case is not beside the repository")
    scheme = SCHEMES["brats2020"]
    truth, spacing = read_classes(label_path, scheme)
    prediction, _ = read_classes(prediction_path, scheme)
    start = time.perf_counter()
    row = lesionwise_metrics(prediction, truth, spacing, glioma_groups, evaluator)
    seconds = time.perf_counter() - start
    assert seconds < 10

    # At 1 mm, panoptica's global Dice and HD95 are the whole-volume metrics (pooled HD95).
    whole = case_metrics(prediction, truth, spacing)
    for region in ("wt", "tc", "et"):
        assert row[f"global_dsc_{region}"] == pytest.approx(whole[f"dice_{region}"], abs=1e-12)
        assert row[f"global_hd95_{region}"] == pytest.approx(whole[f"hd95_{region}"], abs=1e-9)
    # One ET lesion found, a small one missed; WT split into several components on each side.
    assert (row["all_instance_tp_et"], row["all_instance_fp_et"], row["all_instance_fn_et"]) == (
        1,
        0,
        1,
    )
    assert row["lesionwise_dsc_mean_wt"] < row["global_dsc_wt"]
