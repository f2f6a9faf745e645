import pytest
import torch

from cascade.inference.sliding import (
    evaluated_region,
    gaussian_importance,
    sliding_window_predict,
    window_starts,
)

PATCH = (16, 16, 16)


class CountingIdentity:
    """predict_patches that returns its first channels and records every window it saw."""

    def __init__(self, num_outputs: int, dtype: torch.dtype | None = None) -> None:
        self.num_outputs = num_outputs
        self.dtype = dtype
        self.windows = 0
        self.calls = 0

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.windows += patches.shape[0]
        output = patches[:, : self.num_outputs].clone()
        return output if self.dtype is None else output.to(self.dtype)


def test_window_starts_regular_grid_with_last_flush():
    assert window_starts(40, 16, 0.5) == [0, 8, 16, 24]
    assert window_starts(41, 16, 0.5) == [0, 8, 16, 24, 25]
    assert window_starts(16, 16, 0.5) == [0]
    assert window_starts(33, 16, 0.0) == [0, 16, 17]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(40, 16, 1.0)


def test_gaussian_importance_peak_symmetry_and_sigma():
    weights = gaussian_importance((16, 12, 9))
    assert weights.shape == (16, 12, 9) and weights.dtype == torch.float32
    assert weights.max().item() == pytest.approx(1.0)
    assert weights.min().item() > 0
    torch.testing.assert_close(weights, weights.flip(0).flip(1).flip(2))
    # Along x through the centre plane: one sigma (= 16/8 = 2 voxels) from the centre 7.5.
    profile = gaussian_importance((16, 1, 1))[:, 0, 0]
    ratio = (profile[9] / profile[7]).item()  # positions 1.5 and 0.5 voxels from the centre
    assert ratio == pytest.approx(torch.exp(torch.tensor(-0.5 * (1.5**2 - 0.5**2) / 4)).item())


@pytest.mark.parametrize("weighting", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape",
    [(10, 13, 7), (16, 16, 16), (27, 33, 21), (16, 40, 9)],
    ids=["smaller", "equal", "larger-odd", "mixed"],
)
def test_identity_reconstructs_volume(weighting, shape):
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn((3, *shape), generator=generator)
    predict = CountingIdentity(num_outputs=2)
    output = sliding_window_predict(
        predict, volume, PATCH, overlap=0.5, batch_size=3, num_outputs=2, weighting=weighting
    )
    assert output.shape == (2, *shape) and output.dtype == torch.float32
    torch.testing.assert_close(output, volume[:2], rtol=1e-5, atol=1e-5)


def test_window_count_and_batches():
    volume = torch.zeros((1, 27, 33, 21))
    predict = CountingIdentity(num_outputs=1)
    sliding_window_predict(predict, volume, PATCH, overlap=0.5, batch_size=4, num_outputs=1)
    # Starts per axis: 27 -> 0,8,11; 33 -> 0,8,16,17; 21 -> 0,5.
    assert predict.windows == 3 * 4 * 2
    assert predict.calls == 6  # 24 windows in batches of 4


def test_half_precision_outputs_accumulate_in_float32():
    volume = torch.rand((2, 20, 20, 20)) * 100
    predict = CountingIdentity(num_outputs=2, dtype=torch.float16)
    output = sliding_window_predict(predict, volume, PATCH, 0.5, 2, 2)
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, volume.half().float(), rtol=1e-5, atol=1e-4)


def test_roi_restricts_windows_and_covers_roi():
    volume = torch.randn((2, 64, 48, 40), generator=torch.Generator().manual_seed(1))
    roi = ((20, 30), (5, 25), (30, 40))
    predict = CountingIdentity(num_outputs=2)
    output = sliding_window_predict(predict, volume, PATCH, 0.5, 4, 2, roi=roi)
    full = CountingIdentity(num_outputs=2)
    sliding_window_predict(full, volume, PATCH, 0.5, 4, 2)
    # x: roi of 10 grows to one patch; y: 20 voxels -> starts 0, 4; z: flush with the border.
    assert predict.windows == 1 * 2 * 1 < full.windows
    region = evaluated_region(volume.shape[1:], PATCH, roi)
    assert region == ((17, 33), (5, 25), (24, 40))
    inside = (slice(None), *(slice(a, b) for a, b in region))
    torch.testing.assert_close(output[inside], volume[inside], rtol=1e-5, atol=1e-5)
    outside = torch.ones(volume.shape[1:], dtype=torch.bool)
    outside[inside[1:]] = False
    assert torch.all(output[:, outside] == 0)


def test_roi_covering_the_volume_equals_no_roi():
    volume = torch.randn((2, 24, 20, 18), generator=torch.Generator().manual_seed(2))

    def smooth(patches: torch.Tensor) -> torch.Tensor:
        # Position-dependent output, so the weighting of the overlaps matters.
        return torch.nn.functional.avg_pool3d(patches, 3, stride=1, padding=1)

    whole = sliding_window_predict(smooth, volume, PATCH, 0.5, 2, 2)
    with_roi = sliding_window_predict(smooth, volume, PATCH, 0.5, 2, 2, roi=((0, 24),) * 3)
    torch.testing.assert_close(with_roi, whole)


def test_roi_clipped_to_a_small_volume():
    volume = torch.randn((1, 10, 20, 12))
    output = sliding_window_predict(
        CountingIdentity(1), volume, PATCH, 0.5, 2, 1, roi=((2, 4), (0, 3), (5, 50))
    )
    assert evaluated_region(volume.shape[1:], PATCH, ((2, 4), (0, 3), (5, 50))) == (
        (0, 10),
        (0, 16),
        (0, 12),
    )
    torch.testing.assert_close(output[:, :, :16], volume[:, :, :16])
    assert torch.all(output[:, :, 16:] == 0)


def test_wrong_output_shape_is_reported():
    with pytest.raises(ValueError, match="predict_patches returned shape"):
        sliding_window_predict(lambda x: x[:, :1], torch.zeros((2, 16, 16, 16)), PATCH, 0.5, 1, 2)
