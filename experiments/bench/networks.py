"""Training-step speed and memory of both stages, a full-volume 3D U-Net and baselines."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from cascade.data.labels import DEFAULT_SCHEME
from cascade.pipeline.composition import build_loss
from experiments.bench.measure import (
    GIB,
    PeakMemory,
    median,
    parameter_count,
    saved_activation_bytes,
    synchronize,
    time_calls,
)

# The bench measures the four-class BraTS 2020 scheme of the paper.
NUM_CLASSES = DEFAULT_SCHEME.num_classes

FULL_VOLUME = (240, 240, 160)  # a whole BraTS volume, padded to a multiple of 32 in Z
# nnU-Net's plan for BraTS: 6 stages of 32..320 features, 128^3 patches, batch 2
NNUNET_FEATURES = (32, 64, 128, 256, 320, 320)
NNUNET_PATCH = (128, 128, 128)
NNUNET_BATCH = 2


@dataclass(frozen=True)
class StepSizes:
    """Input sizes of one benchmark: batch and spatial shape per stage."""

    stage1_batch: int
    stage1_plane: tuple[int, int]
    stage2_batch: int
    stage2_patch: tuple[int, int, int]
    nnunet_patch: tuple[int, int, int]
    label: str  # how these relate to the configured sizes


def configured_sizes(cfg: DictConfig) -> StepSizes:
    return StepSizes(
        cfg.data.stage1.batch_size,
        tuple(cfg.data.stage1.slab_size),
        cfg.data.stage2.batch_size,
        tuple(cfg.data.stage2.patch_size),
        NNUNET_PATCH,
        "configured",
    )


class TrainStep:
    """One optimiser step of `net` + softmax (+ `mix` with the prior) + `loss`, as the
    LightningModules do it; fp16 autocast with a GradScaler when `fp16` on CUDA."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        inputs: Tensor,
        target: Tensor,
        device: torch.device,
        fp16: bool,
        mix: nn.Module | None = None,
        channels_last: bool = False,
        compiled: bool = False,
    ) -> None:
        self.fp16 = fp16 and device.type == "cuda"
        # channels-last for the input's rank: (B, C, H, W) or (B, C, X, Y, Z)
        self.memory_format = (
            (torch.channels_last if inputs.dim() == 4 else torch.channels_last_3d)
            if channels_last
            else torch.contiguous_format
        )
        self.net = net.to(device, memory_format=self.memory_format)
        self.forward = torch.compile(self.net) if compiled else self.net
        self.mix = mix.to(device) if mix is not None else None
        self.loss = loss.to(device)
        parameters = list(self.net.parameters())
        if self.mix is not None:
            parameters += list(self.mix.parameters())
        self.optimizer = optimizer(parameters)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.fp16)
        self.inputs = inputs.to(device).contiguous(memory_format=self.memory_format)
        self.target = target.to(device)
        self.device = device

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            logits = self.forward(self.inputs)
        probabilities = torch.softmax(logits.float(), dim=1)
        if self.mix is not None:  # Stage 2: the last NUM_CLASSES input channels are the prior
            prior = self.inputs[:, -NUM_CLASSES:].float()
            probabilities = self.mix(probabilities, prior)
        loss = self.loss(probabilities, self.target)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def random_inputs(batch: int, channels: int, spatial: Sequence[int], prior: bool) -> Tensor:
    inputs = torch.randn(batch, channels, *spatial)
    if prior:
        inputs[:, -NUM_CLASSES:] = torch.softmax(inputs[:, -NUM_CLASSES:], dim=1)
    return inputs


def measure_step(
    name: str,
    build: Callable[[], nn.Module],
    cfg: DictConfig,
    batch: int,
    spatial: Sequence[int],
    device: torch.device,
    repeats: int,
    warmup: int,
    setting: str,
    mix: bool = False,
    channels_last: bool = False,
    compiled: bool = False,
) -> dict[str, Any]:
    """Median step time, samples/s, voxels/s and peak memory of one configuration."""
    fp16 = str(cfg.trainer.precision).startswith("16")
    torch.manual_seed(0)
    gc.collect()  # the previous configuration's tensors must not count in this one's peak
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory = PeakMemory(device)
    with memory.measure():
        net = build()
        channels = _in_channels(net)
        inputs = random_inputs(batch, channels, spatial, prior=mix)
        target = torch.randint(NUM_CLASSES, (batch, *spatial))
        step = TrainStep(
            net,
            build_loss(cfg, DEFAULT_SCHEME),
            instantiate(cfg.model.optimizer),
            inputs,
            target,
            device,
            fp16,
            mix=instantiate(cfg.model.mix) if mix else None,
            channels_last=channels_last,
            compiled=compiled,
        )
        start = time.perf_counter()
        step()  # the first step pays for cuDNN autotuning and, when compiled, compilation
        synchronize(device)
        first_step_s = time.perf_counter() - start
        seconds = time_calls(step, repeats, max(warmup - 1, 0), device)
    step_s = median(seconds)
    voxels = batch * int(torch.tensor(spatial).prod())
    precision = "16-mixed" if step.fp16 else "fp32"
    memory_columns: dict[str, Any] = {"peak GiB": memory.bytes / GIB, "memory": memory.kind}
    if device.type == "cpu":
        # freed memory is reused by the allocator, so RSS growth understates the need
        activations = saved_activation_bytes(build, (batch, channels, *spatial), torch.float32)
        memory_columns = {
            "analytic GiB": (activations + 16 * parameter_count(net)) / GIB,
            "RSS delta GiB": memory.bytes / GIB,
            "memory": "analytic (meta: activations + weights, grads, AdamW); RSS lower bound",
        }
    return {
        "name": name,
        "setting": f"{setting}, batch {batch} x {'x'.join(map(str, spatial))}, {precision}",
        "params M": parameter_count(net) / 1e6,
        "ms/step": 1e3 * step_s,
        "samples/s": batch / step_s,
        "Mvoxel/s": voxels / step_s / 1e6,
        "first step s": first_step_s,
        **memory_columns,
    }


