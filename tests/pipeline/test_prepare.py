import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from cascade.cores import CORES_VARIABLE
from cascade.data import intake
from cascade.data.discovery import discover_cases
from cascade.data.preprocess import preprocess_case
from cascade.pipeline import prepare

PREPROCESSING = OmegaConf.create({"margin": 2, "lower_percentile": 0.5, "upper_percentile": 99.5})


def test_every_bad_case_is_named_and_only_good_ones_are_cached(tmp_path, write_case) -> None:
    data = tmp_path / "data"
    write_case(data, case_id="good")
    write_case(data, case_id="nan", arrays={"t2": np.full((24, 24, 16), np.nan, np.float32)})
    write_case(data, case_id="zero", arrays={"flair": np.zeros((24, 24, 16), np.int16)})
    write_case(data, case_id="cut").get("t1ce").write_bytes(b"\x1f\x8b" + bytes(100))
    flat = np.zeros((24, 24, 16), np.float32)
    flat[4:20, 4:20, 3:13] = 5.0  # one value over the brain: no spread to z-score by
    write_case(data, case_id="flat", arrays={"t1": flat})
    with pytest.raises(prepare.DataError, match="4 bad case") as error:
        prepare.prepare_cache(discover_cases(data), PREPROCESSING, tmp_path / "cache")
    message = str(error.value)
    assert "nan_t2" in message and "zero_flair" in message and "cut_t1ce" in message
    assert "flat_t1" in message and "no spread" in message
    assert "Traceback" not in message
    cached = [path.name for path in (tmp_path / "cache").glob("*/cases/*")]
    assert cached == ["good"]


@pytest.mark.parametrize("cores", ["1", "2"])
def test_cases_are_checked_and_cached_alike_on_one_core_or_several(
    tmp_path, write_case, monkeypatch, cores
) -> None:
    monkeypatch.setenv(CORES_VARIABLE, cores)
    for index in range(3):
        write_case(tmp_path / "data", case_id=f"C{index}", seed=index)
    cases = discover_cases(tmp_path / "data")
    cache, cases, scheme = prepare.prepare_cache(cases, PREPROCESSING, tmp_path / "cache")
    assert cache.case_ids() == ["C0", "C1", "C2"] and scheme.name == "brats2020"
    image, label, meta = preprocess_case(cases[1], cache.preprocessing)
    np.testing.assert_array_equal(cache.image("C1"), image.astype(np.float16))
    np.testing.assert_array_equal(cache.label("C1"), label)
    assert cache.meta("C1").label_values == meta.label_values == (0, 1, 2, 4)


def test_a_2024_case_beside_2023_ones_is_stored_in_the_datasets_scheme(
    tmp_path, write_case, monkeypatch
) -> None:
    monkeypatch.setenv(CORES_VARIABLE, "1")
    data = tmp_path / "data"
    write_case(data, naming="brats2023", case_id="A")
    cavity = write_case(data, naming="brats2023", case_id="B")
    label = nib.load(cavity["label"])
    classes = np.asarray(label.dataobj).copy()
    classes[0, 0, 0] = 4  # a resection cavity: only brats2024 has it
    nib.save(nib.Nifti1Image(classes, label.affine), cavity["label"])
    cache, cases, scheme = prepare.prepare_cache(
        discover_cases(data), PREPROCESSING, tmp_path / "cache"
    )
    assert scheme.name == "brats2024"
    assert all(cache.is_current(case) for case in cases)
    assert cache.meta("B").label_values == (0, 1, 2, 3, 4)


def test_cached_cases_are_not_checked_again(tmp_path, write_case, monkeypatch) -> None:
    write_case(tmp_path / "data", case_id="A")
    cases = discover_cases(tmp_path / "data")
    prepare.prepare_cache(cases, PREPROCESSING, tmp_path / "cache")
    checked = []
    monkeypatch.setattr(intake, "check_files", checked.append)
    monkeypatch.setattr(intake, "validate_case", checked.append)
    cache, cases, scheme = prepare.prepare_cache(cases, PREPROCESSING, tmp_path / "cache")
    assert checked == [] and cache.case_ids() == ["A"]
    assert scheme.name == "brats2020" and cases[0].scheme is scheme


def test_training_needs_labels(tmp_path, write_case) -> None:
    write_case(tmp_path / "data", case_id="A", labelled=False)
    data = OmegaConf.create({"root": str(tmp_path / "data"), "generate": False})
    with pytest.raises(prepare.DataError, match="needs labelled cases; none of 1"):
        prepare.prepare_cases(data)
