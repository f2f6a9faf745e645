"""Label schemes: what the values in a dataset's segmentation files mean, and its regions.

Inside the code a segmentation is always in *classes*, numbered the same way in every scheme:
0 background, 1 necrosis / non-enhancing core, 2 edema, 3 enhancing tumor, 4 resection cavity
(only BraTS 2024 has the last). A scheme says which classes it has, which value each has in its
files, and which classes form each evaluated region, as nnU-Net's dataset.json does. Files are
converted to classes when read and back when written, nowhere else; the scheme's name travels
in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# The classes of all schemes, in class-index order; a scheme uses the first `num_classes`.
CLASS_NAMES = ("background", "necrosis", "edema", "enhancing", "resection_cavity")

# The largest class count of any scheme (BraTS 2024); array shapes of a given scheme use its own.
MAX_CLASSES = len(CLASS_NAMES)


@dataclass(frozen=True)
class LabelScheme:
    """One dataset convention: file value of each class and the regions it is evaluated on."""

    name: str
    naming: str  # file naming family it is found with: "brats2020", "brats2023" or "msd"
    file_values: tuple[int, ...]  # file value of class i, for i < num_classes
    file_meanings: tuple[str, ...]  # the release's own name of each class, for the README/check
    regions: Mapping[str, tuple[int, ...]]  # region -> member classes

    @property
    def num_classes(self) -> int:
        return len(self.file_values)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[: self.num_classes]

    @property
    def allowed_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.file_values))

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(self.regions)

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        """File labels -> classes (uint8). Values must already be valid (see invalid_values);
        labels stored as floats (some releases do) are rounded to their integral values."""
        labels = np.asarray(labels)
        if labels.dtype.kind == "f":
            labels = np.rint(labels)
        lookup = np.zeros(max(self.file_values) + 1, dtype=np.uint8)
        for label_class, value in enumerate(self.file_values):
            lookup[value] = label_class
        return lookup[labels.astype(np.intp, copy=False)]

    def from_classes(self, classes: np.ndarray) -> np.ndarray:
        """Classes -> file labels (uint8). A class this scheme lacks (a resection cavity from
        a BraTS 2024 model, written in the 2020 convention) is written as background."""
        lookup = np.zeros(MAX_CLASSES, dtype=np.uint8)
        lookup[: self.num_classes] = self.file_values
        return lookup[np.asarray(classes).astype(np.intp, copy=False)]

    def invalid_values(self, values: np.ndarray) -> list[float]:
        """The values among `values` (distinct label values of a file) not in this scheme."""
        allowed = set(self.file_values)
        return [value for value in np.asarray(values).tolist() if value not in allowed]

    def region_masks(self, classes: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean mask of every region from a class map (any shape)."""
        return {name: np.isin(classes, members) for name, members in self.regions.items()}


_TUMOR_REGIONS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}

SCHEMES: dict[str, LabelScheme] = {
    scheme.name: scheme
    for scheme in (
        LabelScheme(
            name="brats2020",
            naming="brats2020",
            file_values=(0, 1, 2, 4),
            file_meanings=("background", "NCR/NET", "ED", "ET"),
            regions=_TUMOR_REGIONS,
        ),
        LabelScheme(
            name="brats2023",
            naming="brats2023",
            file_values=(0, 1, 2, 3),
            file_meanings=("background", "NCR", "ED", "ET"),
            regions=_TUMOR_REGIONS,
        ),
        LabelScheme(
            name="brats2024",
            naming="brats2023",
            file_values=(0, 1, 2, 3, 4),
            file_meanings=("background", "NETC", "SNFH", "ET", "RC"),
            regions={**_TUMOR_REGIONS, "rc": (4,)},
        ),
        LabelScheme(
            name="msd",
            naming="msd",
            # MSD numbers edema before the non-enhancing core
            file_values=(0, 2, 1, 3),
            file_meanings=("background", "non-enhancing tumour", "edema", "enhancing tumour"),
            regions=_TUMOR_REGIONS,
        ),
    )
}

# The scheme a file naming implies before any label value is read.
NAMING_DEFAULT = {"brats2020": "brats2020", "brats2023": "brats2023", "msd": "msd"}

# The scheme the tests and the synthetic generator write.
DEFAULT_SCHEME = SCHEMES["brats2020"]


def get_scheme(name: str | LabelScheme) -> LabelScheme:
    """The scheme called `name` (a LabelScheme passes through); ValueError lists the known ones."""
    if isinstance(name, LabelScheme):
        return name
    try:
        return SCHEMES[str(name)]
    except KeyError:
        raise ValueError(f"unknown label scheme {name!r}; known: {', '.join(SCHEMES)}") from None


def schemes_for_naming(naming: str) -> list[LabelScheme]:
    """Schemes a file naming can hold, the naming's default first (2023 before 2024)."""
    default = SCHEMES[NAMING_DEFAULT[naming]]
    return [default] + [s for s in SCHEMES.values() if s.naming == naming and s is not default]


def scheme_for_values(naming: str, values: set[int]) -> LabelScheme | None:
    """The first scheme of `naming` whose file values hold all `values`, or None."""
    for scheme in schemes_for_naming(naming):
        if values <= set(scheme.file_values):
            return scheme
    return None


def writing_scheme(case_scheme: LabelScheme, model_scheme: LabelScheme) -> LabelScheme:
    """The convention a prediction of `model_scheme` classes is written in for a case of
    `case_scheme`: the case's own, or the model's where both share a naming and the model's
    has more classes (a BraTS 2024 model writes its resection cavity into a 2023-named case)."""
    if (
        model_scheme.naming == case_scheme.naming
        and model_scheme.num_classes > case_scheme.num_classes
    ):
        return model_scheme
    return case_scheme


def _check_class_names(what: str, weights: Mapping[str, float]) -> None:
    unknown = set(weights) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"{what} name unknown classes {sorted(unknown)}; known {CLASS_NAMES}")


def class_weights(scheme: LabelScheme, weights: Mapping[str, float]) -> list[float]:
    """Per-class loss weights of `scheme` from weights by class name (1.0 where not named)."""
    _check_class_names("class weights", weights)
    return [float(weights.get(name, 1.0)) for name in scheme.class_names]


def class_probabilities(scheme: LabelScheme, weights: Mapping[str, float]) -> dict[int, float]:
    """Patch-centre class weights of `scheme` by class index, from weights by class name."""
    _check_class_names("label probabilities", weights)
    return {
        index: float(weights[name])
        for index, name in enumerate(scheme.class_names)
        if name in weights
    }
