"""The training entry point end to end on a tiny synthetic set (CPU, csv logger)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from cascade.checkpoint import load_checkpoint
from cascade.config import CONFIG_DIR, register_resolvers

# Small enough for the CPU in seconds; real code paths (NIfTI in, NIfTI out) throughout.
TINY = [
    "experiment=smoke",
    "logger=csv",
    "synthetic.cases=4",
    "data.split.val_count=1",
    "synthetic.shape=[40,40,32]",
    "data.stage1.slab_size=[40,40]",
    "data.stage1.train_slabs_per_epoch=16",
    "data.stage1.batch_size=4",
    "data.stage1.num_workers=0",
    "data.stage2.patch_size=[16,16,16]",
    "data.stage2.num_workers=0",
    "data.stage2.patches_per_epoch=6",
    "model.stage1.filters=4",
    "model.stage1.depth=2",
    "model.stage2.filters=4",
    "model.stage2.depth=2",
    "trainer.stage1.max_epochs=1",
    "trainer.stage2.max_epochs=2",
    "trainer.stage2.check_val_every_n_epoch=1",
    "evaluation.overlay_cases=1",
]
PHASES = (
    "generation",
    "checking",
    "preprocessing",
    "stage1_fit",
    "priors",
    "stage2_fit",
    "evaluation",
)
METRIC_KEYS = {
    "dice_wt",
    "dice_tc",
    "dice_et",
    "dice_mean",
    "hd95_wt",
    "hd95_tc",
    "hd95_et",
    "alpha",
}


def train(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "cascade.train", *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny full run; later tests reuse its cache (cases, priors, Stage 1)."""
    root = tmp_path_factory.mktemp("train")
    cache, run = root / "cache", root / "run"
    result = train(*TINY, f"cache_dir={cache}", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "console.txt").write_text(result.stdout + result.stderr)  # not a terminal
    return cache, run


def test_smoke_run_writes_every_output(smoke_run) -> None:
    _, run = smoke_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics.keys() >= METRIC_KEYS
    assert all(0.0 <= metrics[f"dice_{region}"] <= 1.0 for region in ("wt", "tc", "et"))
    assert 0.0 < metrics["alpha"] < 1.0
    assert (run / "per_case.csv").read_text().startswith("case_id,split,dice_wt")
    assert len(list((run / "overlays").glob("*.png"))) == 1
    assert (run / "alpha.png").stat().st_size > 0
    model = load_checkpoint(run / "cascade.ckpt")
    assert model.settings.patch_size == (16, 16, 16)
    assert len(model.members) == 1
    assert abs(float(model.members[0].mix.alpha.detach()) - metrics["alpha"]) < 1e-6


def test_a_run_without_a_terminal_says_everything_once(smoke_run) -> None:
    _, run = smoke_run
    console, job_log = (run.parent / "console.txt").read_text(), (run / "train.log").read_text()
    for text in (console, job_log):
        assert text.count("Seed set to 0") == 1  # Lightning's message, through Hydra's logging
        assert "Tip:" not in text
        for phase in PHASES:
            assert text.count(f"phase {phase}: ") == 1, phase
        for epoch in ("stage1 epoch 1/1: ", "stage2 epoch 1/2: ", "stage2 epoch 2/2: "):
            assert text.count(epoch) == 1, epoch
    assert "raw val Dice wt " in console.split("stage2 epoch 2/2: ")[1].splitlines()[0]
    assert not re.search(r"^INFO: ", console, re.MULTILINE)  # Lightning's own console handler


def test_timings_json_lists_every_phase_with_its_rate(smoke_run) -> None:
    _, run = smoke_run
    phases = json.loads((run / "timings.json").read_text())["phases"]
    assert [phase["name"] for phase in phases] == list(PHASES)
    by_name = {phase["name"]: phase for phase in phases}
    assert by_name["generation"]["count"] == by_name["checking"]["count"] == 4
    assert by_name["preprocessing"]["detail"] == "0 of 4 already cached"
    assert by_name["priors"]["count"] == 4  # train and validation cases
    assert (by_name["stage1_fit"]["count"], by_name["stage1_fit"]["unit"]) == (16, "samples")
    assert by_name["stage2_fit"]["count"] == 2 * 6  # epochs x patches_per_epoch
    assert by_name["evaluation"]["count"] == 1
    for phase in phases:
        assert phase["seconds"] > 0 and phase["peak_memory_bytes"] is None  # CPU
        assert phase["per_second"] == pytest.approx(phase["count"] / phase["seconds"], rel=0.01)
    logged = (next(run.glob("logs/*/metrics.csv"))).read_text().splitlines()[0].split(",")
    assert {f"timings/{name}/seconds" for name in PHASES} <= set(logged)


