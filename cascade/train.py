"""Train the cascade: ``python -m cascade.train [+experiment=NAME] [key=value ...]``.

Discovers and checks the data, preprocesses it once into the cache, fits Stage 1, writes its priors,
fits Stage 2 and evaluates the validation cases; see ``cascade.pipeline``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cascade.config import CONFIG_DIR, pin_ddp_child_to_parent_job, register_resolvers


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _train(cfg: DictConfig) -> float | None:
    # heavy imports after Hydra has parsed the command line
    from cascade.data.cases import CaseError
    from cascade.pipeline import run
    from cascade.pipeline.prepare import DataError

    try:
        metrics = run(cfg)
    except (CaseError, DataError) as error:
        # problems of the data: a message for the user, not a traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    # returned for Hydra sweepers that optimise a value
    return None if metrics is None else metrics.get("dice_mean")


def main() -> None:
    register_resolvers()
    pin_ddp_child_to_parent_job()
    _train()


if __name__ == "__main__":
    main()
