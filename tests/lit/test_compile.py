"""Stage2Module(compile=True): the compiled net computes what the plain one does, under the
plain net's parameter names, so checkpoints load either way."""

from __future__ import annotations

from functools import partial

import torch
from torch._dynamo.utils import counters

from cascade.lit.stage2 import Stage2Module
from cascade.nn.attention_unet3d import AttentionUNet3d
from cascade.nn.losses import DiceCELoss
from cascade.nn.residual_mix import LearnableResidualMix


def make_module(compile: bool) -> Stage2Module:
    torch.manual_seed(0)
    return Stage2Module(
        net=AttentionUNet3d(8, 4, filters=2, depth=2, norm="instance", activation="leaky_relu"),
        mix=LearnableResidualMix(0.5),
        loss=DiceCELoss([1.0, 1.0, 1.0, 1.0]),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
        patch_size=(8, 8, 8),
        overlap=0.5,
        window_batch_size=1,
        compile=compile,
    )


def test_compiled_net_keeps_names_and_results() -> None:
    plain, compiled = make_module(compile=False), make_module(compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.load_state_dict(plain.state_dict())
    image = torch.randn(1, 4, 8, 8, 8)
    prior = torch.softmax(torch.randn(1, 4, 8, 8, 8), dim=1)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        expected = plain(image, prior)
        assert counters["stats"]["unique_graphs"] == 0
        result = compiled(image, prior)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled net really ran compiled
    assert torch.allclose(result, expected, atol=1e-5)
