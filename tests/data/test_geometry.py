"""Grids, alignment of modalities, training geometry and probabilities written back."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torchio as tio

from cascade.data.geometry import (
    GeometryError,
    Grid,
    TrainingGeometry,
    align_modalities,
    check_overlap,
    overlap_fraction,
    probabilities_onto_grid,
    reference_modality,
    to_training_geometry,
)

REAL_CASE = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "TCGA-FG-6692"


def centred_grid(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], orientation: str = "LPS"
) -> Grid:
    """Axis-aligned grid whose central voxel lies at world (0, 0, 0)."""
    signs = [1.0 if code in "RAS" else -1.0 for code in orientation]
    directions = np.diag(np.multiply(signs, spacing))
    affine = np.eye(4)
    affine[:3, :3] = directions
    affine[:3, 3] = -directions @ ((np.asarray(shape) - 1) / 2)
    return Grid(shape, affine)


def translated(grid: Grid, offset_mm: tuple[float, float, float]) -> Grid:
    """The same grid moved by `offset_mm` in world space."""
    affine = grid.matrix()
    affine[:3, 3] += offset_mm
    return Grid(grid.shape, affine)


def world_centres(grid: Grid) -> np.ndarray:
    """(X, Y, Z, 3) world coordinates (mm) of the voxel centres."""
    indices = np.stack(np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij"), -1)
    matrix = grid.matrix()
    return indices @ matrix[:3, :3].T + matrix[:3, 3]


def nested_spheres(grid: Grid, radii: tuple[float, ...] = (10.0, 6.0, 3.0)) -> np.ndarray:
    """(X, Y, Z) uint8 classes 1..len(radii) of nested spheres centred at world 0 (mm)."""
    distance = np.linalg.norm(world_centres(grid), axis=-1)
    classes = np.zeros(grid.shape, dtype=np.uint8)
    for label_class, radius in enumerate(radii, start=1):
        classes[distance <= radius] = label_class
    return classes


def scalar(grid: Grid, values: np.ndarray) -> tio.ScalarImage:
    return tio.ScalarImage(
        tensor=torch.as_tensor(values, dtype=torch.float32)[None], affine=grid.matrix()
    )


def label_map(grid: Grid, classes: np.ndarray) -> tio.LabelMap:
    return tio.LabelMap(tensor=torch.as_tensor(classes)[None], affine=grid.matrix())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def one_hot(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(X, Y, Z) classes -> (C, X, Y, Z) float probabilities."""
    return (classes[None] == torch.arange(num_classes).view(-1, 1, 1, 1)).float()


def test_grid_spacing_orientation_and_box() -> None:
    brats = centred_grid((20, 20, 20), (1.0, 1.0, 1.0), "LPS")
    assert brats.orientation == "LPS" and brats.spacing == (1.0, 1.0, 1.0)
    anisotropic = Grid.of(nib.Nifti1Image(np.zeros((8, 8, 4)), np.diag([0.5, 0.5, 4.0, 1.0])))
    assert anisotropic.orientation == "RAS"
    assert anisotropic.spacing == pytest.approx((0.5, 0.5, 4.0))
    low, high = anisotropic.physical_box()  # voxel edges: half a voxel beyond the centres
    np.testing.assert_allclose(low, [-0.25, -0.25, -2.0])
    np.testing.assert_allclose(high, [3.75, 3.75, 14.0])

    # Oblique: rotated 30 degrees about z, 1 x 2 x 3 mm voxels.
    angle = math.radians(30)
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.0, 2.0, 3.0])
    oblique = Grid.of(tio.ScalarImage(tensor=torch.zeros(1, 10, 10, 10), affine=affine))
    assert oblique.shape == (10, 10, 10) and oblique.orientation == "RAS"
    assert oblique.spacing == pytest.approx((1.0, 2.0, 3.0))

    shifted = np.array(brats.affine)
    shifted[0, 3] += 1e-4
    assert brats.same_as(Grid(brats.shape, shifted))
    shifted[0, 3] += 0.1
    assert not brats.same_as(Grid(brats.shape, shifted))
    assert not brats.same_as(Grid((20, 20, 21), brats.affine))
    assert hash(brats) == hash(Grid.of(scalar(brats, np.zeros(brats.shape))))


def test_overlap_fraction() -> None:
    grid = centred_grid((20, 20, 20), (1.0, 1.0, 1.0))
    inside = centred_grid((10, 10, 10), (1.0, 1.0, 1.0), "RAS")
    assert overlap_fraction(grid, translated(grid, (10.0, 0.0, 0.0))) == pytest.approx(0.5)
    assert overlap_fraction(grid, translated(grid, (5.0, 5.0, 0.0))) == pytest.approx(0.5625)
    assert overlap_fraction(grid, inside) == pytest.approx(1.0)
    assert overlap_fraction(inside, grid) == pytest.approx(1.0)
    assert overlap_fraction(grid, translated(grid, (500.0, 0.0, 0.0))) == 0.0


