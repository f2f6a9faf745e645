"""One training step of the demo's nets on a CPU, contiguous against channels-last memory format.

The steps `model.channels_last` speeds up: Stage 1 on a batch of slabs, Stage 2 (with the residual
mix) on a batch of patches, at the demo's sizes and loss, on random inputs (speed does not depend
on the weights), with every core the job may use.

    python -m experiments.bench.train_layouts [--repeats 6] [Hydra overrides]
"""

from __future__ import annotations

import argparse

import torch
from hydra.utils import instantiate

from cascade.cores import available_cores
from cascade.data.labels import DEFAULT_SCHEME
from cascade.pipeline.composition import build_loss
from experiments.bench.measure import compose, median, time_calls
from experiments.bench.networks import TrainStep, random_inputs


def step_seconds(cfg, key: str, channels_last: bool, repeats: int) -> float:
    """Median seconds of one optimiser step of `cfg.model[key]` at its stage's batch and size."""
    torch.manual_seed(0)
    data = cfg.data[key]
    batch = int(data.batch_size)
    spatial = tuple(data.slab_size if key == "stage1" else data.patch_size)
    mix = key == "stage2"
    step = TrainStep(
        instantiate(cfg.model[key]),
        build_loss(cfg, DEFAULT_SCHEME),
        instantiate(cfg.model.optimizer),
        random_inputs(batch, int(cfg.model[key].in_channels), spatial, prior=mix),
        torch.randint(0, DEFAULT_SCHEME.num_classes, (batch, *spatial)),
        torch.device("cpu"),
        fp16=False,
        mix=instantiate(cfg.model.mix) if mix else None,
        channels_last=channels_last,
    )
    return median(time_calls(step, repeats, 2, torch.device("cpu")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: the demo)")
    args = parser.parse_args(argv)
    torch.set_num_threads(available_cores())
    cfg = compose(["+experiment=demo", *args.overrides])
    print(f"{torch.get_num_threads()} threads, median of {args.repeats} steps")
    print("| step | contiguous s | channels-last s | ratio |\n|---|---|---|---|")
    for key in ("stage1", "stage2"):
        plain, last = (step_seconds(cfg, key, layout, args.repeats) for layout in (False, True))
        print(f"| {key} | {plain:.3f} | {last:.3f} | {last / plain:.2f} |")


if __name__ == "__main__":
    main()
