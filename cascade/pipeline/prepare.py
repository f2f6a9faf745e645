"""First steps of a run: the cases (generated if synthetic), their check and label scheme, the
split, the cache.

Generating, checking and preprocessing run one case per process over the job's cores
(`cascade.cores`); a case is checked and preprocessed from one read of its images.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cascade.cores import available_cores, map_in_processes
from cascade.data.cache import PreprocessCache
from cascade.data.cases import Case
from cascade.data.discovery import scan_cases
from cascade.data.errors import CaseError
from cascade.data.intake import check_and_store_case
from cascade.data.labels import LabelScheme
from cascade.data.split import read_case_list, read_split, split_cases, write_split
from cascade.data.validation import resolve_scheme, with_scheme
from cascade.ranks import is_global_zero
from cascade.synthesis.dataset import write_dataset
from cascade.synthesis.variation import ScanVariation

log = logging.getLogger(__name__)

# Unlabelled cases named in the log line, at most.
_NAMED_AT_MOST = 10


class DataError(RuntimeError):
    """The dataset cannot be used; the message lists every bad case."""


def generate_cases(data: DictConfig, synthetic: DictConfig | None) -> tuple[int, int]:
    """Write the cases of generated data (``data.generate``) that are not there yet; returns
    how many were written and how many the dataset holds ((0, 0) for data not generated)."""
    if not data.get("generate"):
        return 0, 0
    if synthetic is None:
        raise DataError("data.generate is set, but there are no synthetic settings")
    root = Path(data.root)
    there = {path.name for path in root.iterdir()} if root.is_dir() else set()
    folders = write_dataset(
        root,
        synthetic.cases,
        tuple(synthetic.shape),
        synthetic.seed,
        generator=data.generator,
        workers=synthetic.workers or available_cores(),
        variation=ScanVariation(
            thick_slices=synthetic.thick_slices,
            faint_patches=synthetic.faint_patches,
            contrast_floor=synthetic.contrast_floor,
        ),
    )
    return sum(folder.name not in there for folder in folders), len(folders)


def prepare_cases(data: DictConfig) -> list[Case]:
    """Discover the labelled cases to train on (generated ones: after `generate_cases`).

    Unlabelled cases (a release's validation folder beside its training folder) are left out
    and named in the log; any other problem stops the run, listed as `cascade.check` lists it.
    """
    root = Path(data.root)
    cases, problems = scan_cases(root)
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) under {root} (python -m cascade.check lists them):\n"
            + "\n".join(str(problem) for problem in problems)
        )
    unlabelled = [case.case_id for case in cases if case.label is None]
    labelled = [case for case in cases if case.label is not None]
    if not labelled:
        raise DataError(f"{root}: training needs labelled cases; none of {len(cases)} has a label")
    if unlabelled:
        named = ", ".join(unlabelled[:_NAMED_AT_MOST])
        more = f" and {len(unlabelled) - _NAMED_AT_MOST} more" if len(unlabelled) > 10 else ""
        log.warning("left out %d unlabelled case(s): %s%s", len(unlabelled), named, more)
    log.info("%d labelled cases under %s", len(labelled), root)
    return labelled


def prepare_split(
    cases: list[Case], split: DictConfig, run_dir: Path
) -> tuple[list[str], list[str], list[str]]:
    """The seeded train/validation/test split, kept in the run folder so a resumed run reuses
    it. Test cases are `split.test_cases` (a file of case ids) or `split.test_count` draws."""
    path = run_dir / "split.json"
    if path.exists():
        return read_split(path)
    test_file = split.get("test_cases")
    try:
        train, val, test = split_cases(
            [case.case_id for case in cases],
            split.val_count,
            split.val_fraction,
            split.seed,
            test_count=split.get("test_count") or 0,
            test_ids=read_case_list(test_file) if test_file else None,
        )
    except ValueError as error:
        raise DataError(str(error)) from None
    if is_global_zero():  # the other ranks compute the same seeded split
        write_split(path, train, val, test)
    return train, val, test


def prepare_cache(
    cases: list[Case], preprocessing: DictConfig, cache_dir: Path, labels: str | None = None
) -> tuple[PreprocessCache, list[Case], LabelScheme]:
    """Check and preprocess every case once (to the training geometry, crop, clip, robust
    z-score) into the memory-mapped cache, then settle the label scheme (`labels`, or detected).

    Only cases not cached yet, or whose files changed since, are read: a cached case was checked
    when it was stored and its label values are in its meta, and re-reading a whole dataset on
    every run (and on every DDP rank) costs minutes. Any bad case stops the run, all of them
    listed; the good ones stay cached. Returns the cache, the cases in the scheme, and the scheme.
    """
    cache = open_cache(preprocessing, cache_dir)
    cases, scheme, _ = settle_scheme(cases, cache, labels)
    cache.build(cases)
    return cache, cases, scheme


def open_cache(preprocessing: DictConfig, cache_dir: Path) -> PreprocessCache:
    """The cache of cases preprocessed with these settings."""
    return PreprocessCache(cache_dir, OmegaConf.to_container(preprocessing, resolve=True))


def settle_scheme(
    cases: list[Case], cache: PreprocessCache, labels: str | None = None
) -> tuple[list[Case], LabelScheme, int]:
    """Check the cases not cached yet, then settle the label scheme (`labels`, or detected).
    Returns the cases in the scheme, the scheme and how many cases were cached already."""
    cached = {case.case_id for case in cases if cache.is_current(case, check_scheme=False)}
    values = check_and_store([case for case in cases if case.case_id not in cached], cache, labels)
    values.update({case_id: cache.meta(case_id).label_values for case_id in cached})
    try:
        scheme = resolve_scheme(cases, values, labels)
    except CaseError as error:
        raise DataError(str(error)) from None
    cases = with_scheme(cases, scheme)
    log.info(
        "label scheme %s (%s)",
        scheme.name,
        "forced" if labels not in (None, "auto") else "detected",
    )
    return cases, scheme, len(cached)


def check_and_store(
    cases: list[Case], cache: PreprocessCache, labels: str | None = None
) -> dict[str, tuple[int, ...]]:
    """Check each case (readable, overlapping grids, finite, label values of its naming) and
    store it preprocessed, one case per process over the job's cores; list every bad one.
    Returns the distinct label values of each labelled case."""
    if not cases:
        return {}
    cache.open_for_writing()
    jobs = [(case, cache, labels) for case in cases]
    problems, values = [], {}
    results = map_in_processes(check_and_store_case, jobs, available_cores())
    for case, (case_values, problem) in tqdm(
        zip(cases, results, strict=True), total=len(cases), desc="check and preprocess", unit="case"
    ):
        if problem is None:
            values[case.case_id] = case_values
        else:
            problems.append(problem)
    if problems:
        raise DataError(
            f"{len(problems)} bad case(s) (python -m cascade.check lists them):\n"
            + "\n".join(problems)
        )
    return values
