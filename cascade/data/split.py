"""Seeded train/validation/test split of case ids, saved as JSON so every stage uses the same one.

Test cases are held out from every choice a run makes (both stages' checkpoints are chosen on
the validation cases), so their scores are an unbiased estimate; validation scores are not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cascade.io import write_text_atomic


def read_case_list(path: Path | str) -> list[str]:
    """Case ids from a file: one per line (blank lines and # comments skipped), or a JSON list."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the case list ({error.strerror})") from None
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{path}: not a JSON list of case ids ({error})") from None
        if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
            raise ValueError(f"{path}: not a JSON list of case ids")
        return ids
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def split_cases(
    case_ids: Sequence[str],
    val_count: int | None,
    val_fraction: float,
    seed: int,
    test_count: int = 0,
    test_ids: Sequence[str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test), each sorted. `test_ids` (named cases) or `test_count` seeded draws are
    held out first; then `val_count` cases (or round(val_fraction * rest) when None) of the rest.

    Depends only on the set of ids and the seed, not on their order.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("split_cases: case ids are not unique")
    rng = np.random.default_rng(seed)
    if test_ids is not None:
        unknown = sorted(set(test_ids) - set(ids))
        if unknown:
            raise ValueError(
                f"split_cases: test cases not in the dataset: {', '.join(unknown[:5])}"
            )
        test = sorted(set(test_ids))
    elif test_count:
        if not 0 < test_count < len(ids):
            raise ValueError(f"split_cases: cannot hold out {test_count} of {len(ids)} for test")
        test = sorted(ids[index] for index in rng.permutation(len(ids))[:test_count])
    else:  # no test split: the draw below is the one of splits without a test set
        test = []
    rest = [case_id for case_id in ids if case_id not in set(test)]
    held_out = round(val_fraction * len(rest)) if val_count is None else val_count
    if not 0 <= held_out < len(rest):
        raise ValueError(
            f"split_cases: cannot hold out {held_out} of {len(rest)} cases; "
            "lower val_count / val_fraction"
        )
    order = rng.permutation(len(rest))
    val = sorted(rest[index] for index in order[:held_out])
    train = sorted(rest[index] for index in order[held_out:])
    return train, val, test


def write_split(
    path: Path | str, train: Sequence[str], val: Sequence[str], test: Sequence[str] = ()
) -> None:
    """Write {"train": [...], "val": [...], "test": [...]} as JSON (atomically)."""
    content = {"train": list(train), "val": list(val), "test": list(test)}
    write_text_atomic(path, json.dumps(content, indent=1) + "\n")


def read_split(path: Path | str) -> tuple[list[str], list[str], list[str]]:
    """Read a split written by `write_split` -> (train_ids, val_ids, test_ids); a split file
    from before test splits has no "test" and gives an empty test list."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        train, val, test = content["train"], content["val"], content.get("test", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a readable split file ({error})") from error
    lists = (train, val, test)
    if not all(isinstance(ids, list) for ids in lists):
        raise ValueError(f"{path}: train, val and test must be lists of case ids")
    if set(train) & set(val) or set(test) & (set(train) | set(val)):
        raise ValueError(f"{path}: train, val and test must be disjoint")
    return tuple([str(case_id) for case_id in ids] for ids in lists)  # type: ignore[return-value]
