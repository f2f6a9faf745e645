"""First steps of a run: the cases (generated if synthetic), their check, the split, the cache."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cascade.data.cache import PreprocessCache
from cascade.data.cases import Case, CaseError, discover_cases, validate_case
from cascade.data.split import read_split, split_cases, write_split
from cascade.data.synthetic import write_dataset

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """The dataset cannot be used; the message lists every bad case."""


def prepare_cases(data: DictConfig) -> list[Case]:
    """Discover (and for synthetic data first generate) the cases; all must be labelled."""
    root = Path(data.root)
    if data.get("synthetic"):
        synthetic = data.synthetic
        write_dataset(root, synthetic.cases, tuple(synthetic.shape), synthetic.seed)
    try:
        cases = discover_cases(root)
    except CaseError as error:
        raise DataError(str(error)) from None
    unlabelled = [case.case_id for case in cases if case.label is None]
    if unlabelled:
        raise DataError(f"{root}: training needs labels; unlabelled: {', '.join(unlabelled[:5])}")
    log.info("%d cases under %s", len(cases), root)
    return cases


def prepare_split(
    cases: list[Case], split: DictConfig, run_dir: Path
) -> tuple[list[str], list[str]]:
    """The seeded train/validation split, kept in the run folder so a resumed run reuses it."""
    path = run_dir / "split.json"
    if path.exists():
        return read_split(path)
    train, val = split_cases(
        [case.case_id for case in cases], split.val_count, split.val_fraction, split.seed
    )
    write_split(path, train, val)
    return train, val


def check_cases(cases: list[Case]) -> None:
    """Validate cases (readable, one grid, finite, labels in convention); list every bad one."""
    problems = []
    for case in cases:
        try:
            validate_case(case)
        except CaseError as error:
            problems.append(str(error))
    if problems:
        raise DataError(
            f"{len(problems)} bad case(s) (python -m cascade.check lists them):\n"
            + "\n".join(problems)
        )


def prepare_cache(cases: list[Case], preprocessing: DictConfig, cache_dir: Path) -> PreprocessCache:
    """Preprocess every case once (crop, clip, robust z-score) into the memory-mapped cache.

    Only cases not cached yet are validated: a cached case was checked when it was stored, and
    re-reading a whole dataset on every run (and on every DDP rank) costs minutes.
    """
    cache = PreprocessCache(cache_dir, OmegaConf.to_container(preprocessing, resolve=True))
    check_cases([case for case in cases if not cache.is_complete(case.case_id)])
    cache.build(cases)
    return cache
