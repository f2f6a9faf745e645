"""python -m experiments.bench [--quick] [--full] [--case DIR] [--out DIR] [--sections ...] [...]

Measures preprocessing, data loading, training steps, inference and profiles of the hot paths,
and writes DIR/bench.json and DIR/bench.md. Sizes and settings come from conf/ (Hydra overrides
after the options apply to every config composed here). On a machine without a GPU the
networks run at reduced sizes, labelled in each row; paper-size memory is counted analytically.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra.utils import instantiate

from cascade.data.discovery import discover_cases
from cascade.data.errors import CaseError
from cascade.data.labels import DEFAULT_SCHEME
from cascade.pipeline.composition import build_loss
from experiments.bench import cpu_candidates, inference, loading, networks, pipeline
from experiments.bench.measure import compose, machine, median, time_calls
from experiments.bench.report import write_report

SECTIONS = (
    "preprocessing",
    "loading",
    "networks",
    "inference",
    "profile",
    "compile",
    "candidates",
    "pipeline",
)
# sections that run only when named
ON_REQUEST = ("compile", "candidates", "pipeline")
PRIOR_TAG = "bench"

# Reduced sizes where no GPU is present, so a step takes seconds, not minutes.
CPU_SIZES = networks.StepSizes(8, (128, 128), 2, (48, 48, 48), (64, 64, 64), "CPU-reduced")
QUICK_SIZES = networks.StepSizes(2, (64, 64), 2, (32, 32, 32), (64, 64, 64), "quick (tiny)")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, about a minute")
    parser.add_argument(
        "--full",
        action="store_true",
        help="on a CPU: paper-size nets and nnU-Net's 8x mirroring at inference too (slow)",
    )
    parser.add_argument(
        "--case",
        type=Path,
        default=None,
        help="a labelled BraTS case folder to time inference on instead of a synthetic case "
        "(its tumor sets the Stage-2 region)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a trained cascade.ckpt: with --case, its exact and fast CPU predictions of the "
        "case and the fast path's Dice against the exact one (the accuracy guard)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="where the networks run (default: cuda when present, else cpu)",
    )
    parser.add_argument(
        "--cases", type=int, default=None, help="synthetic cases (default: 3, --quick 2)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="pipeline: timed training steps per stage (default: 6 on a CPU, 50 on a GPU)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="pipeline: untimed steps before them (default: 2 on a CPU, 10 on a GPU)",
    )
    parser.add_argument("--out", type=Path, default=Path("experiments/bench"))
    parser.add_argument("--workdir", type=Path, default=None, help="synthetic data (default: temp)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        default=[section for section in SECTIONS if section not in ON_REQUEST],
        help=f"some of: {', '.join(SECTIONS)}; compile (torch.compile of the Stage-2 step) "
        "and candidates (ways to run the nets faster on a CPU) run only when named",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. seed=1")
    args = parser.parse_args(argv)
    # `--sections a b key=value`: the list swallows the overrides that follow it
    args.overrides = [*args.overrides, *(name for name in args.sections if "=" in name)]
    args.sections = [name for name in args.sections if "=" not in name]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    quick = args.quick
    base = ["+experiment=smoke"] if quick else []
    cfg = compose([*base, *args.overrides])
    smoke = compose(["+experiment=smoke", *args.overrides])
    names = ("smoke",) if quick else ("f24_d4", "f32_d5")
    experiments = {name: compose([f"+experiment={name}", *args.overrides]) for name in names}
    if device.type == "cuda":
        sizes = networks.configured_sizes(experiments[names[-1]])
    else:
        sizes = QUICK_SIZES if quick else CPU_SIZES
    repeats, warmup = (10, 3) if device.type == "cuda" else (1, 1) if quick else (2, 1)
    # as the Trainer does with the same setting
    torch.backends.cudnn.benchmark = bool(cfg.trainer.benchmark)
    notes = [
        f"synthetic cases of {'x'.join(map(str, cfg.synthetic.shape))} voxels "
        "(cascade.synthesis), read from .nii.gz and cached as the training run does",
        "networks are untrained: speed does not depend on the weights",
    ]
    if device.type == "cpu":
        notes.append(
            "no GPU: networks run at the reduced sizes in each row, in fp32; memory is peak RSS "
            "growth (CPU) or counted on the meta device (analytic)"
        )

    command = shlex.join(
        ["python", "-m", "experiments.bench", *(sys.argv[1:] if argv is None else argv)]
    )

    def report(sections: dict[str, dict]) -> None:
        """(Re)write the report after each section: a run cut short keeps what it measured."""
        header = {
            "command": command,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if quick else "full" if args.full else "default",
            "machine": machine(),
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
            "seconds": time.perf_counter() - started,
            "notes": notes,
        }
        write_report(args.out, header, sections)

    sections: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as temporary:
        workdir = args.workdir or Path(temporary)
        case_count = args.cases or (2 if quick else 3)
        start = time.perf_counter()
        cases = loading.synthetic_cases(cfg, workdir / "raw", case_count)
        generation = time.perf_counter() - start
        needs_cache = set(args.sections) - {"preprocessing", "networks", "candidates"}
        cache = loading.build_cache(cfg, cases, workdir / "cache") if needs_cache else None
        if cache is not None:
            loading.write_priors(cache, cache.case_ids(), PRIOR_TAG, cfg.seed)

        if "preprocessing" in args.sections:
            thread_counts = sorted({1, torch.get_num_threads()})
            rows = loading.preprocessing_rows(cfg, cases, 1 if quick else 3, thread_counts)
            rows.insert(
                0,
                {
                    "name": "write_dataset (synthetic cases, not cached)",
                    "setting": f"{case_count} cases (or reused from --workdir)",
                    "s/case": generation / case_count,
                },
            )
            sections["1. Preprocessing and caching per case (CPU)"] = {"rows": rows}
            report(sections)

        if "loading" in args.sections:
            stage1 = sorted({2, cfg.data.stage1.num_workers})
            stage2 = sorted({2, cfg.data.stage2.num_workers})
            # timed batches after each loader's first (worker start): Stage 1, Stage 2
            batches = (4 if quick else 16, 8 if quick else 48)
            rows = loading.loading_rows(cfg, cache, PRIOR_TAG, stage1, stage2, *batches)
            shape = "x".join(map(str, cfg.synthetic.shape))
            rows += loading.cache_format_rows(
                cfg, cache, PRIOR_TAG, workdir / "cache-v4", 2, batches[1], f"synthetic {shape}"
            )
            sections["2. Data loading (items/s = slabs or patches per second)"] = {
                "note": "The configured workers and 2 workers (goal: >= 60 Stage-2 patches/s). "
                "Priors are plausible random probability maps. The few cases stay in the page "
                "cache; a full dataset read from disk is slower.",
                "rows": rows,
            }
            report(sections)

        if "networks" in args.sections:
            rows = networks.network_rows(experiments, sizes, device, repeats, warmup, True)
            sections["3. Training step per stage"] = {
                "note": "One optimiser step: forward, softmax (+ residual mix for Stage 2), "
                "Dice+CE loss, backward, AdamW. Baselines use the same loss.",
                "rows": rows,
            }
            paper = experiments if not quick else {"smoke": smoke}
            sections["3b. Training memory at configured sizes (analytic)"] = {
                "note": "Tensors kept for backward, counted on the meta device; 16-mixed lies "
                "between the fp32 and fp16 columns.",
                "rows": networks.memory_rows(paper),
            }
            report(sections)

        if "inference" in args.sections:
            case, case_cache = cases[0], cache
            if args.case is not None:
                case = _labelled_case(args.case)
                case_cache = loading.build_cache(cfg, [case], workdir / "case-cache")
                loading.write_priors(case_cache, [case.case_id], PRIOR_TAG, cfg.seed)
                sections["4a. Cache bytes of the case"] = {
                    "rows": loading.cache_format_rows(
                        cfg, case_cache, PRIOR_TAG, workdir / "case-v4", 0, None, case.case_id
                    )
                }
                notes.append(f"inference on the case {case.case_id} read from {args.case}")
            title = "4. Inference per case (CascadePredictor timings)"
            guard = None
            if args.checkpoint is not None and device.type == "cpu":
                threads = torch.get_num_threads()

                def guard(checkpoint=args.checkpoint, case=case, threads=threads):
                    return inference.trained_guard_rows(checkpoint, case, device, threads)

            def publish(section: dict, title: str = title) -> None:
                sections[title] = section
                report(sections)

            _inference(
                smoke,
                experiments[names[-1]],
                names[-1],
                case,
                case_cache,
                device,
                quick,
                args.full,
                publish,
                guard,
            )

        if "profile" in args.sections:
            sections["5. Profiles of the hot paths"] = _profiles(
                cfg, experiments[names[0]], smoke, cache, sizes, device, quick
            )
            report(sections)

        if "compile" in args.sections:
            experiment = experiments[names[-1]]
            rows = networks.compile_rows(experiment, names[-1], sizes, device, repeats, warmup)
            sections["6. torch.compile"] = {
                "note": "The Stage-2 step eager and compiled ('first step s' includes the "
                "compilation): model.compile.",
                "rows": rows,
            }
            report(sections)

        if "candidates" in args.sections:
            experiment = experiments[names[-1]]
            sections["7. CPU candidates (one Stage-1 slab, one Stage-2 window)"] = {
                "note": cpu_candidates.__doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
                "rows": cpu_candidates.candidate_rows(experiment, names[-1]),
            }
            report(sections)

        if "pipeline" in args.sections:
            cuda = device.type == "cuda"
            # on a CPU without --full the nets of the smoke experiment, so that a few steps
            # take seconds; the cases, slabs, patches and batches stay the configured ones
            nets = [] if cuda or quick or args.full else _smoke_nets(smoke)
            pipeline_cfg = compose([*base, *nets, *args.overrides])
            shape = "x".join(map(str, cfg.synthetic.shape))
            rows = pipeline.pipeline_rows(
                pipeline_cfg,
                cache,
                device,
                args.steps or (50 if cuda else 6),
                args.warmup or (10 if cuda else 2),
                shape,
            )
            sections["8. Pipeline: the real fit against its networks alone"] = {
                "note": "Per stage: 'fit samples/s' is a real fit (DataModule, LightningModule "
                "and Trainer from conf/, no logger, checkpoints or validation) over the timed "
                "steps; 'network samples/s' the same nets' optimiser step on random tensors of "
                "the fit's batch shape (batch column), the same precision; 'fit/network' their "
                "ratio (goal >= 0.9). 'host ms/sample' is the CPU time per sample of the train "
                "loader alone with each batch moved to the device through the DataModule's "
                "transfer hooks: this process (main) plus its loader workers. 'validation "
                "s/case' (Trainer.validate) and 'priors s/case' (cascade.pipeline.priors) are "
                "whole cases; Stage 2 trains on those priors.",
                "rows": rows,
            }
            report(sections)

    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


def _smoke_nets(smoke) -> list[str]:
    """Overrides giving both nets the smoke experiment's widths and depths."""
    return [
        f"model.{stage}.{key}={smoke.model[stage][key]}"
        for stage in ("stage1", "stage2")
        for key in ("filters", "depth")
    ]


