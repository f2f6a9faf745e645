from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascade.data.cases import MODALITIES
from cascade.data.discovery import discover_cases
from cascade.data.validation import validate_case
from cascade.synthesis.dataset import case_seed, lps_affine, main, write_dataset
from cascade.synthesis.phantom import generate_case, generate_phantom

SHAPE = (48, 48, 32)
CSF, GM, WM = 1, 2, 3


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SHAPE, seed=7, with_enhancing=True)


def test_same_seed_same_case_and_seeds_differ() -> None:
    images, label = generate_case(SHAPE, seed=3)
    again_images, again_label = generate_case(SHAPE, seed=3)
    other_images, other_label = generate_case(SHAPE, seed=4)
    assert np.array_equal(label, again_label)
    for modality in MODALITIES:
        assert np.array_equal(images[modality], again_images[modality])
    assert not np.array_equal(images["t1"], other_images["t1"])
    assert not np.array_equal(label, other_label)


def test_case_seeds_are_distinct_and_reproducible() -> None:
    seeds = [case_seed(0, index) for index in range(20)]
    assert len(set(seeds)) == 20
    assert seeds == [case_seed(0, index) for index in range(20)]
    assert case_seed(1, 0) != case_seed(0, 0)


def test_types_and_shapes(phantom) -> None:
    assert list(phantom.images) == list(MODALITIES)
    for image in phantom.images.values():
        assert image.shape == SHAPE and image.dtype == np.int16
    assert phantom.label.shape == SHAPE and phantom.label.dtype == np.uint8


@pytest.mark.parametrize("seed", range(5))
def test_enhancing_case_has_every_label(seed: int) -> None:
    _, label = generate_case(SHAPE, seed=seed, with_enhancing=True)
    assert set(np.unique(label)) == {0, 1, 2, 4}


@pytest.mark.parametrize("seed", range(3))
def test_without_enhancing_there_is_no_label_4(seed: int) -> None:
    _, label = generate_case(SHAPE, seed=seed, with_enhancing=False)
    assert set(np.unique(label)) == {0, 1, 2}


def test_drawn_cases_mix_enhancing_and_not() -> None:
    enhancing = [4 in generate_case((32, 32, 32), seed=seed)[1] for seed in range(30)]
    assert 0 < enhancing.count(False) < 15


def test_regions_are_nested(phantom) -> None:
    label = phantom.label
    brain = phantom.tissue > 0
    core = np.isin(label, (1, 4))
    # Enhancing rim and necrosis make up the core; edema surrounds it.
    assert (label > 0)[~brain].sum() == 0
    grown_core = core.copy()
    for axis in range(3):
        grown_core |= np.roll(core, 1, axis) | np.roll(core, -1, axis)
    edge = grown_core & ~core & brain
    assert (label[edge] == 2).mean() > 0.8  # the core is wrapped in edema, not healthy tissue
    necrosis_center = np.argwhere(label == 1).mean(axis=0)
    rim_center = np.argwhere(label == 4).mean(axis=0)
    assert np.linalg.norm(necrosis_center - rim_center) < 4.0


def test_background_is_zero_and_brain_nonzero(phantom) -> None:
    brain = phantom.tissue > 0
    assert brain.any() and not brain.all()
    for image in phantom.images.values():
        assert not image[~brain].any()
        assert (image[brain] > 0).all()


def test_brain_holds_every_tissue(phantom) -> None:
    assert {CSF, GM, WM} <= set(np.unique(phantom.tissue))


def test_contrasts_like_mri() -> None:
    phantom = generate_phantom((64, 64, 48), seed=11, with_enhancing=True)
    images, label, tissue = phantom.images, phantom.label, phantom.tissue
    healthy = label == 0
    white, grey, csf = (healthy & (tissue == kind) for kind in (WM, GM, CSF))

    def mean(modality: str, mask: np.ndarray) -> float:
        return float(images[modality][mask].mean())

    assert mean("flair", label == 2) > mean("flair", white)
    assert mean("t1ce", label == 4) > mean("t1ce", label == 1)
    assert mean("t1", white) > mean("t1", grey) > mean("t1", csf)
    assert mean("t2", csf) > mean("t2", grey) > mean("t2", white)
    assert mean("flair", csf) < mean("flair", white)
    assert mean("t2", label == 2) > mean("t2", white)


