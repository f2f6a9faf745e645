from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cascade.data import cache as cache_module
from cascade.data.cache import PreprocessCache, prior_probabilities, settings_hash
from cascade.data.discovery import discover_cases
from cascade.data.labels import SCHEMES
from cascade.data.patches import LOCATIONS_PER_CLASS, PRIOR_STEPS
from cascade.data.preprocess import preprocess_case
from cascade.data.transforms import build_preprocessing, uncrop
from cascade.sampling.patches import PatchDraws
from cascade.sampling.pool import CasePool
from cascade.sampling.stream import CaseReader

SETTINGS = {"margin": 0, "lower_percentile": 0.5, "upper_percentile": 99.5}
SHAPE = (24, 24, 16)


@pytest.fixture
def dataset(tmp_path: Path, write_case) -> Path:
    root = tmp_path / "data"
    write_case(root, case_id="Case_001", seed=1)
    write_case(root, case_id="Case_002", seed=2)
    return root


def test_build_stores_cropped_normalised_case(tmp_path: Path, dataset: Path) -> None:
    cases = discover_cases(dataset)
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(cases, progress=False)

    assert store.folder == tmp_path / "cache" / f"preprocessed-{settings_hash(SETTINGS)}"
    assert len(store.folder.name) == len("preprocessed-") + 12
    assert store.case_ids() == ["Case_001", "Case_002"]
    image, label, meta = store.image("Case_001"), store.label("Case_001"), store.meta("Case_001")
    assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
    assert image.dtype == np.float16 and image.flags.c_contiguous
    assert label.dtype == np.uint8
    assert image.shape == (4, *meta.cropped_shape) and label.shape == meta.cropped_shape
    assert meta.cropped_shape != SHAPE  # the background was cropped away

    # The label comes back exactly, in classes (BraTS 2020 enhancing 4 -> 3).
    label_file = nib.load(cases[0].label)
    original = SCHEMES["brats2020"].to_classes(np.asarray(label_file.dataobj))
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert np.array_equal(uncrop(label, meta.crop_box, meta.original_shape), original)
    # Geometry and header of the original files, to write predictions back.
    assert meta.original_shape == SHAPE
    assert np.allclose(meta.affine, label_file.affine)
    assert meta.spacing == (1.0, 1.0, 1.0)
    assert meta.scheme is SCHEMES["brats2020"]
    assert meta.header_source == "label"
    assert meta.header == label_file.header.binaryblock
    assert meta.nifti_header().get_data_shape() == SHAPE


def test_preprocess_case_without_label(write_case, tmp_path: Path) -> None:
    write_case(tmp_path / "new", case_id="Patient", labelled=False)
    (case,) = discover_cases(tmp_path / "new")
    image, label, meta = preprocess_case(case, build_preprocessing(**SETTINGS))
    assert label is None and meta.header_source == "t1"
    assert image.dtype == np.float32 and image.shape[0] == 4
    t1 = np.asarray(nib.load(case.images["t1"]).dataobj)
    restored = uncrop(image[0], meta.crop_box, meta.original_shape)
    assert np.all(restored[t1 == 0] == 0)  # background stays exactly 0

    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build([case], progress=False)
    assert store.label("Patient") is None


def test_second_build_reuses_cases(tmp_path: Path, dataset: Path, monkeypatch) -> None:
    cases = discover_cases(dataset)
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(cases, progress=False)
    image_file = store.folder / "cases" / "Case_001" / "image.npy"
    modified = image_file.stat().st_mtime_ns

    calls = []
    original = cache_module.preprocess_case
    monkeypatch.setattr(
        cache_module, "preprocess_case", lambda *args: calls.append(args) or original(*args)
    )
    PreprocessCache(tmp_path / "cache", dict(reversed(SETTINGS.items()))).build(cases)
    assert calls == []
    assert image_file.stat().st_mtime_ns == modified


def test_other_settings_use_another_folder(tmp_path: Path, dataset: Path) -> None:
    cases = discover_cases(dataset)[:1]
    first = PreprocessCache(tmp_path / "cache", SETTINGS)
    second = PreprocessCache(tmp_path / "cache", {**SETTINGS, "margin": 3})
    assert first.folder != second.folder
    first.build(cases, progress=False)
    assert second.case_ids() == []
    second.build(cases, progress=False)
    assert second.image("Case_001").shape[1:] > first.image("Case_001").shape[1:]
    assert json.loads((second.folder / "settings.json").read_text())["margin"] == 3