def test_subject_in_training_geometry_is_returned_unchanged() -> None:
    grid = centred_grid((20, 20, 20), (1.0, 1.0, 1.0), "LPS")
    values = np.random.default_rng(0).normal(size=grid.shape)
    subject = tio.Subject(t1=scalar(grid, values), label=label_map(grid, nested_spheres(grid)))
    before = subject["t1"].data.clone()
    geometry = TrainingGeometry("LPS", (1, 1, 1))

    result = to_training_geometry(subject, geometry)
    assert result is subject
    assert torch.equal(result["t1"].data, before)
    assert not geometry.matches(centred_grid((20, 20, 20), (1.0, 1.0, 1.01), "LPS"))
    assert not geometry.matches(centred_grid((20, 20, 20), (1.0, 1.0, 1.0), "RAS"))


def test_reorientation_round_trip_is_lossless() -> None:
    grid = centred_grid((20, 22, 24), (1.0, 1.0, 1.0), "LPS")
    values = np.random.default_rng(1).normal(size=grid.shape)
    subject = tio.Subject(t1=scalar(grid, values), label=label_map(grid, nested_spheres(grid)))

    ras = to_training_geometry(subject, TrainingGeometry("RAS", (1.0, 1.0, 1.0)))
    assert Grid.of(ras["t1"]).orientation == "RAS"
    assert torch.equal(ras["t1"].data, subject["t1"].data.flip(1, 2))  # L->R and P->A flips

    back = to_training_geometry(ras, TrainingGeometry("LPS", (1.0, 1.0, 1.0)))
    assert Grid.of(back["t1"]).same_as(grid) and Grid.of(back["label"]).same_as(grid)
    assert torch.equal(back["t1"].data, subject["t1"].data)
    assert torch.equal(back["label"].data, subject["label"].data)


def test_resampled_label_comes_back_onto_the_original_grid() -> None:
    grid = centred_grid((32, 32, 32), (1.0, 1.0, 1.0), "LPS")
    classes = nested_spheres(grid, radii=(10.0,))
    subject = tio.Subject(t1=scalar(grid, classes * 100.0), label=label_map(grid, classes))

    resampled = to_training_geometry(subject, TrainingGeometry("RAS", (0.5, 0.5, 4.0)))
    for key in ("t1", "label"):
        assert Grid.of(resampled[key]).orientation == "RAS"
        assert Grid.of(resampled[key]).spacing == pytest.approx((0.5, 0.5, 4.0))
    assert Grid.of(resampled["label"]).same_as(Grid.of(resampled["t1"]))
    assert resampled["label"].data.dtype == torch.uint8  # nearest neighbour: still classes
    assert set(resampled["label"].data.unique().tolist()) == {0, 1}

    back = tio.Resample((grid.shape, grid.matrix()))(resampled["label"])
    assert dice(back.data[0].numpy() == 1, classes == 1) > 0.9


def test_probabilities_round_trip_between_grids() -> None:
    grid_a = centred_grid((32, 32, 32), (1.0, 1.0, 1.0), "LPS")
    grid_b = centred_grid((30, 30, 12), (0.8, 0.8, 2.0), "RAS")  # covers only the middle of A
    classes = torch.from_numpy(nested_spheres(grid_a))
    probabilities = one_hot(classes, 4)
    assert probabilities_onto_grid(probabilities, grid_a.matrix(), grid_a) is probabilities

    on_b = probabilities_onto_grid(probabilities, grid_a.matrix(), grid_b)
    assert on_b.shape == (4, 30, 30, 12)
    on_a = probabilities_onto_grid(on_b, grid_b.matrix(), grid_a)
    assert on_a.shape == (4, 32, 32, 32)
    torch.testing.assert_close(on_a.sum(0), torch.ones(grid_a.shape))

    blob = classes > 0
    agreement = (on_a.argmax(0) == classes)[blob].float().mean()
    assert agreement > 0.95

    low, high = grid_b.physical_box()
    centres = world_centres(grid_a)
    outside = torch.from_numpy(~((centres >= low) & (centres <= high)).all(-1))
    assert outside.sum() > 1000
    assert torch.all(on_a[0][outside] == 1) and torch.all(on_a[1:, outside] == 0)


