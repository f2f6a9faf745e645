import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascade.evaluate import main
from cascade.metrics import HD95_EMPTY_MM, METRIC_KEYS, hd95, volume_keys

SHAPE = (12, 12, 10)
SPACING = (1.0, 1.0, 2.0)


def save(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 1.0])), path)


def brats2020_label() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[3:9, 3:9, 2:8] = 2
    label[4:8, 4:8, 3:7] = 1
    label[5:7, 5:7, 4:6] = 4
    return label


def write_case(root: Path, case_id: str, label: np.ndarray, naming: str = "2020") -> None:
    folder = root / case_id
    folder.mkdir(parents=True)
    suffixes = ("t1", "t1ce", "t2", "flair") if naming == "2020" else ("t1n", "t1c", "t2w", "t2f")
    separator = "_" if naming == "2020" else "-"
    for suffix in suffixes:
        save(folder / f"{case_id}{separator}{suffix}.nii.gz", np.ones(SHAPE, dtype=np.int16))
    save(folder / f"{case_id}{separator}seg.nii.gz", label)


@pytest.fixture
def dataset(tmp_path):
    """Three labelled cases: A predicted exactly, B with its ET missed, C not predicted."""
    labels, predictions = tmp_path / "labels", tmp_path / "predictions"
    predictions.mkdir()
    label = brats2020_label()
    for case_id in ("Case_A", "Case_B", "Case_C"):
        write_case(labels, case_id, label)
    save(predictions / "Case_A.nii.gz", label)
    no_enhancing = label.copy()
    no_enhancing[no_enhancing == 4] = 1
    save(predictions / "Case_B.nii.gz", no_enhancing)
    return labels, predictions


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_missing_prediction_scored_as_the_worst_case(dataset, capsys):
    labels, predictions = dataset
    assert main(["--predictions", str(predictions), "--labels", str(labels)]) == 1

    captured = capsys.readouterr()
    missing = [line for line in captured.err.splitlines() if "Case_C" in line]
    assert missing == [
        f"{predictions / 'Case_C.nii.gz'}: prediction missing for case Case_C, "
        "scored as the worst case"
    ]
    assert "WT" in captured.out and "ET" in captured.out

    out = predictions / "evaluation.csv"
    rows = read_rows(out)
    assert list(rows[0]) == ["case_id", *METRIC_KEYS, *volume_keys()]
    assert [row["case_id"] for row in rows] == ["Case_A", "Case_B", "Case_C"]
    a, b, c = ({k: float(v) for k, v in row.items() if k != "case_id"} for row in rows)
    assert all(a[f"dice_{r}"] == 1.0 and a[f"hd95_{r}"] == 0.0 for r in ("wt", "tc", "et"))
    assert b["dice_wt"] == b["dice_tc"] == 1.0
    assert b["dice_et"] == 0.0 and b["hd95_et"] == HD95_EMPTY_MM
    assert b["sens_et"] == 0.0 and b["spec_et"] == 1.0
    for region in ("wt", "tc", "et"):
        assert c[f"dice_{region}"] == 0.0 and c[f"hd95_{region}"] == HD95_EMPTY_MM
        assert c[f"sens_{region}"] == 0.0 and c[f"spec_{region}"] == 1.0
        assert c[f"pred_volume_ml_{region}"] == 0.0
        assert c[f"volume_error_ml_{region}"] == -c[f"ref_volume_ml_{region}"] < 0

    summary = json.loads((predictions / "evaluation_summary.json").read_text())
    assert summary["cases"] == 3 and summary["missing"] == ["Case_C"]
    assert summary["protocol"] == "brats2020" and summary["hd95_convention"] == "pooled"
    assert summary["metrics"]["dice_et"]["mean"] == pytest.approx(1 / 3)
    assert summary["metrics"]["dice_wt"]["mean"] == pytest.approx(2 / 3)
    assert summary["metrics"]["hd95_wt"]["mean"] == pytest.approx(HD95_EMPTY_MM / 3)
    summary_rows = read_rows(predictions / "evaluation_summary.csv")
    assert [row["metric"] for row in summary_rows] == [*METRIC_KEYS, *volume_keys()]
    assert list(summary_rows[0]) == ["metric", "mean", "median", "std", "ci_low", "ci_high"]
    assert not list(predictions.glob(".*"))  # atomic writes leave no temporary files behind


