"""Ways to run the paper-size nets faster on a CPU, each timed against eager fp32 in one run.

Stage 1 is the f32_d5 UNet2d on one 192^2 slab (what the predictor feeds it on a CPU, one slab
per forward pass); Stage 2 the f32_d5 AttentionUNet3d on one 96^3 window. Untrained nets: speed
does not depend on the weights, and 'max |logit diff|' says how far each candidate's output is
from eager fp32 on the same input.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from cascade.inference.precision import cpu_computes_bf16
from experiments.bench.measure import median, time_calls
from experiments.bench.networks import installed

CPU = torch.device("cpu")


def _bf16() -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _candidate_row(
    name: str,
    setting: str,
    run: Callable[[], Tensor],
    reference: Tensor | None,
    repeats: int,
    baseline_ms: float | None,
    first_call_s: float | None = None,
) -> dict[str, Any]:
    output = run()
    milliseconds = 1e3 * median(time_calls(run, repeats, 1, CPU))
    row: dict[str, Any] = {"name": name, "setting": setting, "ms": milliseconds}
    if baseline_ms is not None:
        row["x eager fp32"] = milliseconds / baseline_ms
    if reference is not None and output.shape == reference.shape:
        row["max |logit diff|"] = float((output.float() - reference).abs().max())
    if first_call_s is not None:
        row["first call s"] = first_call_s
    return row


def _compiled(net: nn.Module, example: Tensor, bf16: bool) -> tuple[Callable[[], Tensor], float]:
    compiled = torch.compile(net)
    context = _bf16 if bf16 else contextlib.nullcontext

    def run() -> Tensor:
        with context():
            return compiled(example)

    start = time.perf_counter()
    run()
    return run, time.perf_counter() - start


def _onnx_runtime(net: nn.Module, example: Tensor, folder: Path) -> Callable[[], Tensor] | None:
    """ONNX Runtime's CPU provider on the net exported here (TorchScript exporter)."""
    if not (installed("onnxruntime") and installed("onnx")):
        return None
    import onnxruntime

    path = folder / "net.onnx"
    torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    array = example.numpy()
    return lambda: torch.from_numpy(session.run(None, {name: array})[0])


def candidate_rows(
    experiment: DictConfig, name: str, repeats: int = 3, compile: bool = True
) -> list[dict[str, Any]]:
    """Stage-1 slab and Stage-2 window of `experiment`'s nets: eager fp32, channels_last, bf16
    autocast (where the CPU has it natively), torch.compile (with `compile`), ONNX Runtime (if
    installed) and the brain's box instead of the training canvas."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    stage1 = instantiate(experiment.model.stage1).eval()
    stage2 = instantiate(experiment.model.stage2).eval()
    channels = int(experiment.model.stage1.in_channels)
    canvas = tuple(int(size) for size in experiment.data.stage1.slab_size)
    slab = torch.randn(1, channels, *canvas)
    # the real case's brain box (153 x 179 in-plane, axial) rounded up to a multiple of 16
    brain = torch.randn(1, channels, 160, 192)
    patch = tuple(int(size) for size in experiment.data.stage2.patch_size)
    window = torch.randn(1, int(experiment.model.stage2.in_channels), *patch)
    bf16 = cpu_computes_bf16()
    label = f"{name}, {threads} thread(s)"
    rows = []
    with torch.inference_mode():
        reference = stage1(slab)
        eager = _candidate_row(
            "Stage 1 slab: eager fp32 (--exact)",
            f"{label}, 1 x {'x'.join(map(str, canvas))}",
            lambda: stage1(slab),
            None,
            repeats,
            None,
        )
        base = eager["ms"]
        rows.append({**eager, "x eager fp32": 1.0})
        slab_last = slab.contiguous(memory_format=torch.channels_last)
        stage1_last = stage1.to(memory_format=torch.channels_last)
        rows.append(
            _candidate_row(
                "Stage 1 slab: channels_last fp32",
                label,
                lambda: stage1_last(slab_last),
                reference,
                repeats,
                base,
            )
        )
        stage1.to(memory_format=torch.contiguous_format)
        if bf16:

            def bf16_slab(tensor: Tensor = slab) -> Tensor:
                with _bf16():
                    return stage1(tensor)

            rows.append(
                _candidate_row(
                    "Stage 1 slab: bf16 autocast (the fast CPU path)",
                    label,
                    bf16_slab,
                    reference,
                    repeats,
                    base,
                )
            )
            rows.append(
                _candidate_row(
                    "Stage 1 slab: bf16, brain box 160x192 instead of the canvas",
                    f"{label}; changes what the instance norms see, not adopted",
                    lambda: bf16_slab(brain),
                    None,
                    repeats,
                    base,
                )
            )
        for use_bf16 in ((False, True) if bf16 else (False,)) if compile else ():
            run, first = _compiled(stage1, slab, use_bf16)
            rows.append(
                _candidate_row(
                    f"Stage 1 slab: torch.compile, {'bf16' if use_bf16 else 'fp32'}",
                    f"{label}; first call compiles (C++ compiler needed)",
                    run,
                    reference,
                    repeats,
                    base,
                    first,
                )
            )
        with tempfile.TemporaryDirectory(prefix="cascade-onnx-") as folder:
            onnx = _onnx_runtime(stage1, slab, Path(folder))
            if onnx is not None:
                rows.append(
                    _candidate_row(
                        "Stage 1 slab: ONNX Runtime fp32 (CPU provider)",
                        label,
                        onnx,
                        reference,
                        repeats,
                        base,
                    )
                )
        reference = stage2(window)
        eager = _candidate_row(
            "Stage 2 window: eager fp32 (--exact)",
            f"{label}, 1 x {'x'.join(map(str, patch))}",
            lambda: stage2(window),
            None,
            2,
            None,
        )
        rows.append({**eager, "x eager fp32": 1.0})
        if bf16:

            def bf16_window() -> Tensor:
                with _bf16():
                    return stage2(window)

            rows.append(
                _candidate_row(
                    "Stage 2 window: bf16 autocast (the fast CPU path)",
                    label,
                    bf16_window,
                    reference,
                    2,
                    eager["ms"],
                )
            )
    return rows
