"""How OpenMP's waiting threads should wait on a small CPU: the demo's nets under each policy,
one job alone and two jobs sharing the machine.

OpenMP reads its policy once, when torch loads it, so each policy runs in fresh processes.
Each job times the demo's workloads on random inputs (speed does not depend on the weights):
Stage 1's training step (16 slabs of 160^2), Stage 2's training step (2 patches of 48^3) and
Stage 2's sliding-window forward pass (2 windows, bf16 where the CPU computes it natively, as
the run's validation and evaluation do). With `--jobs 2` two jobs start together, each with
every core's thread, as two runs of a sweep on one machine would.

    python -m experiments.bench.wait_policy                      # every policy, 1 and 2 jobs
    python -m experiments.bench.wait_policy --policies passive spin-50k --jobs 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# environment of each policy; libgomp (torch's OpenMP on Linux) counts GOMP_SPINCOUNT in
# spins of roughly 10 ns before a waiting thread sleeps
POLICIES: dict[str, dict[str, str]] = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "default": {},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "spin-10k": {"GOMP_SPINCOUNT": "10000"},
    "spin-50k": {"GOMP_SPINCOUNT": "50000"},
}
POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
WORKLOADS = ("stage1 step", "stage2 step", "stage2 windows")


def _job(repeats: int) -> dict[str, float]:
    """Median seconds of each workload in this process (its policy set by the parent)."""
    import torch
    from hydra.utils import instantiate

    from cascade.cores import available_cores
    from cascade.data.labels import DEFAULT_SCHEME
    from cascade.inference.precision import autocast_dtype
    from cascade.pipeline.composition import build_loss
    from experiments.bench.measure import compose, median, time_calls
    from experiments.bench.networks import TrainStep, random_inputs

    torch.set_num_threads(available_cores())
    torch.manual_seed(0)
    cfg = compose(["+experiment=demo"])
    cpu = torch.device("cpu")
    classes = DEFAULT_SCHEME.num_classes

    def train_step(key: str, batch: int, spatial: tuple[int, ...], mix: bool) -> TrainStep:
        net = instantiate(cfg.model[key])
        channels = cfg.model[key].in_channels
        target = torch.randint(0, classes, (batch, *spatial))
        return TrainStep(
            net,
            build_loss(cfg, DEFAULT_SCHEME),
            instantiate(cfg.model.optimizer),
            random_inputs(batch, channels, spatial, prior=mix),
            target,
            cpu,
            fp16=False,
            mix=instantiate(cfg.model.mix) if mix else None,
        )

    stage1 = train_step(
        "stage1", cfg.data.stage1.batch_size, tuple(cfg.data.stage1.slab_size), mix=False
    )
    patch = tuple(cfg.data.stage2.patch_size)
    stage2 = train_step("stage2", cfg.data.stage2.batch_size, patch, mix=True)
    windows = stage2.inputs[: cfg.model.inference.window_batch_size].clone()
    dtype = autocast_dtype(cpu, False, cfg.model.inference.cpu_bf16)

    @torch.no_grad()
    def forward_windows() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            stage2.net(windows)

    runs = {"stage1 step": stage1, "stage2 step": stage2, "stage2 windows": forward_windows}
    results = {}
    for name, run in runs.items():
        results[name] = median(time_calls(run, repeats, 2, cpu))
    return results


def _environment(policy: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES}
    environment.update(POLICIES[policy])
    return environment


def run_policy(policy: str, jobs: int, repeats: int) -> list[dict[str, float]]:
    """Each job's median seconds per workload, `jobs` processes started together."""
    command = [sys.executable, "-m", "experiments.bench.wait_policy", "--child", str(repeats)]
    processes = [
        subprocess.Popen(command, env=_environment(policy), stdout=subprocess.PIPE, text=True)
        for _ in range(jobs)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"policy {policy}: a job failed with exit code {process.returncode}")
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def table(rows: list[dict[str, Any]]) -> str:
    header = ["policy", "jobs", *(f"{name} ms" for name in WORKLOADS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["policy"], str(row["jobs"])]
        cells += [f"{1e3 * row[name]:.0f}" for name in WORKLOADS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--output", type=Path, help="also write the rows here as JSON")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_job(args.child)))
        return
    rows = []
    for policy in args.policies:
        for jobs in args.jobs:
            started = time.perf_counter()
            per_job = run_policy(policy, jobs, args.repeats)
            # the mean over the jobs: each job's own time is what its user waits for
            row: dict[str, Any] = {"policy": policy, "jobs": jobs}
            row.update({n: sum(r[n] for r in per_job) / jobs for n in WORKLOADS})
            row["wall s"] = time.perf_counter() - started
            rows.append(row)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
