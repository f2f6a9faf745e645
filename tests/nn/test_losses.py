import pytest
import torch
import torch.nn.functional as F

from cascade.nn.losses import DiceCELoss


def _target() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 4, (2, 8, 8, 8))


def _one_hot(target: torch.Tensor) -> torch.Tensor:
    return F.one_hot(target, 4).movedim(-1, 1).float()


def test_perfect_prediction_costs_nothing() -> None:
    target = _target()
    loss = DiceCELoss([1, 1, 1, 2.5])(_one_hot(target), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_uniform_prediction_has_known_cross_entropy() -> None:
    target = _target()
    uniform = torch.full((2, 4, 8, 8, 8), 0.25)
    loss = DiceCELoss([1, 1, 1, 1], dice_weight=0.0)(uniform, target)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-5)


def _drop_class(target: torch.Tensor, cls: int, count: int) -> torch.Tensor:
    """One-hot prediction that misses `count` voxels of class `cls` (only that channel changes)."""
    probabilities = _one_hot(target)
    positions = (target == cls).nonzero()[:count]
    probabilities[positions[:, 0], cls, positions[:, 1], positions[:, 2], positions[:, 3]] = 0
    return probabilities


def test_class_weights_scale_the_dice_term() -> None:
    target = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    target[:, :2] = 1  # classes 1 and 3 have the same voxel count
    target[:, 2:4] = 3
    target[:, 4:6] = 2
    loss = DiceCELoss([1, 1, 1, 2.5], ce_weight=0.0)
    error_in_necrosis = loss(_drop_class(target, 1, 20), target)
    error_in_enhancing = loss(_drop_class(target, 3, 20), target)
    assert error_in_necrosis.item() > 0
    assert error_in_enhancing.item() / error_in_necrosis.item() == pytest.approx(2.5, rel=1e-4)


def test_gradients_flow_and_float32_under_autocast() -> None:
    target = _target()
    logits = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probabilities = torch.softmax(logits.bfloat16(), dim=1)
        loss = DiceCELoss([1, 1, 1, 2.5])(probabilities, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_rejects_mismatched_weights_and_zero_terms() -> None:
    with pytest.raises(ValueError, match="class weights"):
        target = torch.zeros(1, 2, 2, dtype=torch.long)
        DiceCELoss([1, 1, 1])(torch.full((1, 4, 2, 2), 0.25), target)
    with pytest.raises(ValueError, match="not both 0"):
        DiceCELoss([1, 1, 1, 1], dice_weight=0.0, ce_weight=0.0)