def test_interrupted_write_is_rebuilt(tmp_path: Path, dataset: Path) -> None:
    cases = discover_cases(dataset)
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(cases[:1], progress=False)
    complete = store.folder / "cases" / "Case_001"
    # A killed writer: a case folder without its completion marker and a stale temporary.
    half_written = store.folder / "cases" / "Case_002"
    shutil.copytree(complete, half_written)
    (half_written / "complete").unlink()
    (half_written / "image.npy").write_bytes(b"truncated")
    stale = store.folder / "cases" / f".tmp-{socket.gethostname()}-999999999-0a1b2c3d-Case_002"
    stale.mkdir()

    assert store.case_ids() == ["Case_001"]
    with pytest.raises(FileNotFoundError, match="Case_002"):
        store.image("Case_002")

    store.build(cases, progress=False)
    assert store.case_ids() == ["Case_001", "Case_002"]
    assert store.image("Case_002").dtype == np.float16
    assert not stale.exists()
    leftovers = [path.name for path in (store.folder / "cases").iterdir()]
    assert sorted(leftovers) == ["Case_001", "Case_002"]


def test_priors_round_trip_in_steps_of_1_255(tmp_path: Path, dataset: Path) -> None:
    cases = discover_cases(dataset)[:1]
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(cases, progress=False)
    shape = store.image("Case_001").shape[1:]
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=shape).transpose(3, 0, 1, 2)

    assert not store.has_prior("Case_001", "abc123")
    store.write_prior("Case_001", "abc123", probabilities)
    assert store.has_prior("Case_001", "abc123")
    assert not store.has_prior("Case_001", "other")
    prior = store.prior("Case_001", "abc123")
    assert isinstance(prior, np.memmap) and prior.dtype == np.uint8
    np.testing.assert_allclose(prior_probabilities(prior), probabilities, atol=0.5 / 255 + 1e-6)
    assert prior_probabilities(prior).dtype == np.float32
    assert os.listdir(store.folder / "priors" / "abc123") == ["Case_001.npy"]

    with pytest.raises(ValueError, match="spatial shape"):
        store.write_prior("Case_001", "abc123", probabilities[:, :-1])
    with pytest.raises(ValueError, match="file name"):
        store.write_prior("Case_001", "../escape", probabilities)


def test_class_locations_are_a_bounded_sample_of_each_class_stored_with_the_case(
    tmp_path: Path, write_case
) -> None:
    shape = (48, 48, 40)
    label = np.full(shape, 2, dtype=np.uint8)  # edema everywhere: more voxels than are kept
    label[20:24, 20:24, 18:22] = 4  # a small enhancing tumor (BraTS 2020 value)
    write_case(tmp_path / "data", case_id="Big", shape=shape, arrays={"label": label})
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(discover_cases(tmp_path / "data"), progress=False)
    folder = store.folder / "cases" / "Big"
    path = folder / "class_locations.npz"
    assert path.is_file()  # written with the case

    locations = store.class_locations("Big")
    cached_label = np.asarray(store.label("Big"))
    assert len(locations[2]) == LOCATIONS_PER_CLASS < (cached_label == 2).sum()
    assert len(locations[3]) == (cached_label == 3).sum() == 64
    assert locations[1].shape == (0, 3)
    for label_class, coordinates in locations.items():
        assert coordinates.dtype == np.uint16
        assert (cached_label[tuple(coordinates.T)] == label_class).all()
    assert path.stat().st_size < 3 * LOCATIONS_PER_CLASS * 3 * 2 + 4096  # bounded


def test_an_unlabelled_case_has_no_class_locations(tmp_path: Path, write_case) -> None:
    write_case(tmp_path / "new", case_id="Patient", labelled=False)
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(discover_cases(tmp_path / "new"), progress=False)
    assert not (store.folder / "cases" / "Patient" / "class_locations.npz").exists()
    with pytest.raises(ValueError, match="Patient has no label"):
        store.class_locations("Patient")


def test_another_dataset_with_the_same_case_ids_gets_its_own_arrays(
    tmp_path: Path, write_case
) -> None:
    """Two datasets whose cases share ids (a corrected release, another synthetic seed) must
    not be served each other's arrays from one cache."""
    first, second = tmp_path / "first", tmp_path / "second"
    write_case(first, case_id="Case_001", seed=1)
    write_case(second, case_id="Case_001", seed=7)
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(discover_cases(first), progress=False)
    from_first = np.array(store.image("Case_001"))
    first_identity = store.identity(["Case_001"])

    store.build(discover_cases(second), progress=False)
    expected, _, _ = preprocess_case(discover_cases(second)[0], build_preprocessing(**SETTINGS))
    assert np.array_equal(store.image("Case_001"), expected.astype(np.float16))
    assert not np.array_equal(store.image("Case_001"), from_first)
    assert store.identity(["Case_001"]) != first_identity  # so a stage trained on it retrains


