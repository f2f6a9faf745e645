from pathlib import Path

import pytest

from cascade.data.split import read_split, split_cases, write_split

IDS = [f"BraTS20_Training_{index:03d}" for index in range(1, 370)]


def test_brats2020_default_holds_out_57_disjoint() -> None:
    train, val = split_cases(IDS, val_count=57, val_fraction=0.2, seed=42)
    assert len(val) == 57 and len(train) == 312
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
    train, val = split_cases(IDS[:10], val_count=3, val_fraction=0.0, seed=0)
    path = tmp_path / "run" / "split.json"
    write_split(path, train, val)
    assert read_split(path) == (train, val)
    path.write_text("{}")
    with pytest.raises(ValueError, match="split.json"):
        read_split(path)