def test_checkpoint_predicts_in_the_input_geometry(smoke_run, tmp_path) -> None:
    from cascade.predict import main as predict

    cache, run = smoke_run
    case_folder = next((cache / "synthetic").glob("*/Synth_001"))
    assert predict(["--checkpoint", str(run / "cascade.ckpt"), "--input", str(case_folder),
                    "--output", str(tmp_path), "--device", "cpu"]) == 0  # fmt: skip
    written, source = (
        nib.load(tmp_path / "Synth_001.nii.gz"),
        nib.load(case_folder / "Synth_001_t1.nii.gz"),
    )
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2, 4}


def test_a_folder_of_linked_case_folders_trains(smoke_run, tmp_path) -> None:
    cache, _ = smoke_run
    subset = tmp_path / "subset"
    subset.mkdir()
    for folder in sorted((cache / "synthetic").glob("*/Synth_*")):
        (subset / folder.name).symlink_to(folder)
    run = tmp_path / "run"
    overrides = [*TINY, "data=brats", "data.labels=brats2020", "trainer.stage2.max_epochs=1"]
    result = train(
        *overrides, f"data.root={subset}", f"cache_dir={tmp_path}", f"hydra.run.dir={run}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 labelled cases under" in (run / "train.log").read_text()
    assert (run / "cascade.ckpt").is_file()


def test_finished_stages_are_reused_and_a_sweep_writes_one_result_per_job(smoke_run) -> None:
    cache, _ = smoke_run
    sweep = cache.parent / "sweep"
    stage1_folders = sorted(cache.glob("stage1-*"))
    result = train(
        "-m", *TINY, f"cache_dir={cache}", f"hydra.sweep.dir={sweep}", "model.stage2.filters=4,6"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(cache.glob("stage1-*")) == stage1_folders  # Stage 1 of the smoke run reused
    assert "Stage 1: reusing" in (sweep / "0" / "train.log").read_text()
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text()).keys() >= METRIC_KEYS


def test_f32_d5_selects_the_paper_model_on_two_t4s() -> None:
    result = train("+experiment=f32_d5", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert (config["model"]["stage2"]["filters"], config["model"]["stage2"]["depth"]) == (32, 5)
    trainer = config["trainer"]
    assert (trainer["strategy"], trainer["devices"], trainer["precision"]) == ("ddp", 2, "16-mixed")


def test_a_mistyped_key_fails_at_start_up() -> None:
    result = train("+experiment=smoke", "model.stage2.filterz=8")
    assert result.returncode != 0
    assert "filterz" in result.stderr


class _CrashAtEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class _Steps(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.first = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        self.last = trainer.global_step


def test_an_interrupted_stage2_fit_resumes_from_its_checkpoint(smoke_run) -> None:
    from cascade.pipeline import folders, prepare, priors, stages

    cache, run = smoke_run
    register_resolvers()
    overrides = [*TINY, f"cache_dir={cache}", "logger=none", "trainer.stage2.max_epochs=3"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cases = prepare.prepare_cases(cfg.data)
    train_ids, val_ids, _ = prepare.prepare_split(cases, cfg.data.split, run)
    store, cases, scheme = prepare.prepare_cache(cases, cfg.preprocessing, cache, cfg.data.labels)
    _, weights = stages.fit_stage1(cfg, scheme, store, train_ids, val_ids, None)
    tag = folders.priors_tag(weights, priors.priors_precision(cfg))
    identity = store.identity(train_ids + val_ids)
    folder = folders.stage2_folder(cfg, tag, train_ids, val_ids, identity)

    with pytest.raises(RuntimeError, match="simulated crash"):
        stages.fit_stage2(cfg, scheme, store, train_ids, val_ids, tag, None, [_CrashAtEpoch(2)])
    saved = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not (folder / "stage2.pt").exists()  # an interrupted fit is not taken as finished

    resumed = _Steps()
    stages.fit_stage2(cfg, scheme, store, train_ids, val_ids, tag, None, [resumed])
    steps_per_epoch = resumed.last // 3
    assert steps_per_epoch > 0
    assert saved["global_step"] >= steps_per_epoch  # at least the first epoch was saved
    assert resumed.first == saved["global_step"]  # resumed from the checkpoint, not from scratch
    assert resumed.last == 3 * steps_per_epoch  # and finished the planned epochs
    assert (folder / "stage2.pt").exists()


@pytest.mark.parametrize("members", [1, 2])
def test_two_ddp_ranks_share_one_run_folder_and_rank_zero_writes(tmp_path, members) -> None:
    """Lightning re-launches rank 1 by re-running the command; it must join the same job, and
    fit an ensemble's members in step with rank 0."""
    run = tmp_path / "run"
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    result = train(
        *TINY, *ddp, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
        f"ensemble_members={members}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text()).keys() >= METRIC_KEYS
    # one run folder for both ranks: no second timestamped folder, rank 1 logged into this one
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "run"]
    assert (run / "ddp_rank_1.log").exists()
    assert len(list(run.glob("cascade.ckpt"))) == 1
    assert len(load_checkpoint(run / "cascade.ckpt").members) == members


def test_speed_and_logging_settings_retrain_nothing(smoke_run, tmp_path) -> None:
    cache, _ = smoke_run
    result = train(
        *TINY, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}", "logger=none",
        "data.stage2.num_workers=1", "trainer.log_every_n_steps=3",
        "trainer.num_sanity_val_steps=2", "model.inference.tta=true",
        "model.inference.window_batch_size=1", "~callbacks.epoch_progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Stage 1: reusing" in output and "Stage 2: reusing" in output
    phases = json.loads((tmp_path / "run" / "timings.json").read_text())["phases"]
    reused = {phase["name"]: (phase["count"], phase["detail"]) for phase in phases}
    assert reused["preprocessing"] == (0, "4 of 4 already cached")
    assert reused["priors"] == (0, "4 of 4 already written")
    assert reused["stage1_fit"] == reused["stage2_fit"] == (0, "reused")


def test_an_ensemble_reuses_the_run_as_its_first_member_and_fits_the_second(tmp_path) -> None:
    # a cache of its own: the other tests count the Stage-1 folders of the smoke run's
    cache, single, run = tmp_path / "cache", tmp_path / "single", tmp_path / "run"
    result = train(*TINY, f"cache_dir={cache}", f"hydra.run.dir={single}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = train(*TINY, f"cache_dir={cache}", f"hydra.run.dir={run}", "ensemble_members=2")
    assert result.returncode == 0, result.stderr[-3000:]
    phases = json.loads((run / "timings.json").read_text())["phases"]
    fits = [(p["name"], p["count"], p["detail"]) for p in phases if p["name"].endswith("_fit")]
    assert fits == [
        ("stage1_fit", 0, "member 1 of 2: reused"),
        ("stage2_fit", 0, "member 1 of 2: reused"),
        ("stage1_fit", 16, "member 2 of 2"),
        ("stage2_fit", 12, "member 2 of 2"),
    ]
    ensemble, alone = (
        load_checkpoint(run / "cascade.ckpt"),
        load_checkpoint(single / "cascade.ckpt"),
    )
    assert len(ensemble.members) == 2
    first, second = (member.stage1.state_dict() for member in ensemble.members)
    reused = alone.members[0].stage1.state_dict()
    assert all(torch.equal(first[key], reused[key]) for key in first)
    assert not all(torch.equal(first[key], second[key]) for key in first)
    alphas = [float(member.mix.alpha.detach()) for member in ensemble.members]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["alpha"] == pytest.approx(sum(alphas) / 2, abs=1e-6)
    # the second member's curves are logged apart from the first's
    logged = next(run.glob("logs/*/metrics.csv")).read_text().splitlines()[0].split(",")
    assert any(key.startswith("member1-stage1/") for key in logged)
    assert any(key.startswith("member1-stage2/alpha") for key in logged)


def test_stage1_checkpoint_takes_a_lightning_checkpoint_of_stage1(smoke_run, tmp_path) -> None:
    cache, _ = smoke_run
    (lightning_checkpoint,) = cache.glob("stage1-*/checkpoints/best.ckpt")
    result = train(
        *TINY, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}", "logger=none",
        "stage=1", f"stage1_checkpoint={lightning_checkpoint}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Stage 1: reusing {lightning_checkpoint}" in result.stdout + result.stderr


def test_stage2_without_a_stage1_fails_in_one_line(smoke_run, tmp_path) -> None:
    cache, _ = smoke_run
    result = train(
        *TINY, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}", "logger=none",
        "stage=2", "model.stage1.filters=6",
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "stage=2 needs a Stage 1" in line and "Traceback" not in result.stderr
    assert len(list(cache.glob("stage1-*/stage1.pt"))) == 1  # the smoke run's; nothing trained


def test_a_rank_other_than_zero_writes_no_outputs(smoke_run, tmp_path) -> None:
    """Under SLURM or torchrun the rank comes from the launcher's environment (Lightning reads
    it); with both stages reused no Trainer runs, and only rank 0 may write."""
    cache, _ = smoke_run
    run = tmp_path / "run"
    environment = {**os.environ, "WANDB_MODE": "disabled", "SLURM_PROCID": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "cascade.train", *TINY, f"cache_dir={cache}",
         f"hydra.run.dir={run}", "logger=none"],
        capture_output=True, text=True, timeout=600, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Stage 2: reusing" in result.stdout + result.stderr
    written = {path.name for path in run.iterdir()} if run.exists() else set()
    assert not written & {"cascade.ckpt", "metrics.json", "per_case.csv", "split.json"}


def test_a_test_split_is_held_out_and_reported_apart(smoke_run, tmp_path) -> None:
    cache, _ = smoke_run
    run = tmp_path / "run"
    result = train(
        *TINY, "synthetic.cases=5", "data.split.test_count=1", f"cache_dir={cache}",
        f"hydra.run.dir={run}", "logger=none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    split = json.loads((run / "split.json").read_text())
    assert [len(split[key]) for key in ("train", "val", "test")] == [3, 1, 1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reported_split"] == "test" and metrics["cases"] == 1
    assert metrics["val"]["cases"] == 1 and "dice_wt" in metrics["val"]
    rows = (run / "per_case.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:2] == ["case_id", "split"] and "volume_error_ml_wt" in header
    by_split = {row.split(",")[0]: row.split(",")[1] for row in rows[1:]}
    assert by_split == {split["val"][0]: "val", split["test"][0]: "test"}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_train_together_and_rank_zero_writes_once(tmp_path) -> None:
    """trainer.num_nodes=2 with one CPU process per node (gloo), started by hand as a cluster
    would: both nodes run the whole job on one cache and one run folder; only global rank 0
    writes the split, the checkpoint and the metrics."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cascade.train",
                *TINY,
                f"cache_dir={cache}",
                f"hydra.run.dir={run}",
                "logger=none",
                "trainer.accelerator=cpu",
                "trainer.devices=1",
                "trainer.num_nodes=2",
                "trainer.strategy=ddp",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "WANDB_MODE": "disabled",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "NODE_RANK": str(node),
                "WORLD_SIZE": "2",
            },
        )  # fmt: skip
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=900) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr[-3000:]
    # Lightning's messages go through the run's logging (stdout and the job log)
    node1 = outputs[1][0] + outputs[1][1]
    assert "GLOBAL_RANK: 1" in node1 or "global rank 1" in node1.lower()
    assert json.loads((run / "metrics.json").read_text()).keys() >= METRIC_KEYS
    assert len(json.loads((run / "split.json").read_text())["val"]) == 1
    assert len(list(run.glob("cascade.ckpt"))) == 1
    # the Stage-2 fit ran once, over both nodes: one stage folder with one set of checkpoints
    assert len(list(cache.glob("stage2-*/stage2.pt"))) == 1


@pytest.mark.slow
def test_a_sweep_through_the_submitit_launcher_shares_one_stage1(tmp_path) -> None:
    """The path the SLURM config takes (hydra-submitit-launcher), in its local mode: two jobs
    started together on one cache; Stage 1 is trained once under its lock, reused by the other."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    result = train(
        "-m", "hydra/launcher=submitit_local", *TINY, f"cache_dir={cache}", "logger=none",
        f"hydra.sweep.dir={sweep}", "model.stage2.filters=4,6", timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text()).keys() >= METRIC_KEYS
    assert len(list(cache.glob("stage1-*/stage1.pt"))) == 1
    assert len(list(cache.glob("stage2-*/stage2.pt"))) == 2