def test_a_changed_file_re_preprocesses_that_case_only_and_drops_its_priors(
    tmp_path: Path, dataset: Path, monkeypatch
) -> None:
    cases = discover_cases(dataset)
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(cases, progress=False)
    for case in cases:
        store.write_prior(
            case.case_id, "tag", np.full((4, *store.image(case.case_id).shape[1:]), 0.25)
        )
    identity = store.identity(["Case_001", "Case_002"])

    flair = cases[1].images["flair"]
    image = nib.load(flair)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj) * 2, image.affine), flair)
    rebuilt = []
    original = cache_module.preprocess_case
    monkeypatch.setattr(
        cache_module,
        "preprocess_case",
        lambda case, *rest: rebuilt.append(case.case_id) or original(case, *rest),
    )
    store.build(cases, progress=False)

    assert rebuilt == ["Case_002"]
    assert store.has_prior("Case_001", "tag") and not store.has_prior("Case_002", "tag")
    assert store.identity(["Case_001", "Case_002"]) != identity


def test_a_cache_of_an_earlier_version_is_rebuilt_with_one_line(
    tmp_path: Path, dataset: Path, monkeypatch, caplog
) -> None:
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(discover_cases(dataset), progress=False)
    monkeypatch.setattr(cache_module, "CACHE_VERSION", cache_module.CACHE_VERSION + 1)
    newer = PreprocessCache(tmp_path / "cache", SETTINGS)
    assert newer.folder != store.folder
    with caplog.at_level("WARNING", logger="cascade.data.cache"):
        newer.build(discover_cases(dataset), progress=False)
    (line,) = [record.getMessage() for record in caplog.records]
    assert "1 cache folder(s) of other settings or an earlier version" in line
    assert newer.case_ids() == ["Case_001", "Case_002"]


def test_a_case_on_another_grid_is_cached_in_the_training_geometry(
    tmp_path: Path, write_case
) -> None:
    """Resampled once, when cached: 2 mm RAS files give 1 mm LPS arrays, the label with it."""
    paths = write_case(tmp_path / "data", case_id="Coarse", shape=(12, 12, 8))
    for path in paths.values():
        image = nib.load(path)
        ras = np.diag([2.0, 2.0, 2.0, 1.0])  # RAS, 2 mm voxels
        data = np.asanyarray(image.dataobj)[::-1, ::-1].copy()
        nib.save(nib.Nifti1Image(data, ras), path)
    settings = {**SETTINGS, "orientation": "LPS", "spacing": [1.0, 1.0, 1.0]}
    store = PreprocessCache(tmp_path / "cache", settings)
    store.build(discover_cases(tmp_path / "data"), progress=False)

    meta = store.meta("Coarse")
    assert meta.original_shape == (24, 24, 16) and meta.input_shape == (12, 12, 8)
    assert meta.resampled and nib.aff2axcodes(np.asarray(meta.model_affine)) == ("L", "P", "S")
    label = store.label("Coarse")
    assert store.image("Coarse").shape[1:] == label.shape
    assert set(np.unique(label)) <= {0, 1, 2, 3} and label.any()


def test_images_are_cached_as_float16_of_the_preprocessed_intensities(
    tmp_path: Path, dataset: Path
) -> None:
    case = discover_cases(dataset)[0]
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build([case], progress=False)
    image, _, _ = preprocess_case(case, build_preprocessing(**SETTINGS))
    cached = store.image(case.case_id)
    assert isinstance(cached, np.memmap) and cached.dtype == np.float16
    assert cached.nbytes == image.size * 2
    # float16 keeps about 3 significant digits; zero background stays exactly zero
    np.testing.assert_allclose(cached.astype(np.float32), image, rtol=1e-3, atol=1e-3)
    assert np.array_equal(cached == 0, image == 0)


def test_a_uint8_prior_travels_as_stored_and_comes_back_as_probabilities(
    tmp_path: Path, dataset: Path
) -> None:
    store = PreprocessCache(tmp_path / "cache", SETTINGS)
    store.build(discover_cases(dataset), progress=False)
    rng = np.random.default_rng(0)
    for case_id in store.case_ids():
        shape = store.image(case_id).shape[1:]
        store.write_prior(case_id, "t", rng.dirichlet(np.ones(4), size=shape).transpose(3, 0, 1, 2))
    case = CaseReader(store, "t")(store.case_ids()[0])
    assert case["prior"].dtype == torch.uint8 and case["image"].dtype == torch.float16
    pool = CasePool(1, case["label"].shape, 9, PatchDraws.location_groups(4), "cpu", seed=0)
    pool.insert([case["image"], case["prior"], case["label"][None]], case["label"])
    draws = PatchDraws((8, 8, 8), {0: 1.0}, 4, (), prior_scale=PRIOR_STEPS)
    probabilities = draws(pool, 2, None)["prior"]
    assert probabilities.dtype == torch.float32
    assert torch.allclose(probabilities.sum(1), torch.ones(()), atol=4 * 0.5 / 255)
