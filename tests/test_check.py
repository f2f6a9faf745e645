from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np

from cascade.check import main


def test_good_dataset_prints_one_row_per_case_and_exits_0(write_case, tmp_path, capsys):
    labelled = write_case(root=tmp_path / "data", case_id="BraTS20_Training_001")
    values, counts = np.unique(nib.load(labelled["label"]).get_fdata(), return_counts=True)
    write_case(root=tmp_path / "data", case_id="BraTS20_Training_002", labelled=False)

    code = main([str(tmp_path / "data")])

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    header, first, second = lines[:3]
    assert header.split()[:2] == ["case", "shape"]
    assert first.split()[:4] == ["BraTS20_Training_001", "24x24x16", "1x1x1", "yes"]
    assert first.split()[4:] == [
        f"{value:g}:{count}" for value, count in zip(values, counts, strict=True)
    ]
    assert second.split()[:5] == ["BraTS20_Training_002", "24x24x16", "1x1x1", "no", "-"]
    # Columns line up: each row starts its shape where the header does.
    assert first.index("24x24x16") == header.index("shape") == second.index("24x24x16")
    assert not any(line.startswith("ERROR") for line in lines)


def test_mixed_dataset_reports_every_bad_case_and_exits_1(write_case, tmp_path, capsys):
    root = tmp_path / "data"
    write_case(root=root, case_id="Case_001")
    missing = write_case(root=root, case_id="Case_002")
    missing["t1ce"].unlink()
    empty = write_case(root=root, case_id="Case_003")
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 16), np.int16), np.eye(4)), empty["t2"])
    write_case(root=root, case_id="Case_004")
    truncated = write_case(root=root, case_id="Case_005")
    truncated["flair"].write_bytes(truncated["flair"].read_bytes()[:200])

    code = main([str(root)])

    output = capsys.readouterr().out
    errors = [line for line in output.splitlines() if line.startswith("ERROR ")]
    assert code == 1
    assert "Traceback" not in output
    assert len(errors) == 3
    assert f"ERROR {missing['t1ce']}: missing t1ce image" in errors[0]
    assert errors[1].startswith(f"ERROR {empty['t2']}: ")
    assert errors[2].startswith(f"ERROR {truncated['flair']}: ")
    rows = [line.split()[0] for line in output.splitlines()[1:] if line.startswith("Case_")]
    assert rows == ["Case_001", "Case_004"]


def test_a_flat_image_is_a_problem_before_any_preprocessing(write_case, tmp_path, capsys):
    # a brain mask saved as FLAIR: nothing to z-score by; checking says so, as training would
    root = tmp_path / "data"
    write_case(root=root, case_id="Case_001")
    flat = np.zeros((24, 24, 16), np.int16)
    flat[4:20, 4:20, 3:13] = 1
    mask = write_case(root=root, case_id="Case_002", arrays={"flair": flat})

    code = main([str(root)])

    output = capsys.readouterr().out
    errors = [line for line in output.splitlines() if line.startswith("ERROR ")]
    assert code == 1 and len(errors) == 1
    assert errors[0].startswith(f"ERROR {mask['flair']}: flair image has no spread")


def test_several_paths_and_no_cases(write_case, tmp_path, capsys):
    first = write_case(root=tmp_path / "a")["t1"].parent
    second = write_case(root=tmp_path / "b", naming="brats2023")["t1"].parent
    assert main([str(first), str(second)]) == 0
    assert "BraTS-GLI-00001-000" in capsys.readouterr().out

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no BraTS cases found" in capsys.readouterr().out


def test_module_entry_point(write_case, tmp_path):
    paths = write_case(case_id="Case_001")
    paths["label"].write_text("not an image")

    result = subprocess.run(
        [sys.executable, "-m", "cascade.check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert f"ERROR {paths['label']}: not a gzip file" in result.stdout
    assert result.stderr == ""


def test_a_folder_of_linked_case_folders_is_checked(write_case, tmp_path, capsys):
    subset = tmp_path / "subset"
    subset.mkdir()
    for case_id in ("Case_001", "Case_002"):
        folder = write_case(root=tmp_path / "store", case_id=case_id)["t1"].parent
        (subset / case_id).symlink_to(folder)

    code = main([str(subset)])

    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert rows[1:3] == ["Case_001", "Case_002"]


def test_a_modality_on_a_grid_of_its_own_is_noted_with_both_grids(write_case, tmp_path, capsys):
    files = write_case(root=tmp_path / "data", case_id="Case_001")
    flair = nib.load(files["flair"])  # one slice short, on the others' affine
    short = np.asarray(flair.dataobj)[:, :, :15]
    nib.save(nib.Nifti1Image(short, flair.affine), files["flair"])
    write_case(root=tmp_path / "data", case_id="Case_002")

    code = main([str(tmp_path / "data")])

    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note")]
    assert code == 0
    assert notes == [
        "note Case_001: flair lies on a grid of its own (24x24x15 at 1x1x1 mm): resampled onto "
        "the t1 grid (24x24x16 at 1x1x1 mm)"
    ]
