"""channels_last=True: both LightningModules train their net in channels-last memory format and
compute what the contiguous net computes, under the same parameter names."""

from __future__ import annotations

from functools import partial

import torch

from cascade.lit.stage1 import Stage1Module
from cascade.nn.losses import DiceCELoss
from cascade.nn.unet2d import UNet2d
from tests.lit.modules import tiny_stage2


def _stage1(channels_last: bool) -> Stage1Module:
    torch.manual_seed(0)
    return Stage1Module(
        net=UNet2d(20, 4, filters=4, depth=3, norm="instance", activation="leaky_relu"),
        loss=DiceCELoss([1.0, 1.0, 1.0, 2.5]),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
        channels_last=channels_last,
    )


def _loss_and_gradients(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.log = lambda *args, **kwargs: None  # no Trainer to log to
    module.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters()}


def _same_step(plain, last, batch) -> None:
    assert list(last.state_dict()) == list(plain.state_dict())
    loss, gradients = _loss_and_gradients(plain, batch)
    loss_last, gradients_last = _loss_and_gradients(last, batch)
    assert torch.allclose(loss_last, loss, atol=1e-5)
    for name, gradient in gradients.items():
        assert torch.allclose(gradients_last[name], gradient, atol=1e-5, rtol=1e-4), name


def test_stage1_trains_channels_last_and_computes_the_same() -> None:
    plain, last = _stage1(False), _stage1(True)
    first_conv = next(p for p in last.net.parameters() if p.dim() == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)
    assert not first_conv.is_contiguous()
    batch = {"image": torch.randn(2, 20, 32, 32), "label": torch.randint(0, 4, (2, 32, 32))}
    _same_step(plain, last, batch)


def test_stage2_trains_channels_last_and_computes_the_same() -> None:
    plain, last = tiny_stage2(channels_last=False), tiny_stage2(channels_last=True)
    first_conv = next(p for p in last.net.parameters() if p.dim() == 5)
    assert first_conv.is_contiguous(memory_format=torch.channels_last_3d)
    batch = {
        "image": torch.randn(2, 4, 8, 8, 8),
        "prior": torch.softmax(torch.randn(2, 4, 8, 8, 8), dim=1),
        "label": torch.randint(0, 4, (2, 8, 8, 8)),
    }
    _same_step(plain, last, batch)
