"""cpu_bf16=True: both LightningModules validate on a CPU under bf16 autocast, as the predictor
runs there, and train in full precision; cpu_bf16=False validates in fp32."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

import cascade.inference.precision as precision
from cascade.lit.stage1 import Stage1Module
from cascade.nn.losses import DiceCELoss
from cascade.nn.unet2d import UNet2d
from tests.lit.modules import tiny_stage2


class _AutocastSpy(nn.Module):
    """Wraps a net; records the CPU autocast dtype (None: off) of each of its calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[torch.dtype | None] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enabled = torch.is_autocast_enabled("cpu")
        self.seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
        return self.net(x)


@pytest.fixture(autouse=True)
def _bf16_cpu(monkeypatch) -> None:
    # as on a CPU with native bf16, whatever this one has: autocast then runs either way
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: True)


def _stage1(cpu_bf16: bool) -> Stage1Module:
    torch.manual_seed(0)
    net = _AutocastSpy(UNet2d(20, 4, filters=4, depth=2, norm="instance", activation="relu"))
    module = Stage1Module(
        net=net,
        loss=DiceCELoss([1.0, 1.0, 1.0, 2.5]),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
        views=("axial",),
        cpu_bf16=cpu_bf16,
    )
    module.log = lambda *args, **kwargs: None  # no Trainer to log to
    return module


@pytest.mark.parametrize(("cpu_bf16", "expected"), [(True, torch.bfloat16), (False, None)])
def test_stage1_validates_in_the_predictors_precision(cpu_bf16, expected) -> None:
    module = _stage1(cpu_bf16)
    case = {"image": torch.randn(1, 4, 12, 12, 6), "label": torch.randint(0, 4, (1, 12, 12, 6))}
    module.validation_step(case, 0)
    assert module.net.seen and set(module.net.seen) == {expected}
    module.net.seen.clear()
    slabs = {"image": torch.randn(2, 20, 16, 16), "label": torch.randint(0, 4, (2, 16, 16))}
    module.training_step(slabs, 0).backward()
    assert module.net.seen == [None]  # training stays in full precision


@pytest.mark.parametrize(("cpu_bf16", "expected"), [(True, torch.bfloat16), (False, None)])
def test_stage2_validates_in_the_predictors_precision(cpu_bf16, expected) -> None:
    module = tiny_stage2(cpu_bf16=cpu_bf16)
    module.net = _AutocastSpy(module.net)
    module.log = lambda *args, **kwargs: None
    prior = torch.zeros(1, 4, 12, 12, 12)
    prior[:, 0] = 1.0
    prior[:, 2, 3:9, 3:9, 3:9], prior[:, 0, 3:9, 3:9, 3:9] = 1.0, 0.0  # a tumor box to run on
    label = prior.argmax(1)
    module.validation_step(
        {"image": torch.randn(1, 4, 12, 12, 12), "prior": prior, "label": label}, 0
    )
    assert module.net.seen and set(module.net.seen) == {expected}
    module.net.seen.clear()
    batch = {
        "image": torch.randn(2, 4, 8, 8, 8),
        "prior": prior[:, :, :8, :8, :8].expand(2, -1, -1, -1, -1),
        "label": label[:, :8, :8, :8].expand(2, -1, -1, -1),
    }
    module.training_step(batch, 0).backward()
    assert module.net.seen == [None]


def test_validation_keeps_an_autocast_already_on() -> None:
    # a 16-mixed fit on a GPU: Lightning's autocast is on around validation, and a module that
    # asks for no precision of its own must leave it on (bf16 on the CPU stands in for it)
    stage1 = _stage1(cpu_bf16=False)
    case = {"image": torch.randn(1, 4, 12, 12, 6), "label": torch.randint(0, 4, (1, 12, 12, 6))}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stage1.validation_step(case, 0)
    assert stage1.net.seen and set(stage1.net.seen) == {torch.bfloat16}
    stage2 = tiny_stage2(cpu_bf16=False)
    stage2.net = _AutocastSpy(stage2.net)
    stage2.log = lambda *args, **kwargs: None
    prior = torch.zeros(1, 4, 12, 12, 12)
    prior[:, 2] = 1.0
    batch = {"image": torch.randn(1, 4, 12, 12, 12), "prior": prior, "label": prior.argmax(1)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stage2.validation_step(batch, 0)
    assert stage2.net.seen and set(stage2.net.seen) == {torch.bfloat16}
