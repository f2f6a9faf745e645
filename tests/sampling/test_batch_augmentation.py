"""BatchAugmentation: per-sample flips of image, prior and label; image intensity scale/shift."""

from __future__ import annotations

import itertools

import pytest
import torch

from cascade.sampling.batch_augmentation import BatchAugmentation

SHAPE = (6, 7, 8)


def make_batch(size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random image with background; label derived from channel 0; one-hot prior of the label."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(size, 4, *SHAPE, generator=generator) + 0.5
    image[..., :2] = 0  # background slab
    label = (image[:, 0] * 4 - 2).clamp(0, 3).to(torch.uint8)
    prior = torch.nn.functional.one_hot(label.long(), 4).permute(0, 4, 1, 2, 3).float()
    return {"image": image, "prior": prior, "label": label, "case_id": ["a"] * size}


def test_flips_move_image_prior_and_label_together() -> None:
    batch = make_batch(size=16)
    augmentation = BatchAugmentation((0, 1, 2), 0.0, 0.0)
    out = augmentation(batch, generator=torch.Generator().manual_seed(1))
    # the label still follows the image voxel by voxel, and the prior still follows the label
    expected = (out["image"][:, 0] * 4 - 2).clamp(0, 3).to(torch.uint8)
    torch.testing.assert_close(out["label"], expected)
    torch.testing.assert_close(out["prior"].argmax(1).to(torch.uint8), out["label"])
    seen = set()
    for index in range(16):
        # every sample is its input flipped along some subset of the axes
        matches = [
            dims
            for count in range(4)
            for dims in itertools.combinations((1, 2, 3), count)
            if torch.equal(out["image"][index], batch["image"][index].flip(dims))
        ]
        assert len(matches) == 1
        dims = matches[0]
        assert torch.equal(out["label"][index], batch["label"][index].flip([d - 1 for d in dims]))
        seen.add(dims)
    assert len(seen) > 3  # samples get different flips
    assert out["case_id"] == batch["case_id"]


def test_only_the_configured_axes_are_flipped() -> None:
    batch = make_batch(size=16)
    out = BatchAugmentation((2,), 0.0, 0.0)(batch, generator=torch.Generator().manual_seed(0))
    flipped = [not torch.equal(o, i) for o, i in zip(out["image"], batch["image"], strict=True)]
    assert any(flipped) and not all(flipped)
    for o, i, was in zip(out["image"], batch["image"], flipped, strict=True):
        assert torch.equal(o, i.flip(3) if was else i)


def test_intensity_scale_changes_the_image_only_within_bounds() -> None:
    batch = make_batch(size=8)
    out = BatchAugmentation((), 0.2, 0.0)(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["prior"], batch["prior"])
    assert torch.equal(out["label"], batch["label"])
    inside = batch["image"] != 0
    ratio = torch.where(inside, out["image"] / batch["image"], torch.nan)
    # one factor per sample and channel, inside [0.8, 1.2], different between them
    factors = ratio.flatten(2).nanmean(2)
    torch.testing.assert_close(
        ratio.flatten(2).nan_to_num(0), (factors[..., None] * inside.flatten(2))
    )
    assert ((factors >= 0.8) & (factors <= 1.2)).all()
    assert factors.unique().numel() == factors.numel()
    assert (out["image"][~inside] == 0).all()


def test_intensity_shift_moves_only_brain_voxels_within_bounds() -> None:
    batch = make_batch(size=8)
    out = BatchAugmentation((), 0.0, 0.3)(batch, generator=torch.Generator().manual_seed(0))
    inside = batch["image"] != 0
    difference = out["image"] - batch["image"]
    offsets = difference[..., -1:].amax((2, 3, 4))  # last Z slab is inside the brain
    torch.testing.assert_close(difference, offsets[..., None, None, None] * inside)
    assert (offsets.abs() <= 0.3).all() and offsets.unique().numel() == offsets.numel()
    assert (out["image"][~inside] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dtypes_and_shapes_are_kept_and_input_is_untouched(dtype: torch.dtype) -> None:
    batch = make_batch()
    batch["image"] = batch["image"].to(dtype)
    before = {key: value.clone() for key, value in batch.items() if key != "case_id"}
    out = BatchAugmentation((0, 1, 2), 0.1, 0.1)(batch)
    for key, value in before.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype
        assert torch.equal(batch[key], value)


def test_generator_makes_it_reproducible_and_off_is_identity() -> None:
    batch = make_batch()
    augmentation = BatchAugmentation((0, 1, 2), 0.1, 0.1)
    first = augmentation(batch, generator=torch.Generator().manual_seed(5))
    second = augmentation(batch, generator=torch.Generator().manual_seed(5))
    for key in ("image", "prior", "label"):
        assert torch.equal(first[key], second[key])
    identity = BatchAugmentation((), 0.0, 0.0)(batch)
    for key in ("image", "prior", "label"):
        assert torch.equal(identity[key], batch[key])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="flip_axes"):
        BatchAugmentation((3,), 0.1, 0.1)
    with pytest.raises(ValueError, match=">= 0"):
        BatchAugmentation((0,), -0.1, 0.1)