def test_volumes_per_case_and_in_the_summary(dataset):
    labels, predictions = dataset
    label = brats2020_label()
    grown = label.copy()
    grown[2:10, 3:9, 2:8][grown[2:10, 3:9, 2:8] == 0] = 2  # 2 x 6 x 6 more edema voxels
    save(predictions / "Case_C.nii.gz", grown)
    assert main(["--predictions", str(predictions), "--labels", str(labels)]) == 0
    c = read_rows(predictions / "evaluation.csv")[2]
    voxel_ml = 2.0 / 1000  # 1 x 1 x 2 mm
    assert float(c["ref_volume_ml_wt"]) == pytest.approx(6 * 6 * 6 * voxel_ml)
    assert float(c["ref_volume_ml_tc"]) == pytest.approx(4 * 4 * 4 * voxel_ml)
    assert float(c["ref_volume_ml_et"]) == pytest.approx(2 * 2 * 2 * voxel_ml)
    assert float(c["volume_error_ml_wt"]) == pytest.approx(72 * voxel_ml)
    assert float(c["volume_error_ml_tc"]) == 0.0
    summary = json.loads((predictions / "evaluation_summary.json").read_text())["metrics"]
    assert summary["volume_error_ml_wt"]["mean"] == pytest.approx(72 * voxel_ml / 3)
    assert summary["ref_volume_ml_et"]["median"] == pytest.approx(8 * voxel_ml)


def test_hd95_convention_flag(tmp_path):
    labels, predictions = tmp_path / "labels", tmp_path / "predictions"
    predictions.mkdir()
    label = np.zeros((16, 16, 16), dtype=np.uint8)
    label[2:8, 2:8, 2:8] = 2
    prediction = np.roll(label, 1, axis=0)
    prediction[12:15, 12:15, 12:15] = 2  # a distant false positive: the conventions differ
    write_case(labels, "Case_F", label)
    save(predictions / "Case_F.nii.gz", prediction)
    values = {}
    for convention in ("pooled", "max_directed"):
        out = tmp_path / f"{convention}.csv"
        argv = ["--predictions", str(predictions), "--labels", str(labels), "--out", str(out)]
        assert main([*argv, "--hd95", convention]) == 0
        (row,) = read_rows(out)
        values[convention] = float(row["hd95_wt"])
        expected = hd95(prediction > 0, label > 0, SPACING, convention)
        assert values[convention] == pytest.approx(expected)
        summary = json.loads((tmp_path / f"{convention}_summary.json").read_text())
        assert summary["hd95_convention"] == convention
    assert values["max_directed"] > values["pooled"] + 1.0
    with pytest.raises(SystemExit):
        main(["--predictions", str(predictions), "--labels", str(labels), "--hd95", "mean"])


def test_all_present_exits_zero_and_honours_out(dataset, tmp_path, capsys):
    labels, predictions = dataset
    save(predictions / "Case_C.nii.gz", brats2020_label())
    out = tmp_path / "results" / "scores.csv"
    assert (
        main(["--predictions", str(predictions), "--labels", str(labels), "--out", str(out)]) == 0
    )
    assert len(read_rows(out)) == 3
    assert (out.parent / "scores_summary.csv").exists()
    assert (out.parent / "scores_summary.json").exists()
    assert capsys.readouterr().err.count("\n") <= 1  # at most the finished progress bar


def test_shape_mismatch_reported_by_name(dataset, capsys):
    labels, predictions = dataset
    save(predictions / "Case_C.nii.gz", np.zeros((12, 12, 9), dtype=np.uint8))
    assert main(["--predictions", str(predictions), "--labels", str(labels)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "Case_C.nii.gz" in line]
    assert len(errors) == 1 and "shape" in errors[0]
    assert len(read_rows(predictions / "evaluation.csv")) == 2  # a wrong file is not scored


def test_brats2023_naming_and_convention(tmp_path):
    labels, predictions = tmp_path / "labels", tmp_path / "predictions"
    predictions.mkdir()
    label = brats2020_label()
    label[label == 4] = 3  # BraTS 2023 labels enhancing tumor 3
    write_case(labels, "BraTS-GLI-00001-000", label, naming="2023")
    save(predictions / "BraTS-GLI-00001-000-seg.nii.gz", label)
    assert main(["--predictions", str(predictions), "--labels", str(labels)]) == 0
    (row,) = read_rows(predictions / "evaluation.csv")
    assert float(row["dice_et"]) == 1.0 and float(row["hd95_et"]) == 0.0


def test_hd95_uses_the_label_spacing(tmp_path):
    labels, predictions = tmp_path / "labels", tmp_path / "predictions"
    predictions.mkdir()
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:8, 4:8, 3] = 2  # a one-slice plate: all surface
    write_case(labels, "Case_Z", label)
    save(predictions / "Case_Z.nii.gz", np.roll(label, 2, axis=2))  # 2 slices of 2 mm
    assert main(["--predictions", str(predictions), "--labels", str(labels)]) == 0
    (row,) = read_rows(predictions / "evaluation.csv")
    assert float(row["hd95_wt"]) == pytest.approx(4.0)


def test_lesionwise_without_panoptica_names_the_extra(dataset, monkeypatch, capsys):
    labels, predictions = dataset
    monkeypatch.setitem(sys.modules, "panoptica", None)  # as if it were not installed
    argv = ["--predictions", str(predictions), "--labels", str(labels), "--protocol", "lesionwise"]
    assert main(argv) == 1
    assert "pip install 'cascade[eval]'" in capsys.readouterr().err
    assert not (predictions / "evaluation.csv").exists()
