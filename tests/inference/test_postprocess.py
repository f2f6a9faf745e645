import numpy as np
import pytest
import torch

from cascade.inference.postprocess import keep_largest_tumor, suppress_small_enhancing


def class_map(enhancing_voxels: int) -> np.ndarray:
    classes = np.zeros((12, 12, 12), dtype=np.uint8)
    classes[2:10, 2:10, 2:10] = 2
    classes[4:8, 4:8, 4:8] = 1
    classes.reshape(-1)[np.flatnonzero(classes == 1)[:enhancing_voxels]] = 3
    return classes


def test_small_enhancing_becomes_necrosis():
    classes = class_map(enhancing_voxels=10)
    result = suppress_small_enhancing(classes, min_voxels=11)
    assert not (result == 3).any()
    assert (result == 1).sum() == (classes == 1).sum() + 10
    assert np.array_equal(result == 2, classes == 2)
    assert (classes == 3).sum() == 10  # input untouched


def test_enhancing_at_or_above_threshold_is_kept():
    classes = class_map(enhancing_voxels=10)
    assert np.array_equal(suppress_small_enhancing(classes, min_voxels=10), classes)
    assert np.array_equal(suppress_small_enhancing(classes, min_voxels=0), classes)


def test_works_on_tensors():
    classes = torch.from_numpy(class_map(enhancing_voxels=5)).long()
    result = suppress_small_enhancing(classes, min_voxels=200)
    assert isinstance(result, torch.Tensor) and result.dtype == torch.long
    assert not (result == 3).any()
    assert (classes == 3).sum() == 5


def test_negative_threshold_rejected():
    with pytest.raises(ValueError, match="min_voxels"):
        suppress_small_enhancing(class_map(1), min_voxels=-1)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_only_the_largest_tumor_component_stays(as_tensor) -> None:
    classes = np.zeros((12, 12, 12), dtype=np.uint8)
    classes[1:6, 1:6, 1:6] = 2  # the tumor: edema around an enhancing core
    classes[3, 3, 3] = 3
    classes[9, 9, 9] = 3  # a stray enhancing blob
    classes[10, 1, 1] = 4  # a resection cavity is no tumor: kept
    classes = torch.from_numpy(classes) if as_tensor else classes
    kept = keep_largest_tumor(classes, (1, 2, 3))
    assert type(kept) is type(classes)
    kept = np.asarray(kept)
    assert kept[9, 9, 9] == 0 and kept[3, 3, 3] == 3 and kept[10, 1, 1] == 4
    assert int((kept == 2).sum()) == 5**3 - 1
    # components touch through faces: a voxel meeting the tumor at a corner is a stray one
    corner = np.zeros((6, 6, 6), dtype=np.uint8)
    corner[1:3, 1:3, 1:3] = 2
    corner[3, 3, 3] = 1
    assert np.asarray(keep_largest_tumor(corner, (1, 2, 3)))[3, 3, 3] == 0
