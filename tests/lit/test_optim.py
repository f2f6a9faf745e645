import pytest
import torch

from cascade.lit.optim import warmup_cosine


def _learning_rates(total_steps: int, **settings) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    schedule = warmup_cosine(optimizer, total_steps, **settings)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_the_rate_climbs_linearly_to_its_peak_then_decays_to_eta_min() -> None:
    rates = _learning_rates(100, warmup_fraction=0.1, eta_min=1e-6)
    assert rates[0] == pytest.approx(1e-3)
    steps = [b - a for a, b in zip(rates[:10], rates[1:11], strict=True)]
    assert steps == pytest.approx([steps[0]] * 10) and steps[0] > 0
    assert max(rates) == pytest.approx(1e-2) and rates.index(max(rates)) == 10
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] < 1e-5


def test_without_warm_up_it_is_the_plain_cosine_over_the_fit() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50, eta_min=1e-6)
    expected = []
    for _ in range(50):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert _learning_rates(50, eta_min=1e-6) == pytest.approx(expected)


def test_a_warm_up_of_the_whole_fit_is_refused() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    with pytest.raises(ValueError, match="warmup_fraction"):
        warmup_cosine(optimizer, 10, warmup_fraction=1.0)
