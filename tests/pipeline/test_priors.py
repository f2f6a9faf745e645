"""The run's Stage-1 priors: the precision they are predicted in, and the tag that names it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascade.inference import precision
from cascade.inference.multiview import write_priors
from cascade.nn.unet2d import UNet2d
from cascade.pipeline.folders import file_tag, priors_tag
from cascade.pipeline.priors import priors_precision
from tests.pipeline.configs import smoke_config

needs_bf16 = pytest.mark.skipif(
    not precision.cpu_computes_bf16(), reason="this CPU has no native bf16"
)


def test_the_tag_names_the_weights_and_the_reduced_precision(tmp_path) -> None:
    weights = tmp_path / "stage1.pt"
    weights.write_bytes(b"some weights")
    assert priors_tag(weights) == file_tag(weights)  # fp32 priors keep the tags caches hold
    assert priors_tag(weights, torch.bfloat16) == f"{file_tag(weights)}-bfloat16"
    assert priors_tag(weights, torch.float16) != priors_tag(weights, torch.bfloat16)
    before = priors_tag(weights, torch.bfloat16)
    weights.write_bytes(b"other weights")  # another Stage 1: other priors
    assert priors_tag(weights, torch.bfloat16) != before


@pytest.mark.parametrize(
    ("cpu_bf16", "native", "expected"),
    [(True, True, torch.bfloat16), (True, False, None), (False, True, None)],
)
def test_cpu_priors_run_in_bf16_only_where_asked_and_native(
    monkeypatch, cpu_bf16, native, expected
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: native)
    cfg = smoke_config(f"model.inference.cpu_bf16={str(cpu_bf16).lower()}")
    assert priors_precision(cfg) is expected


class _Store:
    """A prior store in memory, holding one random case."""

    def __init__(self) -> None:
        self.images = {"case": np.random.default_rng(0).normal(size=(4, 24, 24, 12))}
        self.priors: dict[tuple[str, str], np.ndarray] = {}

    def image(self, case_id: str) -> np.ndarray:
        return self.images[case_id].astype(np.float32)

    def has_prior(self, case_id: str, tag: str) -> bool:
        return (case_id, tag) in self.priors

    def write_prior(self, case_id: str, tag: str, prior: np.ndarray) -> None:
        self.priors[case_id, tag] = prior


@needs_bf16
def test_written_priors_take_the_fast_path_when_asked() -> None:
    torch.manual_seed(0)
    net = UNet2d(4 * 3, 4, filters=8, depth=2, norm="instance", activation="relu")
    store = _Store()
    common = dict(slab_depth=3, views=["axial"], batch_size=2, device="cpu", fp16=False)
    write_priors(net, store, ["case"], "exact", **common)
    write_priors(net, store, ["case"], "fast", **common, cpu_bf16=True)
    exact, fast = store.priors["case", "exact"], store.priors["case", "fast"]
    assert exact.dtype == fast.dtype == np.uint8 and exact.shape == fast.shape == (4, 24, 24, 12)
    steps = np.abs(exact.astype(int) - fast.astype(int))
    assert 0 < steps.max() <= 16  # bf16 ran, and moved no probability by more than 16/255
