"""The config is checked whole at start-up: a mistyped key or a bad value anywhere (command line,
group option, experiment file) fails before any data are read, with one line naming the key and
exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, OverrideParseException

from cascade.config import (
    CONFIG_DIR,
    composition_error_line,
    experiment_without_plus,
    register_resolvers,
)
from cascade.config.check import ConfigError, check_config

# Experiment files outside conf/, found through hydra.searchpath, each with one mistake.
EXPERIMENTS = {
    "net_typo": "model:\n  stage2:\n    filtres: 8\n",
    "trainer_typo": "trainer:\n  stage2:\n    max_epoch: 3\n",
    "patch_typo": "data:\n  stage2:\n    patch_sise: [48, 48, 48]\n",
    "postprocessing_typo": "postprocessing:\n  min_enhancing_voxel: 8\n",
    "huge_patch": "defaults:\n  - smoke\n\ndata:\n  stage2:\n    patch_size: [128, 128, 128]\n",
}


@pytest.fixture(scope="module")
def searchpath(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("conf")
    (folder / "experiment").mkdir()
    for name, body in EXPERIMENTS.items():
        (folder / "experiment" / f"{name}.yaml").write_text(f"# @package _global_\n{body}")
    return f"hydra.searchpath=[file://{folder}]"


def config_error(*overrides: str, gpus: int = 2) -> str | None:
    """The one line `python -m cascade.train` would print after ``config error:``, or None, on
    a machine with `gpus` GPUs (two: every shipped trainer fits)."""
    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=experiment_without_plus(list(overrides)))
    except (ConfigCompositionException, OverrideParseException) as error:
        return composition_error_line(error)
    try:
        check_config(cfg, gpus=gpus)
    except ConfigError as error:
        return str(error)
    return None


@pytest.mark.parametrize(
    "overrides",
    [
        ["+experiment=smoke"],
        ["experiment=smoke", "logger=csv"],
        ["+experiment=f32_d5"],
        ["experiment=f24_d4", "logger=none"],
        ["data=brats2020", "data.root=/data/BraTS2020", "model.scheduler=null"],
        ["data=brats", "data.root=/data/BraTS2024", "data.labels=auto"],
        ["+experiment=smoke", "data.stage2.perturbation=null", "+trainer.gradient_clip_val=1.0"],
        ["model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.9"],
    ],
)
def test_valid_configs_pass(overrides) -> None:
    assert config_error(*overrides) is None


@pytest.mark.parametrize(
    ("experiment", "message"),
    [
        (
            "net_typo",
            "unknown key model.stage2.filtres (did you mean model.stage2.filters?), "
            "in experiment/net_typo",
        ),
        (
            "trainer_typo",
            "unknown key trainer.stage2.max_epoch (did you mean trainer.stage2.max_epochs?)",
        ),
        (
            "patch_typo",
            "unknown key data.stage2.patch_sise (did you mean data.stage2.patch_size?), "
            "in experiment/patch_typo",
        ),
        (
            "postprocessing_typo",
            "unknown key postprocessing.min_enhancing_voxel (did you mean "
            "postprocessing.min_enhancing_voxels?), in experiment/postprocessing_typo",
        ),
        (
            "huge_patch",
            "data.stage2.patch_size=[128, 128, 128] is larger than the synthetic canvas "
            "synthetic.shape=[96, 96, 64]",
        ),
    ],
)
def test_a_mistake_in_an_experiment_file_is_named(searchpath, experiment, message) -> None:
    assert config_error(searchpath, f"experiment={experiment}") == message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.stage2.filterz=8",
            "unknown key model.stage2.filterz (did you mean model.stage2.filters?), "
            "on the command line",
        ),
        (
            "+model.stage2.filterz=8",
            "unknown key model.stage2.filterz (did you mean model.stage2.filters?)",
        ),
        (
            "model.stag2.filters=8",
            "unknown key model.stag2 (did you mean model.stage2?), on the command line",
        ),
        ("+logger.projetc=brats", "unknown key logger.projetc (did you mean logger.project?)"),
        (
            "+model.optimizer.momentun=0.9",
            "unknown key model.optimizer.momentun (did you mean model.optimizer.momentum?)",
        ),
        ("+experiment=smok", "experiment has no option smok (did you mean smoke?)"),
        (
            "callbacks=early_stop",
            "callbacks has no option early_stop (did you mean early_stopping?)",
        ),
        (
            "+callbacks.model_checkpoint.monitr=x",
            "unknown key callbacks.model_checkpoint.monitr (did you mean "
            "callbacks.model_checkpoint.monitor?)",
        ),
        (
            "optimized_metric=dice_wtt",
            "optimized_metric=dice_wtt is not a metric of metrics.json (did you mean dice_wt?)",
        ),
        ("data=brats", "data.root is not set (give data.root=...)"),
        (
            "data.generator=null",
            "data.generate=true needs data.generator (phantom or realistic)",
        ),
        (
            "data.stage1.batch_size=many",
            "data.stage1.batch_size: Value 'many' of type 'str' could not be converted to "
            "Integer, on the command line",
        ),
        (
            "model.optimizer._target_=torch.optim.AdamWW",
            "model.optimizer._target_=torch.optim.AdamWW cannot be imported "
            "(did you mean torch.optim.AdamW?)",
        ),
    ],
)
def test_a_mistyped_key_on_the_command_line_is_named(override, message) -> None:
    # SGD: an optimizer with momentum, so that the typo has a nearest valid key
    assert config_error("model.optimizer._target_=torch.optim.SGD", override) == message


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("stage=3", "must be one of 1, 2, all"),
        ("omp_waiting=sleep", "must be one of passive, spin"),
        (
            "data.labels=brats2021",
            "must be one of auto, brats2020, brats2023, brats2024, msd (did you mean brats2024?)",
        ),
        ("data.stage1.batch_size=-16", "must be at least 1"),
        ("data.stage2.num_workers=-1", "must be at least 0"),
        ("synthetic.cases=-4", "must be at least 1"),
        ("data.stage2.patches_per_epoch=0", "must be at least 1"),
        ("trainer.stage1.max_epochs=-1", "must be at least 1"),
        ("data.stage1.flip_probability=1.5", "must be in [0, 1]"),
        ("data.stage2.perturbation.p=-0.1", "must be in [0, 1]"),
        ("synthetic.thick_slices=1.2", "must be in [0, 1]"),
        ("synthetic.faint_patches=-0.5", "must be in [0, 1]"),
        ("synthetic.contrast_floor=1.5", "must be in (0, 1]"),
        ("data.stage1.slab_size=[80,80,80]", "must hold 2 values"),
        ("data.stage2.patch_size=[48,48]", "must hold 3 values"),
        (
            "model.stage2.norm=instanse",
            "must be one of instance, batch, group (did you mean instance?)",
        ),
    ],
)
def test_a_bad_value_is_named_with_what_it_may_be(override, problem) -> None:
    key, _, value = override.partition("=")
    shown = value.replace(",", ", ")
    assert config_error("+experiment=smoke", override) == f"{key}={shown} {problem}"


def test_a_patch_larger_than_the_synthetic_canvas_fails() -> None:
    assert config_error("+experiment=smoke", "data.stage2.patch_size=[48,48,96]") == (
        "data.stage2.patch_size=[48, 48, 96] is larger than the synthetic canvas "
        "synthetic.shape=[96, 96, 64]"
    )
    # the same patch with cases on disk, whose size only the data say
    assert (
        config_error("data=brats", "data.root=/data", "data.stage2.patch_size=[48,48,96]") is None
    )


def test_tumor_and_lookalike_slabs_may_not_share_more_than_all_slabs() -> None:
    assert config_error("+experiment=demo", "data.stage1.lookalike_fraction=0.6") == (
        "data.stage1.tumor_fraction=0.5 and lookalike_fraction=0.6 share more than all the slabs"
    )
    assert config_error("+experiment=demo", "data.stage1.lookalike_fraction=0.5") is None


def test_scan_variation_needs_the_realistic_generator() -> None:
    assert config_error("+experiment=smoke", "synthetic.thick_slices=0.5") == (
        "synthetic.thick_slices=0.5 needs data=realistic: the phantom generator draws no slices"
    )
    assert config_error("+experiment=smoke", "synthetic.contrast_floor=0.5") == (
        "synthetic.contrast_floor=0.5 needs data=realistic: the phantom generator draws no "
        "contrasts"
    )
    for override in ("thick_slices=0.5", "faint_patches=0.7", "contrast_floor=0.5"):
        assert config_error("+experiment=demo", f"synthetic.{override}") is None


def test_a_mistyped_interpolation_is_named(tmp_path) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "slabs.yaml").write_text(
        "# @package _global_\nmodel:\n  stage1:\n"
        "    in_channels: ${mul:4,${data.stage1.slab_dept}}\n"
    )
    assert config_error(f"hydra.searchpath=[file://{tmp_path}]", "experiment=slabs") == (
        "model.stage1.in_channels=${mul:4,${data.stage1.slab_dept}} refers to unknown key "
        "data.stage1.slab_dept (did you mean data.stage1.slab_depth?)"
    )


@pytest.mark.parametrize(
    ("overrides", "gpus", "message"),
    [
        (
            ["+experiment=f32_d5"],
            0,
            "trainer.accelerator=gpu trainer.devices=2 asks for 2 GPU(s), this machine has "
            "none: add trainer=default to run on the CPU",
        ),
        (
            ["+experiment=f32_d5"],
            1,
            "trainer.accelerator=gpu trainer.devices=2 asks for 2 GPU(s), this machine has 1: "
            "add trainer.devices=1 trainer.strategy=auto, or trainer=default for one device",
        ),
        (
            ["trainer.devices=[0,3]"],
            2,
            "trainer.accelerator=auto trainer.devices=[0, 3] asks for 4 GPU(s), this machine "
            "has 2: add trainer.devices=2 trainer.strategy=auto, or trainer=default for one device",
        ),
        (
            ["trainer.accelerator=cuda", "+trainer.stage2.devices=3"],
            2,
            "trainer.accelerator=cuda trainer.stage2.devices=3 asks for 3 GPU(s), this machine "
            "has 2: add trainer.devices=2 trainer.strategy=auto, or trainer=default for one device",
        ),
    ],
)
def test_more_gpus_than_the_machine_has_are_named_with_the_override(overrides, gpus, message):
    assert config_error(*overrides, gpus=gpus) == message


@pytest.mark.parametrize(
    ("overrides", "gpus"),
    [
        (["+experiment=f32_d5", "trainer=default"], 0),
        (["+experiment=f32_d5", "trainer.devices=1", "trainer.strategy=auto"], 1),
        (["trainer.devices=2"], 0),  # accelerator auto without GPUs: two CPU processes
        (["trainer.accelerator=gpu", "trainer.devices=-1"], 1),
    ],
)
def test_gpus_the_machine_has_pass(overrides, gpus) -> None:
    assert config_error(*overrides, gpus=gpus) is None


def test_experiment_with_or_without_plus_composes_the_same_config() -> None:
    assert experiment_without_plus(["experiment=smoke", "+experiment=smoke", "seed=1"]) == [
        "experiment=smoke",
        "experiment=smoke",
        "seed=1",
    ]
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        plain = compose("train", overrides=["experiment=smoke"])
        plus = compose("train", overrides=experiment_without_plus(["+experiment=smoke"]))
        default = compose("train")
    assert plain == plus
    assert plain.model.stage1.filters == 8 and default.model.stage1.filters == 32


def train(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cascade.train", *overrides, f"hydra.run.dir={cwd / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard only, not a speed goal
        env={**os.environ, "WANDB_MODE": "disabled", "CASCADE_CACHE": str(cwd / "cache")},
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["experiment=net_typo"],
            "unknown key model.stage2.filtres (did you mean model.stage2.filters?), "
            "in experiment/net_typo",
        ),
        (
            ["+experiment=trainer_typo"],
            "unknown key trainer.stage2.max_epoch (did you mean trainer.stage2.max_epochs?)",
        ),
        (["+experiment=smoke", "stage=3"], "stage=3 must be one of 1, 2, all"),
        pytest.param(
            ["+experiment=f32_d5"],
            "trainer.accelerator=gpu trainer.devices=2 asks for 2 GPU(s), this machine has "
            f"{torch.cuda.device_count() or 'none'}: add "
            + (
                "trainer=default to run on the CPU"
                if not torch.cuda.device_count()
                else f"trainer.devices={torch.cuda.device_count()} trainer.strategy=auto, or "
                "trainer=default for one device"
            ),
            marks=pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="two GPUs here"),
            id="f32_d5 without two GPUs",
        ),
    ],
)
def test_the_entry_point_stops_before_any_data_with_one_line(
    searchpath, tmp_path, overrides, message
) -> None:
    # how fast it stops is a matter for benchmarks; here: before any data are made or read
    result = train(searchpath, *overrides, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [f"config error: {message}"]
    assert not (tmp_path / "cache").exists()


def test_an_ensemble_needs_its_own_stage1_per_member() -> None:
    assert config_error("ensemble_members=0") == "ensemble_members=0 must be at least 1"
    assert config_error("ensemble_members=2", "stage1_checkpoint=s1.pt") == (
        "stage1_checkpoint gives one Stage 1, ensemble_members=2 asks for one per member: "
        "leave one of them out"
    )
    assert config_error("ensemble_members=2") is None
