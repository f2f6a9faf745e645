"""Any grid in, the input's grid out: cascade.predict on cases stored in other orientations and
spacings, with a checkpoint trained in BraTS geometry (LPS, 1 mm)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascade.predict import main as predict
from tests.test_predict import SETTINGS, _args, write_checkpoint

GEOMETRY = {"orientation": "LPS", "spacing": [1.0, 1.0, 1.0]}
SHAPE = (24, 26, 20)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    settings = {**SETTINGS, "preprocessing": {**SETTINGS["preprocessing"], **GEOMETRY}}
    return write_checkpoint(tmp_path / "cascade.ckpt", settings)


def _store(paths: dict[str, Path], folder: Path, transform) -> dict[str, Path]:
    """Copies of a case's files with each image's data and affine passed through `transform`."""
    folder.mkdir(parents=True)
    stored = {}
    for role, path in paths.items():
        image = nib.load(path)
        data, affine = transform(np.asanyarray(image.dataobj), image.affine)
        stored[role] = folder / path.name
        nib.save(nib.Nifti1Image(data, affine), stored[role])
    return stored


def _flip_to_ras(data: np.ndarray, affine: np.ndarray):
    """The same voxels stored in RAS order: x and y reversed, the affine adjusted to match."""
    flipped = nib.orientations.apply_orientation(
        data, nib.orientations.ornt_transform(nib.io_orientation(affine), [[0, 1], [1, 1], [2, 1]])
    )
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ras[:3, 3] = nib.affines.apply_affine(affine, [data.shape[0] - 1, data.shape[1] - 1, 0])
    return np.ascontiguousarray(flipped), ras


def test_a_case_stored_in_ras_gets_the_same_segmentation_in_physical_space(
    checkpoint, tmp_path, write_case
) -> None:
    paths = write_case(tmp_path / "lps", case_id="A", shape=SHAPE)
    ras = _store(paths, tmp_path / "ras" / "A", _flip_to_ras)
    assert nib.aff2axcodes(nib.load(ras["t1"]).affine) == ("R", "A", "S")

    assert predict(_args(checkpoint, paths["t1"].parent, tmp_path / "out_lps")) == 0
    assert predict(_args(checkpoint, ras["t1"].parent, tmp_path / "out_ras")) == 0
    as_stored = nib.load(tmp_path / "out_lps" / "A.nii.gz")
    from_ras = nib.load(tmp_path / "out_ras" / "A.nii.gz")

    np.testing.assert_allclose(from_ras.affine, nib.load(ras["t1"]).affine)
    assert from_ras.shape == SHAPE
    # a reorientation is lossless: back in LPS order the two segmentations are the same voxels
    to_lps = nib.orientations.ornt_transform(
        nib.io_orientation(from_ras.affine), nib.io_orientation(as_stored.affine)
    )
    back = nib.orientations.apply_orientation(np.asanyarray(from_ras.dataobj), to_lps)
    assert np.array_equal(back, np.asanyarray(as_stored.dataobj))
    assert len(np.unique(back)) > 1  # a real segmentation, not one class everywhere


def test_a_case_at_another_spacing_is_predicted_on_its_own_grid(
    checkpoint, tmp_path, write_case
) -> None:
    paths = write_case(tmp_path / "fine", case_id="A", shape=SHAPE)

    def half_millimetre(data, affine):  # 2x finer in-plane, 2x coarser across slices
        upsampled = np.repeat(np.repeat(data, 2, axis=0), 2, axis=1)[:, :, ::2]
        scaled = affine @ np.diag([0.5, 0.5, 2.0, 1.0])
        return np.ascontiguousarray(upsampled), scaled

    resampled = _store(paths, tmp_path / "other" / "A", half_millimetre)
    assert predict(_args(checkpoint, resampled["t1"].parent, tmp_path / "out")) == 0
    written = nib.load(tmp_path / "out" / "A.nii.gz")

    source = nib.load(resampled["t1"])
    assert written.shape == source.shape == (48, 52, 10)
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2, 4}


def test_a_flair_on_its_own_grid_is_resampled_onto_the_t1_grid(
    checkpoint, tmp_path, write_case
) -> None:
    paths = write_case(tmp_path / "data", case_id="A", shape=SHAPE, labelled=False)
    flair = nib.load(paths["flair"])
    thick = np.asanyarray(flair.dataobj)[:, :, ::2]  # 1 x 1 x 2 mm slices, same space
    nib.save(nib.Nifti1Image(thick, flair.affine @ np.diag([1.0, 1.0, 2.0, 1.0])), paths["flair"])

    assert predict(_args(checkpoint, paths["t1"].parent, tmp_path / "out", "--overlays")) == 0
    written = nib.load(tmp_path / "out" / "A.nii.gz")
    assert written.shape == SHAPE
    assert (tmp_path / "out" / "A.png").stat().st_size > 0  # drawn on a modality of that grid
    np.testing.assert_allclose(written.affine, nib.load(paths["t1"]).affine)


def test_modalities_without_physical_overlap_are_refused_in_one_line(
    checkpoint, tmp_path, write_case, capsys
) -> None:
    paths = write_case(tmp_path / "data", case_id="A", shape=SHAPE)
    t2 = nib.load(paths["t2"])
    far = t2.affine.copy()
    far[:3, 3] += 400.0
    nib.save(nib.Nifti1Image(np.asanyarray(t2.dataobj), far), paths["t2"])

    assert predict(_args(checkpoint, paths["t1"].parent, tmp_path / "out")) == 1
    output = capsys.readouterr().out
    assert f"skipped: {paths['t2']}: " in output and "covers only 0% of the space" in output
    assert not (tmp_path / "out" / "A.nii.gz").exists()
