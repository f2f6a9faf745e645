"""A first run on one's own data: ``+experiment=smoke data=brats data.root=DIR`` on a tiny
BraTS 2024-style tree (labels 1, 2, 3 and 4 = resection cavity), end to end on the CPU."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import torch

from cascade.checkpoint import load_checkpoint
from cascade.data.discovery import scan_cases
from tests.conftest import synthetic_volumes, write_brats_case
from tests.test_train import TINY, train

SHAPE = (40, 40, 32)


def _with_cavity(seed: int) -> np.ndarray:
    """A 2023-style label (1, 2, 3) plus a resection cavity (4) beside the tumour."""
    label = synthetic_volumes(SHAPE, enhancing_value=3, seed=seed)["label"]
    label[8:13, 8:13, 8:12] = 4
    return label


def test_a_brats2024_tree_trains_with_the_resection_cavity_region(tmp_path) -> None:
    data, cache, run = (
        tmp_path / "BraTS2024-GLI" / "training_data1_v2",
        tmp_path / "c",
        tmp_path / "r",
    )
    for index in range(4):
        case_id = f"BraTS-GLI-0{2060 + index}-100"
        write_brats_case(
            data, "brats2023", case_id, SHAPE, seed=index, arrays={"label": _with_cavity(index)}
        )
    write_brats_case(data, "brats2023", "BraTS-GLI-09999-100", SHAPE, labelled=False)
    files_before = sorted(path for path in tmp_path.rglob("*") if path.is_file())

    result = train(
        *TINY, "data=brats", f"data.root={tmp_path / 'BraTS2024-GLI'}",
        f"cache_dir={cache}", f"hydra.run.dir={run}",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    assert "left out 1 unlabelled case(s): BraTS-GLI-09999-100" in result.stdout + result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"dice_wt", "dice_tc", "dice_et", "dice_rc", "hd95_rc"} <= metrics.keys()
    with (run / "per_case.csv").open() as stream:
        assert "dice_rc" in next(csv.reader(stream))
    model = load_checkpoint(run / "cascade.ckpt")
    assert model.settings.labels == "brats2024"
    assert model.scheme.num_classes == 5
    with torch.no_grad():  # both nets predict the five classes of the scheme
        assert model.members[0].stage1(torch.zeros(2, 20, 16, 16)).shape[1] == 5
        assert model.members[0].stage2(torch.zeros(2, 4 + 5, 16, 16, 16)).shape[1] == 5
    # the user's data folder is read, never written
    after = sorted(path for path in (tmp_path / "BraTS2024-GLI").rglob("*") if path.is_file())
    assert after == [path for path in files_before if "BraTS2024-GLI" in str(path)]

    # predicting a 2024-named case writes the model's cavity label 4, in the input's naming
    from cascade.predict import main as predict

    (case,) = [c for c in scan_cases(data)[0] if c.case_id == "BraTS-GLI-09999-100"]
    assert predict(["--checkpoint", str(run / "cascade.ckpt"), "--input", str(case.folder),
                    "--output", str(tmp_path / "seg"), "--device", "cpu"]) == 0  # fmt: skip
    written = nib.load(tmp_path / "seg" / "BraTS-GLI-09999-100-seg.nii.gz")
    assert set(np.unique(np.asanyarray(written.dataobj)).tolist()) <= {0, 1, 2, 3, 4}
    assert np.allclose(written.affine, nib.load(case.images["t1"]).affine)
