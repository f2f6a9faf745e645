"""Stage2Module(compile=True): the compiled net computes what the plain one does, under the
plain net's parameter names, so checkpoints load either way."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from tests.lit.modules import tiny_stage2


def test_compiled_net_keeps_names_and_results() -> None:
    plain, compiled = tiny_stage2(compile=False), tiny_stage2(compile=True)
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
