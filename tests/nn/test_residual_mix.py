"""LearnableResidualMix: alpha bounded in [0, 1], exact mean at 0.5, trainable."""

from __future__ import annotations

import pytest
import torch

from cascade.nn.residual_mix import LearnableResidualMix


def probabilities(seed: int, shape=(2, 4, 3, 3, 3)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=generator), dim=1)


def test_init_half_gives_exactly_the_mean() -> None:
    mix = LearnableResidualMix()
    p2, p1 = probabilities(0), probabilities(1)
    assert mix.alpha.item() == 0.5
    assert torch.equal(mix(p2, p1), (p2 + p1) / 2)


@pytest.mark.parametrize("init", [1e-3, 0.2, 0.5, 0.9, 0.999])
def test_init_sets_alpha_and_the_blend(init: float) -> None:
    mix = LearnableResidualMix(init)
    assert mix.alpha.item() == pytest.approx(init, rel=1e-5)
    p2, p1 = probabilities(0), probabilities(1)
    mixed = mix(p2, p1)
    torch.testing.assert_close(mixed, init * p2 + (1 - init) * p1)
    torch.testing.assert_close(mixed.sum(1), torch.ones(2, 3, 3, 3))


@pytest.mark.parametrize("init", [0.0, 1.0, -0.1, 1.5])
def test_init_on_or_outside_the_bounds_is_rejected(init: float) -> None:
    with pytest.raises(ValueError, match="init"):
        LearnableResidualMix(init)


def test_gradient_reaches_alpha() -> None:
    mix = LearnableResidualMix(0.5)
    p2, p1 = probabilities(0), probabilities(1)
    (mix(p2, p1) * p2).sum().backward()
    # d/dlogit of sum(mixed * p2) = alpha (1 - alpha) sum(p2 (p2 - p1))
    expected = 0.25 * (p2 * (p2 - p1)).sum()
    assert mix.logit.grad is not None
    torch.testing.assert_close(mix.logit.grad, expected)


@pytest.mark.parametrize("init", [1e-3, 0.999])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_alpha_stays_in_unit_interval_after_large_steps(init: float, direction: float) -> None:
    mix = LearnableResidualMix(init)
    optimizer = torch.optim.SGD(mix.parameters(), lr=1e4)
    p2, p1 = probabilities(0), probabilities(1)
    for _ in range(20):
        optimizer.zero_grad()
        # direction 1 rewards p2 (alpha up), -1 rewards p1 (alpha down)
        (-direction * (mix(p2, p1) * (p2 - p1)).sum()).backward()
        optimizer.step()
        assert 0.0 <= mix.alpha.item() <= 1.0
    mixed = mix(p2, p1)
    assert torch.isfinite(mixed).all()
    assert (mixed >= 0).all()


def test_alpha_can_move_back_from_near_a_bound() -> None:
    mix = LearnableResidualMix(0.01)
    optimizer = torch.optim.SGD(mix.parameters(), lr=10.0)
    p2, p1 = probabilities(0), probabilities(1)
    for _ in range(50):
        optimizer.zero_grad()
        (-(mix(p2, p1) * (p2 - p1)).sum()).backward()
        optimizer.step()
    assert mix.alpha.item() > 0.5