def test_modalities_on_different_grids_are_aligned_onto_the_finest() -> None:
    fine = centred_grid((32, 32, 30), (1.0, 1.0, 1.0), "LPS")
    coarse = centred_grid((32, 32, 10), (1.0, 1.0, 3.0), "LPS")  # same box, 3 mm slices
    np.testing.assert_allclose(fine.physical_box(), coarse.physical_box())

    def ramp(grid: Grid) -> np.ndarray:  # linear in world space, so linear resampling is exact
        x, y, z = np.moveaxis(world_centres(grid), -1, 0)
        return x + 2 * y + 0.5 * z

    subject = tio.Subject(
        case_id="case",
        t1=scalar(fine, ramp(fine)),
        t1ce=scalar(fine, ramp(fine)),
        t2=scalar(fine, ramp(fine)),
        flair=scalar(coarse, ramp(coarse)),
        label=label_map(coarse, nested_spheres(coarse)),
    )
    grids = {key: Grid.of(image) for key, image in subject.get_images_dict(False).items()}
    reference = reference_modality(grids)
    assert reference == "t1"

    aligned = align_modalities(subject, reference)
    assert aligned["case_id"] == "case"
    for key in ("t1", "t1ce", "t2"):
        assert aligned[key] is subject[key]
    for key in ("flair", "label"):
        assert Grid.of(aligned[key]).same_as(fine)
    assert Grid.of(subject["flair"]).same_as(coarse)  # the input subject is left alone
    # Between the first and last 3 mm slice centres, the interpolated ramp is the true one.
    interior = slice(1, 29)
    np.testing.assert_allclose(
        aligned["flair"].data[0, :, :, interior].numpy(), ramp(fine)[:, :, interior], atol=1e-3
    )
    assert aligned["label"].data.dtype == torch.uint8
    assert set(aligned["label"].data.unique().tolist()) <= {0, 1, 2, 3}


def test_reference_modality_prefers_finest_then_order() -> None:
    coarse = centred_grid((20, 20, 10), (1.0, 1.0, 3.0))
    fine = centred_grid((40, 40, 30), (0.5, 0.5, 1.0))
    one_mm = centred_grid((20, 20, 30), (1.0, 1.0, 1.0), "RAS")
    assert reference_modality({"t1": coarse, "t1ce": one_mm, "t2": fine, "flair": fine}) == "t2"
    assert reference_modality({"t1": one_mm, "t1ce": one_mm, "t2": one_mm, "flair": coarse}) == "t1"
    assert reference_modality({"t1": coarse, "t2": coarse, "label": fine}) == "t1"


def test_check_overlap_names_the_displaced_file(tmp_path: Path) -> None:
    grid = centred_grid((20, 20, 20), (1.0, 1.0, 1.0))
    paths = {key: tmp_path / f"case_{key}.nii.gz" for key in ("t1", "t1ce", "t2", "flair")}
    nudged = translated(grid, (3.0, 3.0, 3.0))  # a few mm off: still the same head
    grids = {"t1": grid, "t1ce": grid, "t2": nudged, "flair": grid}
    check_overlap(grids, paths)

    with pytest.raises(GeometryError) as raised:
        check_overlap({**grids, "flair": translated(grid, (300.0, 0.0, 0.0))}, paths)
    message = str(raised.value)
    assert message.startswith(str(paths["flair"]) + ": ") and "\n" not in message
    assert "0%" in message and "case_t1.nii.gz" in message


@pytest.mark.skipif(not REAL_CASE.is_dir(), reason="real BraTS case not available")
def test_real_case_round_trip_keeps_whole_tumor() -> None:
    case_id = REAL_CASE.name
    subject = tio.Subject(
        t1=tio.ScalarImage(REAL_CASE / f"{case_id}_t1.nii.gz"),
        label=tio.LabelMap(REAL_CASE / f"{case_id}_seg.nii.gz"),
    )
    original = Grid.of(subject["t1"])
    assert original.shape == (240, 240, 155) and original.orientation == "LPS"

    resampled = to_training_geometry(subject, TrainingGeometry("RAS", (0.5, 0.5, 4.0)))
    grid = Grid.of(resampled["label"])
    assert grid.orientation == "RAS" and grid.spacing == pytest.approx((0.5, 0.5, 4.0))

    values, classes = np.unique(resampled["label"].data[0].numpy(), return_inverse=True)
    classes = torch.from_numpy(classes.reshape(grid.shape))
    probabilities = one_hot(classes, len(values))
    back = probabilities_onto_grid(probabilities, grid.matrix(), original).argmax(0)
    whole_tumor = subject["label"].data[0].numpy() > 0
    assert dice(back.numpy() > 0, whole_tumor) > 0.9


def test_a_pure_reorientation_maps_probabilities_back_exactly() -> None:
    """RAS -> LPS flips x and y; another grid may count the axes in another order: both are
    mapped by flips and permutations, bit for bit, without interpolation."""
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn(4, 5, 6, 7, generator=generator), 0)
    ras = np.eye(4)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:3, 3] = (4.0, 5.0, 0.0)  # the same voxel centres, x and y counted from the other end
    mapped = probabilities_onto_grid(probabilities, ras, Grid((5, 6, 7), lps))
    assert torch.equal(mapped, probabilities.flip(1, 2))

    # target voxel (j0, j1, j2) = source voxel (i1, i2, i0): target affine is R^-1 = R^T
    rotation = np.zeros((4, 4))
    rotation[0, 1] = rotation[1, 2] = rotation[2, 0] = rotation[3, 3] = 1.0
    mapped = probabilities_onto_grid(probabilities, ras, Grid((6, 7, 5), rotation.T))
    assert torch.equal(mapped, probabilities.permute(0, 2, 3, 1))
