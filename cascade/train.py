"""Train the cascade: ``python -m cascade.train [experiment=NAME] [key=value ...]``.

Checks the config (``cascade.config.check``), discovers and checks the data, preprocesses it once
into the cache, fits Stage 1, writes its priors, fits Stage 2 and evaluates the validation cases;
see ``cascade.pipeline``.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig

from cascade.config import (
    CONFIG_DIR,
    composition_error_line,
    experiment_without_plus,
    pin_ddp_child_to_parent_job,
    register_resolvers,
)
from cascade.config.check import ConfigError, check_config
from cascade.cores import choose_omp_waiting
from cascade.messages import route_messages

# what a config error exits with, as argparse does for a bad command line
CONFIG_ERROR_STATUS = 2


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _train(cfg: DictConfig) -> float | None:
    # before anything loads torch, whose OpenMP reads it once (check_config reports a bad name)
    choose_omp_waiting(cfg.get("omp_waiting"))
    try:
        check_config(cfg)
    except ConfigError as error:
        _config_error(str(error))
    # heavy imports after the config is known to be good
    from cascade.cores import size_training
    from cascade.data.cases import CaseError
    from cascade.pipeline import run
    from cascade.pipeline.errors import StageError
    from cascade.pipeline.prepare import DataError
    from cascade.synthesis.anatomy import MissingExtraError

    route_messages()
    _use_tensor_cores()
    size_training(cfg)  # torch threads and loader workers within this job's cores
    try:
        metrics = run(cfg)
    except (CaseError, DataError, MissingExtraError, StageError) as error:
        # problems of the data, or a stage that cannot run as asked: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    # returned for Hydra sweepers that optimise a value (check_config knows it is a metric key)
    return None if metrics is None else metrics[cfg.optimized_metric]


def _use_tensor_cores() -> None:
    import torch

    if torch.cuda.is_available():
        # float32 matmuls on TF32 tensor cores (Ampere and later; no effect on older GPUs): several
        # times faster, and these nets train the same with TF32's 10-bit mantissa
        torch.set_float32_matmul_precision("high")


def _config_error(message: str) -> None:
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(CONFIG_ERROR_STATUS)


def main() -> None:
    register_resolvers()
    pin_ddp_child_to_parent_job()
    sys.argv = [sys.argv[0], *experiment_without_plus(sys.argv[1:])]
    # Hydra raises what it cannot compose instead of printing its own report (several lines,
    # status 1): composition errors are reported below in one line, others keep their traceback
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _train()
    except (ConfigCompositionException, OverrideParseException) as error:
        _config_error(composition_error_line(error))


if __name__ == "__main__":
    main()