@pytest.mark.slow
def test_full_size_brain_extent() -> None:
    images, label = generate_case((240, 240, 155), seed=0, with_enhancing=True)
    brain = np.argwhere(images["t1"] > 0)
    extent = brain.max(axis=0) - brain.min(axis=0) + 1
    # BraTS brains span about 140 x 170 x 140 voxels.
    assert np.all(np.abs(extent - np.array([140, 170, 130])) < 30), extent
    assert 1 in label and 4 in label


def test_too_small_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        generate_case((16, 48, 48))


def _expected_files(root: Path, index: int) -> list[Path]:
    name = f"Synth_{index:03d}"
    return [root / name / f"{name}_{key}.nii.gz" for key in (*MODALITIES, "seg")]


def test_write_dataset_files_affine_and_skip(tmp_path: Path) -> None:
    folders = write_dataset(tmp_path, cases=2, shape=SHAPE, seed=5, progress=False)
    assert folders == [tmp_path / "Synth_001", tmp_path / "Synth_002"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["Synth_001", "Synth_002"]
    for index in (1, 2):
        files = _expected_files(tmp_path, index)
        assert sorted(path.name for path in files[0].parent.iterdir()) == sorted(
            path.name for path in files
        )
        for path in files:
            image = nib.load(path)
            assert image.shape == SHAPE
            assert np.allclose(image.affine, lps_affine(SHAPE))
            assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
            assert image.header.get_zooms() == (1.0, 1.0, 1.0)
        assert nib.load(files[0]).get_data_dtype() == np.int16
        assert nib.load(files[-1]).get_data_dtype() == np.uint8

    expected_affine = np.array([[-1, 0, 0, 0], [0, -1, 0, 47], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert np.array_equal(lps_affine(SHAPE), expected_affine)

    # The written case equals the generated one for its derived seed.
    images, label = generate_case(SHAPE, seed=case_seed(5, 1))
    written = np.asanyarray(nib.load(_expected_files(tmp_path, 2)[1]).dataobj)
    assert np.array_equal(written, images["t1ce"])
    assert np.array_equal(np.asanyarray(nib.load(_expected_files(tmp_path, 2)[-1]).dataobj), label)

    # Complete cases are kept; an incomplete one is written again.
    kept = _expected_files(tmp_path, 1)[0]
    kept_time = kept.stat().st_mtime_ns
    missing = _expected_files(tmp_path, 2)[2]
    missing.unlink()
    write_dataset(tmp_path, cases=2, shape=SHAPE, seed=5, progress=False)
    assert kept.stat().st_mtime_ns == kept_time
    assert missing.is_file()


def test_written_cases_pass_validation(tmp_path: Path) -> None:
    write_dataset(tmp_path, cases=2, shape=SHAPE, seed=1, progress=False)
    cases = discover_cases(tmp_path)
    assert [case.case_id for case in cases] == ["Synth_001", "Synth_002"]
    for case in cases:
        summary = validate_case(case)
        assert summary.shape == SHAPE and summary.labelled


def test_cli_writes_cases(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synthetic"
    assert main(["--out", str(out), "--cases", "1", "--shape", "40", "40", "32"]) == 0
    files = _expected_files(out, 1)
    assert all(path.is_file() for path in files)
    assert nib.load(files[0]).shape == (40, 40, 32)


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--cases", "0"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--cases", "1", "--shape", "8", "8", "8"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--cases", "1", "--thick-slices", "0.5"])  # phantom
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--cases", "1", "--faint-patches", "0.7"])  # phantom
    for flag, value in (("--thick-slices", "2"), ("--faint-patches", "2"),
                        ("--contrast-floor", "0")):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), "--cases", "1", "--generator", "realistic", flag, value])
    assert not any(tmp_path.iterdir())  # nothing written
