import json
from pathlib import Path

import pytest

from cascade.data.split import read_case_list, read_split, split_cases, write_split

IDS = [f"BraTS20_Training_{index:03d}" for index in range(1, 370)]


def test_brats2020_default_holds_out_57_disjoint() -> None:
    train, val, test = split_cases(IDS, val_count=57, val_fraction=0.2, seed=42)
    assert len(val) == 57 and len(train) == 312 and test == []
    assert not set(train) & set(val)
    assert sorted(train + val) == IDS


def test_deterministic_and_order_independent() -> None:
    first = split_cases(IDS, val_count=None, val_fraction=0.2, seed=1)
    again = split_cases(list(reversed(IDS)), val_count=None, val_fraction=0.2, seed=1)
    other_seed = split_cases(IDS, val_count=None, val_fraction=0.2, seed=2)
    assert first == again
    assert first[1] != other_seed[1]
    assert len(first[1]) == round(0.2 * 369)


def test_rejects_impossible_splits() -> None:
    with pytest.raises(ValueError, match="cannot hold out"):
        split_cases(IDS[:5], val_count=5, val_fraction=0.0, seed=0)
    with pytest.raises(ValueError, match="not unique"):
        split_cases(["a", "a", "b"], val_count=1, val_fraction=0.0, seed=0)


def test_json_round_trip(tmp_path: Path) -> None:
    train, val, test = split_cases(IDS[:10], val_count=3, val_fraction=0.0, seed=0, test_count=2)
    path = tmp_path / "run" / "split.json"
    write_split(path, train, val, test)
    assert read_split(path) == (train, val, test)
    assert set(json.loads(path.read_text())) == {"train", "val", "test"}
    path.write_text("{}")
    with pytest.raises(ValueError, match="split.json"):
        read_split(path)


def test_a_test_split_is_drawn_first_and_leaves_the_validation_draw_seeded() -> None:
    train, val, test = split_cases(IDS, val_count=57, val_fraction=0.2, seed=42, test_count=30)
    assert len(test) == 30 and len(val) == 57 and len(train) == 369 - 87
    assert not (set(test) & set(val)) and not (set(test) & set(train))
    assert (train, val, test) == split_cases(IDS, 57, 0.2, 42, test_count=30)


def test_test_cases_named_in_a_file(tmp_path: Path) -> None:
    listed = tmp_path / "test_cases.txt"
    listed.write_text("# held out by the hospital\nBraTS20_Training_001\n\nBraTS20_Training_002\n")
    named = read_case_list(listed)
    train, val, test = split_cases(IDS[:20], val_count=4, val_fraction=0.0, seed=0, test_ids=named)
    assert test == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert len(val) == 4 and len(train) == 14
    (tmp_path / "list.json").write_text(json.dumps(named))
    assert read_case_list(tmp_path / "list.json") == named
    with pytest.raises(ValueError, match="not in the dataset: Nobody"):
        split_cases(IDS[:20], 4, 0.0, 0, test_ids=["Nobody"])


def test_a_split_file_from_before_test_splits_reads_with_no_test_cases(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    assert read_split(path) == (["a", "b"], ["c"], [])
