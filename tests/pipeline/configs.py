"""The smoke experiment's config, composed from conf/ as a run would, for tests that need one."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from cascade.config import CONFIG_DIR, register_resolvers


def smoke_config(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=["experiment=smoke", "cache_dir=/tmp/unused", "logger=none", *overrides],
        )
