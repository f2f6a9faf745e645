"""Which reduced precision the networks run in at inference, by device.

On CUDA, fp16 autocast. On a CPU, bf16 autocast where the CPU computes bf16 natively (AVX-512
BF16 or AMX, through oneDNN): about 2.3x faster Stage-1 slabs and 2x faster Stage-2 windows on
this project's development machine (one thread, f32_d5), with the same segmentation within the
accuracy guard of the bench. Elsewhere bf16 would be emulated and slower, so the CPU stays fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def cpu_computes_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions natively on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device: torch.device | str, fp16: bool, cpu_bf16: bool) -> torch.dtype | None:
    """The autocast dtype for the networks on `device`, or None for fp32: float16 on CUDA with
    `fp16`, bfloat16 on a CPU with `cpu_bf16` that computes it natively."""
    kind = torch.device(device).type
    if kind == "cuda" and fp16:
        return torch.float16
    if kind == "cpu" and cpu_bf16 and cpu_computes_bf16():
        return torch.bfloat16
    return None


def autocast_to(device_type: str, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to `dtype` on `device_type`; None leaves the precision as it is. (An autocast
    with enabled=False would switch off one already on: Lightning's, in a 16-mixed fit's
    validation.)"""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type, dtype=dtype)