def _labelled_case(folder: Path):
    """The one labelled case in `folder`; a one-line error otherwise."""
    try:
        cases = discover_cases(folder)
    except CaseError as error:
        raise SystemExit(f"--case: {error}") from None
    if len(cases) != 1 or cases[0].label is None:
        raise SystemExit(
            f"--case {folder}: expected one case with a segmentation, found "
            f"{len(cases)} case(s)" + ("" if len(cases) != 1 else " without one")
        )
    return cases[0]


def _inference(
    smoke, experiment, name, case, cache, device, quick: bool, full: bool, publish, guard
) -> None:
    """The cascade's per-case timings (small nets on the CPU, the configured ones on a GPU or
    with --full, where a CPU runs only those), a trained checkpoint's accuracy guard (`guard`)
    and nnU-Net's network over the whole case; `publish` gets the section after each part, so
    a run cut short keeps what it measured."""
    cuda = device.type == "cuda"
    section = {
        "note": "Untrained nets find no tumor, so the Stage-2 region is forced to the case's "
        "true tumor box plus roi_margin (the predictor's `roi` argument). 'network s' is "
        "Stage 1 + Stage 2 (the cascade) or the sliding window alone (nnU-Net); reading and "
        "preprocessing are the same for both. 'fast CPU path': what cascade.predict runs on "
        "a CPU (bf16 autocast where the CPU has it natively); 'x exact' is its network time "
        "over the exact (eager fp32) row's, 'guard' its WT/TC/ET Dice against that row's "
        "segmentation; 'x nnU-Net' the network time over nnU-Net's (eager fp32 on a CPU, "
        "the same threads).",
        "rows": [],
    }
    rows = section["rows"]
    # (roi_only, tta, fast): on a CPU each ROI variant exact (eager fp32) and on the fast path
    exact_and_fast = [(True, False, False), (True, False, True)]
    if not quick:
        exact_and_fast += [(True, True, False), (True, True, True)]
    if not cuda and not full:
        variants = [*exact_and_fast[:2], (False, False, False), *exact_and_fast[2:]]
        rows += inference.inference_rows(smoke, "smoke", case, cache, device, 1, variants)
        publish(section)
    paper = []
    if cuda or full:
        # the paper-size full-volume row (5 min on one CPU thread) only where a GPU runs it
        variants = [(True, False), (False, False), (True, True)] if cuda else exact_and_fast
        repeats = 3 if cuda else 1
        paper = inference.inference_rows(experiment, name, case, cache, device, repeats, variants)
        rows += paper
        publish(section)
    if guard is not None:
        rows += guard()
        publish(section)
    if not quick and networks.installed("dynamic_network_architectures"):
        fp16 = str(experiment.trainer.precision).startswith("16")
        whole_case = {}
        for tta in (False, True) if cuda or full else (False,):
            nnunet = inference.nnunet_window_rows(cache, case.case_id, device, fp16, (tta,))
            rows += nnunet
            whole_case[tta] = nnunet[0]["network s"]
            # the goal: the cascade's network time against nnU-Net's, with and without TTA
            for row in paper:
                if "ROI" in row["name"] and ("8x TTA" in row["name"]) == tta:
                    row["x nnU-Net"] = row["network s"] / whole_case[tta]
            publish(section)
    publish(section)


