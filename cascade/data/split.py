"""Seeded train/validation split of case ids, saved as JSON so every stage uses the same one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def split_cases(
    case_ids: Sequence[str], val_count: int | None, val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Hold out `val_count` cases (or round(val_fraction * n) when None); both lists sorted.

    Depends only on the set of ids and the seed, not on their order.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("split_cases: case ids are not unique")
    held_out = round(val_fraction * len(ids)) if val_count is None else val_count
    if not 0 <= held_out < len(ids):
        raise ValueError(
            f"split_cases: cannot hold out {held_out} of {len(ids)} cases; "
            "lower val_count / val_fraction"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[index] for index in order[:held_out])
    train = sorted(ids[index] for index in order[held_out:])
    return train, val


def write_split(path: Path | str, train: Sequence[str], val: Sequence[str]) -> None:
    """Write {"train": [...], "val": [...]} as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"train": list(train), "val": list(val)}, indent=1) + "\n")
    partial.replace(path)


def read_split(path: Path | str) -> tuple[list[str], list[str]]:
    """Read a split written by `write_split` -> (train_ids, val_ids)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        train, val = content["train"], content["val"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a readable split file ({error})") from error
    if not isinstance(train, list) or not isinstance(val, list) or set(train) & set(val):
        raise ValueError(f"{path}: train and val must be disjoint lists of case ids")
    return [str(case_id) for case_id in train], [str(case_id) for case_id in val]
