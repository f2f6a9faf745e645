import numpy as np
import pytest
import torch

from cascade.inference.postprocess import suppress_small_enhancing


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