def _profiles(cfg, experiment, smoke, cache, sizes, device, quick) -> dict:
    """Where the time goes in the Stage-2 loader, the Stage-2 step and the sliding window."""
    rows, loader_profile = loading.stage2_breakdown(cfg, cache, PRIOR_TAG, 1 if quick else 3)
    rows += inference.window_overhead_rows(smoke, cache, cache.case_ids()[0], device)

    step = networks.TrainStep(
        instantiate(experiment.model.stage2),
        build_loss(experiment, DEFAULT_SCHEME),
        instantiate(experiment.model.optimizer),
        torch.softmax(torch.randn(sizes.stage2_batch, 8, *sizes.stage2_patch), dim=1),
        torch.randint(4, (sizes.stage2_batch, *sizes.stage2_patch)),
        device,
        str(experiment.trainer.precision).startswith("16"),
        mix=instantiate(experiment.model.mix),
    )
    step()  # warm-up outside the profile
    step_profile = inference.torch_profile(step, device, 12)
    rows.append(
        {
            "name": "Stage-2 step (the profiled one, again)",
            "setting": f"{sizes.label} {'x'.join(map(str, sizes.stage2_patch))}",
            "ms": 1e3 * median(time_calls(step, 1, 0, device)),
        }
    )
    if device.type == "cpu" and not quick:
        rows += _thread_rows(smoke, QUICK_SIZES)
    return {
        "rows": rows,
        "profiles": {
            "Stage-2 training batches on the device (cProfile, by own time)": loader_profile,
            "Stage-2 training step (torch.profiler, by self time)": step_profile,
        },
    }


def _thread_rows(cfg, sizes: networks.StepSizes) -> list[dict]:
    """The same small CPU step with one torch thread and with one per core: on a shared,
    busy machine OpenMP threads that wait for each other can cost far more than they give."""
    chosen = torch.get_num_threads()
    rows = []
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        row = networks.measure_step(
            f"Stage 2 AttentionUNet3d smoke, {threads} torch thread(s)",
            lambda: instantiate(cfg.model.stage2),
            cfg,
            sizes.stage2_batch,
            sizes.stage2_patch,
            torch.device("cpu"),
            2,
            1,
            sizes.label,
            mix=True,
        )
        rows.append({key: row[key] for key in ("name", "setting", "ms/step")})
    torch.set_num_threads(chosen)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
