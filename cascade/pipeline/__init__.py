"""One training run of the cascade, step by step (``python -m cascade.train`` calls ``run``)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cascade.checkpoint import CascadeModel, build_predictor, save_checkpoint
from cascade.config import export_job_for_ddp_children
from cascade.inference.settings import InferenceSettings
from cascade.lit.callbacks import TrainingSamples
from cascade.loggers import build_logger, metric_prefix
from cascade.nn.members import CascadeNets
from cascade.pipeline.evaluation import evaluate_cases, format_metrics, run_metrics, write_outputs
from cascade.pipeline.folders import priors_tag
from cascade.pipeline.prepare import (
    generate_cases,
    open_cache,
    prepare_cases,
    prepare_split,
    settle_scheme,
)
from cascade.pipeline.priors import priors_precision, sixteen_bit, write_stage1_priors
from cascade.pipeline.stages import fit_stage1, fit_stage2
from cascade.ranks import is_global_zero, set_rank_from_environment
from cascade.timings import PhaseTimings
from cascade.viz import save_alpha_curve

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict | None:
    """Run the stages ``cfg.stage`` asks for; returns the validation metrics on rank 0."""
    if cfg.stage not in (1, 2, "all"):
        raise ValueError(f"stage must be 1, 2 or all, got {cfg.stage!r}")
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    export_job_for_ddp_children(run_dir, list(hydra_cfg.overrides.task))
    L.seed_everything(cfg.seed, workers=True)
    set_rank_from_environment(cfg.trainer.devices)

    timings = PhaseTimings(run_dir)
    if cfg.data.get("generate"):
        with timings.phase("generation", "cases") as phase:
            phase.count, total = generate_cases(cfg.data, cfg.get("synthetic"))
            phase.detail = f"{total - phase.count} of {total} already there"
    cache = open_cache(cfg.preprocessing, Path(cfg.cache_dir))
    with timings.phase("checking", "cases") as phase:
        cases = prepare_cases(cfg.data)
        cases, scheme, cached = settle_scheme(cases, cache, cfg.data.labels)
        phase.count = len(cases)
    with timings.phase("preprocessing", "cases") as phase:
        cache.build(cases)
        phase.count, phase.detail = len(cases) - cached, f"{cached} of {len(cases)} already cached"
    with open_dict(cfg):
        # the class counts of the nets and the loss follow the detected scheme from here on
        cfg.data.labels = scheme.name
    train_ids, val_ids, test_ids = prepare_split(cases, cfg.data.split, run_dir)
    logger = build_logger(cfg.get("logger"))
    if logger is not None:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    timings.log_to(logger)

    members, alpha_histories = [], []
    for index in range(cfg.ensemble_members):
        fitted = _fit_member(cfg, index, scheme, cache, train_ids, val_ids, logger, timings)
        if fitted is not None:
            members.append(fitted[0])
            alpha_histories.append(fitted[1])
    if cfg.stage == 1:
        return None
    # Lightning's global rank: set by the fit's strategy, or read from the launcher's environment
    # (torchrun, SLURM) when both stages were reused and no Trainer ran
    if not is_global_zero():
        return None
    model = CascadeModel(members, settings=InferenceSettings.from_config(cfg))
    networks = {
        name: OmegaConf.to_container(cfg.model[name], resolve=True)
        for name in ("stage1", "stage2", "mix")
    }
    save_checkpoint(run_dir / "cascade.ckpt", model, networks)
    first_alphas = alpha_histories[0]
    if first_alphas is not None and first_alphas.steps:
        save_alpha_curve(run_dir / "alpha.png", first_alphas.steps, first_alphas.alphas)
    # an ensemble's alpha in the metrics is its members' mean (each is logged on its own)
    alpha = sum(float(member.mix.alpha.detach()) for member in members) / len(members)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = build_predictor(
        model,
        device,
        fp16=sixteen_bit(cfg),
        cpu_bf16=cfg.model.inference.cpu_bf16,
    )
    overlay_dir = run_dir / "overlays" if cfg.evaluation.overlay_cases else None
    # validation cases chose both checkpoints; test cases chose nothing, so they are reported
    # (metrics.json's top level) whenever there are any, and validation apart under "val"
    rows, by_split = [], {}
    with timings.phase("evaluation", "cases") as phase:
        for split, ids in (("val", val_ids), ("test", test_ids)):
            if not ids:
                continue
            split_cases = [case for case in cases if case.case_id in set(ids)]
            split_rows = evaluate_cases(
                predictor, split_cases, overlay_dir, cfg.evaluation.overlay_cases
            )
            rows += [{"case_id": row["case_id"], "split": split, **row} for row in split_rows]
            by_split[split] = run_metrics(split_rows, scheme, alpha=alpha)
        phase.count = len(rows)
    reported = "test" if "test" in by_split else "val"
    metrics = {**by_split[reported], "reported_split": reported}
    if reported == "test":
        metrics["val"] = by_split["val"]
    write_outputs(run_dir, rows, metrics)
    if logger is not None:
        for split, split_metrics in by_split.items():
            logger.log_metrics(
                {f"final/{split}/{key}": value for key, value in split_metrics.items()}
            )
        _log_overlays(logger, overlay_dir)
        logger.finalize("success")
    for split, split_metrics in by_split.items():
        print(f"{split} cases:")
        print(format_metrics(split_metrics, scheme))
    print(f"outputs in {run_dir}")
    return metrics


def _fit_member(cfg, index, scheme, cache, train_ids, val_ids, logger, timings):
    """Member `index` of the run's ensemble: Stage 1, its priors, then Stage 2 on them, with seed
    ``seed + index`` (member 0 is what a run without an ensemble fits), each fit reused when its
    folder holds its weights. Returns the nets and Stage 2's alpha per step (None when
    reused), or None when the run stops after Stage 1. Members after the first log with the
    prefix ``member<index>``."""
    member_cfg = copy.deepcopy(cfg)
    if index:
        # the first member runs exactly as a run without an ensemble, seeded once at its start
        with open_dict(member_cfg):
            member_cfg.seed = cfg.seed + index
        L.seed_everything(member_cfg.seed, workers=True)
    detail = f"member {index + 1} of {cfg.ensemble_members}: " if cfg.ensemble_members > 1 else ""
    with metric_prefix(logger, f"member{index}" if index else ""):
        with timings.phase("stage1_fit", "samples") as phase:
            samples = TrainingSamples()
            stage1_net, stage1_weights = fit_stage1(
                member_cfg, scheme, cache, train_ids, val_ids, logger, [samples]
            )
            phase.count = samples.samples
            phase.detail = _detail(detail, None if samples.samples else "reused")
        prior_tag = priors_tag(stage1_weights, priors_precision(member_cfg))
        with timings.phase("priors", "cases") as phase:
            prior_ids = train_ids + val_ids
            written = sum(cache.has_prior(case_id, prior_tag) for case_id in prior_ids)
            write_stage1_priors(member_cfg, stage1_net, cache, prior_ids, prior_tag)
            phase.count = len(prior_ids) - written
            phase.detail = _detail(detail, f"{written} of {len(prior_ids)} already written")
        if cfg.stage == 1:
            return None
        with timings.phase("stage2_fit", "samples") as phase:
            samples = TrainingSamples()
            stage2_net, mix, alpha_history = fit_stage2(
                member_cfg, scheme, cache, train_ids, val_ids, prior_tag, logger, [samples]
            )
            phase.count = samples.samples
            phase.detail = _detail(detail, None if samples.samples else "reused")
    return CascadeNets(stage1_net, stage2_net, mix), alpha_history


def _detail(member: str, detail: str | None) -> str | None:
    """A phase's detail line, led by which member it belongs to in an ensemble."""
    return f"{member}{detail or ''}".removesuffix(": ") or None


def _log_overlays(logger, overlay_dir: Path | None) -> None:
    """Overlay pictures to W&B (other loggers have no image panel)."""
    if overlay_dir is None or not hasattr(logger, "log_image"):
        return
    pictures = sorted(overlay_dir.glob("*.png"))
    if pictures:
        logger.log_image(
            "final/overlays", [str(path) for path in pictures], caption=[p.stem for p in pictures]
        )
