import numpy as np
import pytest
import torch

from cascade.boxes import bounding_box, box_slices, enclosing_box


@pytest.mark.parametrize("as_tensor", [False, True])
def test_the_box_holds_the_mask_grown_by_the_margin_and_clipped(as_tensor) -> None:
    mask = np.zeros((10, 12, 8), dtype=bool)
    mask[2:4, 5, 0:3] = True
    mask[6, 7, 2] = True
    mask = torch.from_numpy(mask) if as_tensor else mask
    assert bounding_box(mask) == ((2, 7), (5, 8), (0, 3))
    assert bounding_box(mask, margin=2) == ((0, 9), (3, 10), (0, 5))
    box = box_slices(bounding_box(mask))
    assert int(mask[box].sum()) == int(mask.sum())


def test_an_empty_mask_has_no_box() -> None:
    assert bounding_box(np.zeros((4, 4, 4), dtype=bool)) is None
    assert bounding_box(torch.zeros(4, 4, dtype=torch.bool), margin=3) is None


def test_the_enclosing_box_holds_every_box():
    assert enclosing_box([]) is None
    box = ((2, 9), (0, 4), (5, 6))
    assert enclosing_box([box]) == box
    assert enclosing_box([box, ((4, 12), (1, 3), (0, 6))]) == ((2, 12), (0, 4), (0, 6))