def guarded(name: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One row, or a row saying why it failed (out of memory, say), so the others still run."""
    try:
        return measure()
    except (RuntimeError, ValueError, ImportError) as error:  # CUDA OOM is a RuntimeError
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        message = str(error).splitlines()[0] if str(error) else ""
        return {"name": name, "setting": f"failed: {type(error).__name__}: {message[:160]}"}


def _in_channels(net: nn.Module) -> int:
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            return module.in_channels
    raise ValueError(f"{type(net).__name__}: no convolution to read the input channels from")


def analytic_rows(
    name: str, build: Callable[[], nn.Module], batch: int, spatial: Sequence[int], setting: str
) -> dict[str, Any]:
    """Activation memory kept for backward, counted on the meta device (nothing allocated).

    fp32: every saved tensor in float32; fp16: all in float16 (16-mixed lies in between:
    convolutions save fp16, norms and the loss fp32). Parameters, gradients and AdamW state
    add 16 bytes per parameter.
    """
    with torch.device("meta"):
        net = build()
    channels = _in_channels(net)
    shape = (batch, channels, *spatial)
    fp32 = saved_activation_bytes(build, shape, torch.float32)
    fp16 = saved_activation_bytes(build, shape, torch.float16)
    states = 16 * parameter_count(net)
    return {
        "name": name,
        "setting": f"{setting}, batch {batch} x {'x'.join(map(str, spatial))}",
        "params M": parameter_count(net) / 1e6,
        "activations fp32 GiB": fp32 / GIB,
        "activations fp16 GiB": fp16 / GIB,
        "weights+grads+AdamW GiB": states / GIB,
        "memory": "analytic (meta device)",
    }


def monai_attention_unet(cfg_net: DictConfig) -> Callable[[], nn.Module]:
    """MONAI's AttentionUnet at the width and depth of our Stage-2 net (its defaults otherwise)."""
    from monai.networks.nets import AttentionUnet

    widths = [cfg_net.filters * 2**level for level in range(cfg_net.depth)]
    return lambda: AttentionUnet(
        spatial_dims=3,
        in_channels=cfg_net.in_channels,
        out_channels=cfg_net.num_classes,
        channels=widths,
        strides=[2] * (cfg_net.depth - 1),
    )


def plain_conv_unet(
    in_channels: int, num_classes: int, features: Sequence[int], dims: int
) -> Callable[[], nn.Module]:
    """dynamic_network_architectures' PlainConvUNet with nnU-Net's settings (two convolutions
    per stage, instance norm, leaky ReLU), in 2D or 3D."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    stages = len(features)
    return lambda: PlainConvUNet(
        input_channels=in_channels,
        n_stages=stages,
        features_per_stage=list(features),
        conv_op=nn.Conv2d if dims == 2 else nn.Conv3d,
        kernel_sizes=3,
        strides=(1,) + (2,) * (stages - 1),
        n_conv_per_stage=2,
        num_classes=num_classes,
        n_conv_per_stage_decoder=2,
        conv_bias=True,
        norm_op=nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


def nnunet_plain_unet(in_channels: int, num_classes: int) -> Callable[[], nn.Module]:
    """PlainConvUNet as nnU-Net plans it for BraTS (3D full resolution)."""
    return plain_conv_unet(in_channels, num_classes, NNUNET_FEATURES, dims=3)


def plain_unet_2d(cfg_net: DictConfig) -> Callable[[], nn.Module]:
    """A plain 2D U-Net (nnU-Net's PlainConvUNet) of our Stage-1 net's width and depth."""
    features = [cfg_net.filters * 2**level for level in range(cfg_net.depth)]
    return plain_conv_unet(cfg_net.in_channels, cfg_net.num_classes, features, dims=2)


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def network_rows(
    experiments: dict[str, DictConfig],
    sizes: StepSizes,
    device: torch.device,
    repeats: int,
    warmup: int,
    baselines: bool,
) -> list[dict[str, Any]]:
    """Training steps of Stage 1 and Stage 2 per experiment, then the baselines; on a GPU also
    channels-last variants and a full-volume step (the memory the cascade avoids)."""
    cuda = device.type == "cuda"
    layouts = (False, True) if cuda else (False,)
    label = sizes.label
    rows = []

    def step(name, build, cfg, batch, spatial, setting=label, **options) -> None:
        suffix = ", channels_last" if options.get("channels_last") else ""
        rows.append(
            guarded(
                name + suffix,
                lambda: measure_step(
                    name + suffix,
                    build,
                    cfg,
                    batch,
                    spatial,
                    device,
                    repeats,
                    warmup,
                    setting,
                    **options,
                ),
            )
        )

    stage1 = (sizes.stage1_batch, sizes.stage1_plane)
    stage2 = (sizes.stage2_batch, sizes.stage2_patch)
    # (row title, config key, (batch, spatial), residual mix with the prior)
    stages = (
        ("Stage 1 UNet2d", "stage1", stage1, False),
        ("Stage 2 AttentionUNet3d", "stage2", stage2, True),
    )
    for name, cfg in experiments.items():
        for title, key, (batch, spatial), mix in stages:
            for channels_last in layouts:
                step(
                    f"{title} {name}",
                    lambda cfg=cfg, key=key: instantiate(cfg.model[key]),
                    cfg,
                    batch,
                    spatial,
                    mix=mix,
                    channels_last=channels_last,
                )
    cfg = list(experiments.values())[-1]
    name = list(experiments)[-1]
    if cuda:  # a whole volume per step: fits a large GPU only
        step(
            f"Full-volume AttentionUNet3d {name}",
            lambda: instantiate(cfg.model.stage2),
            cfg,
            1,
            FULL_VOLUME,
            "whole 240x240x155 volume padded",
            mix=True,
        )
    if not baselines:
        return rows
    if installed("dynamic_network_architectures"):
        for channels_last in layouts:
            step(
                f"plain 2D U-Net (PlainConvUNet) {name} width",
                plain_unet_2d(cfg.model.stage1),
                cfg,
                *stage1,
                channels_last=channels_last,
            )
    if installed("monai"):
        for channels_last in layouts if cuda else (False, True):
            step(
                f"MONAI AttentionUnet {name} width",
                monai_attention_unet(cfg.model.stage2),
                cfg,
                *stage2,
                mix=True,
                channels_last=channels_last,
            )
    else:
        rows.append({"name": "MONAI AttentionUnet", "setting": "not installed (extra: bench)"})
    if installed("dynamic_network_architectures"):
        step(
            "nnU-Net PlainConvUNet (6 stages, 32..320)",
            nnunet_plain_unet(cfg.model.stage2.in_channels - NUM_CLASSES, NUM_CLASSES),
            cfg,
            NNUNET_BATCH,
            sizes.nnunet_patch,
            label + (" (nnU-Net plans 128^3)" if sizes.nnunet_patch != NNUNET_PATCH else ""),
        )
    else:
        rows.append({"name": "nnU-Net PlainConvUNet", "setting": "not installed (extra: bench)"})
    return rows


def compile_rows(
    cfg: DictConfig, name: str, sizes: StepSizes, device: torch.device, repeats: int, warmup: int
) -> list[dict[str, Any]]:
    """The Stage-2 step eager and under torch.compile (first step = compilation)."""
    rows = []
    for compiled in (False, True):
        row_name = f"Stage 2 AttentionUNet3d {name}" + (", torch.compile" if compiled else "")
        rows.append(
            guarded(
                row_name,
                lambda compiled=compiled, row_name=row_name: measure_step(
                    row_name,
                    lambda: instantiate(cfg.model.stage2),
                    cfg,
                    sizes.stage2_batch,
                    sizes.stage2_patch,
                    device,
                    repeats,
                    warmup,
                    sizes.label,
                    mix=True,
                    compiled=compiled,
                ),
            )
        )
    return rows


def memory_rows(experiments: dict[str, DictConfig]) -> list[dict[str, Any]]:
    """Analytic training memory at the paper's sizes and of a whole-volume 3D U-Net."""
    rows = []
    for name, cfg in experiments.items():
        rows.append(
            analytic_rows(
                f"Stage 2 AttentionUNet3d {name}",
                lambda cfg=cfg: instantiate(cfg.model.stage2),
                cfg.data.stage2.batch_size,
                tuple(cfg.data.stage2.patch_size),
                "configured patch",
            )
        )
        rows.append(
            analytic_rows(
                f"Full-volume AttentionUNet3d {name}",
                lambda cfg=cfg: instantiate(cfg.model.stage2),
                1,
                FULL_VOLUME,
                "whole 240x240x155 volume padded",
            )
        )
    if installed("dynamic_network_architectures"):
        cfg = list(experiments.values())[-1]
        rows.append(
            analytic_rows(
                "nnU-Net PlainConvUNet (6 stages, 32..320)",
                nnunet_plain_unet(cfg.model.stage2.in_channels - NUM_CLASSES, NUM_CLASSES),
                NNUNET_BATCH,
                NNUNET_PATCH,
                "nnU-Net BraTS plan",
            )
        )
    return rows
