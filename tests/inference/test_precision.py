"""The fast CPU path (bf16 autocast) against the exact fp32 path, on tiny real nets."""

import numpy as np
import pytest
import torch

from cascade.data.discovery import discover_cases
from cascade.data.preprocess import preprocess_case
from cascade.inference import precision
from cascade.inference.cascade import mirrored_softmax
from cascade.inference.multiview import predict_prior
from cascade.inference.precision import autocast_dtype
from cascade.nn.attention_unet3d import AttentionUNet3d
from cascade.nn.unet2d import UNet2d
from tests.inference.test_cascade import SHAPE, SLAB_DEPTH, VIEWS, make_predictor

needs_bf16 = pytest.mark.skipif(
    not precision.cpu_computes_bf16(), reason="this CPU has no native bf16"
)


def tiny_nets():
    torch.manual_seed(0)
    stage1 = UNet2d(4 * SLAB_DEPTH, 4, filters=8, depth=3, norm="instance", activation="relu")
    stage2 = AttentionUNet3d(8, 4, filters=4, depth=2, norm="instance", activation="relu")
    return stage1, stage2


@pytest.fixture
def image(write_case, tmp_path):
    write_case(tmp_path / "in", shape=SHAPE)
    case = discover_cases(tmp_path / "in")[0]
    predictor = make_predictor(*tiny_nets())
    volume, _, _ = preprocess_case(case, predictor.preprocessing)
    return torch.from_numpy(np.array(volume, dtype=np.float32))


def test_reduced_precision_by_device(monkeypatch):
    assert autocast_dtype("cuda", fp16=True, cpu_bf16=False) is torch.float16
    assert autocast_dtype("cuda", fp16=False, cpu_bf16=True) is None
    assert autocast_dtype("cpu", fp16=True, cpu_bf16=False) is None
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: False)
    # emulated bf16 would be slower than fp32: the CPU stays exact
    assert autocast_dtype("cpu", fp16=True, cpu_bf16=True) is None
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: True)
    assert autocast_dtype("cpu", fp16=False, cpu_bf16=True) is torch.bfloat16


@needs_bf16
def test_fast_stage1_prior_is_close_to_the_exact_one(image):
    stage1, _ = tiny_nets()
    stage1.eval()
    common = dict(slab_depth=SLAB_DEPTH, views=VIEWS, batch_size=4, device="cpu", fp16=False)
    exact = predict_prior(stage1, image, **common)
    fast = predict_prior(stage1, image, **common, cpu_bf16=True)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    difference = (fast - exact).abs()
    assert 0 < float(difference.max()) < 0.05  # bf16 ran, and changed little
    assert torch.allclose(fast.sum(0), torch.ones_like(fast[0]), atol=1e-4)


@needs_bf16
def test_fast_windows_are_close_to_the_exact_ones():
    _, stage2 = tiny_nets()
    windows = torch.randn(2, 8, 16, 16, 16)
    with torch.inference_mode():
        exact = mirrored_softmax(stage2.eval(), windows, mirror=True, autocast=None)
        fast = mirrored_softmax(stage2, windows, mirror=True, autocast=torch.bfloat16)
    assert fast.dtype == torch.float32
    assert 0 < float((fast - exact).abs().max()) < 0.05


def test_fast_cascade_segments_as_the_exact_one(image):
    results = {}
    for cpu_bf16 in (False, True):
        predictor = make_predictor(*tiny_nets(), cpu_bf16=cpu_bf16)
        results[cpu_bf16] = predictor.predict_arrays(image, roi=((4, 28), (4, 28), (2, 22)))
    exact, fast = results[False], results[True]
    assert exact.stage2_box == fast.stage2_box
    assert float((fast.probabilities - exact.probabilities).abs().max()) < 0.05
    assert np.mean(fast.classes == exact.classes) > 0.97
