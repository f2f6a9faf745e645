import numpy as np
import pytest
from omegaconf import OmegaConf

from cascade.data.discovery import discover_cases
from cascade.pipeline import prepare

PREPROCESSING = OmegaConf.create({"margin": 2, "lower_percentile": 0.5, "upper_percentile": 99.5})


def test_every_bad_case_is_named_before_anything_is_cached(tmp_path, write_case) -> None:
    data = tmp_path / "data"
    write_case(data, case_id="good")
    write_case(data, case_id="nan", arrays={"t2": np.full((24, 24, 16), np.nan, np.float32)})
    write_case(data, case_id="zero", arrays={"flair": np.zeros((24, 24, 16), np.int16)})
    with pytest.raises(prepare.DataError, match="2 bad case") as error:
        prepare.prepare_cache(discover_cases(data), PREPROCESSING, tmp_path / "cache")
    assert "nan_t2" in str(error.value) and "zero_flair" in str(error.value)
    assert not list((tmp_path / "cache").glob("*/cases/*"))


def test_cached_cases_are_not_validated_again(tmp_path, write_case, monkeypatch) -> None:
    write_case(tmp_path / "data", case_id="A")
    cases = discover_cases(tmp_path / "data")
    prepare.prepare_cache(cases, PREPROCESSING, tmp_path / "cache")
    validated = []
    monkeypatch.setattr(prepare, "validate_case", validated.append)
    cache, cases, scheme = prepare.prepare_cache(cases, PREPROCESSING, tmp_path / "cache")
    assert validated == [] and cache.case_ids() == ["A"]
    assert scheme.name == "brats2020" and cases[0].scheme is scheme


def test_training_needs_labels(tmp_path, write_case) -> None:
    write_case(tmp_path / "data", case_id="A", labelled=False)
    data = OmegaConf.create({"root": str(tmp_path / "data"), "generate": False})
    with pytest.raises(prepare.DataError, match="needs labelled cases; none of 1"):
        prepare.prepare_cases(data)
