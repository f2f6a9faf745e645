"""The fits are composed from conf/: Trainer, callbacks, DataModules and LightningModules."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint

from cascade.pipeline.composition import _best_state, build, build_trainer
from cascade.pipeline.folders import stage1_folder, stage2_folder
from tests.pipeline.configs import smoke_config


def _callbacks_of(trainer, kind):
    return [callback for callback in trainer.callbacks if isinstance(callback, kind)]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_the_default_callbacks_checkpoint_each_stage_in_its_folder(stage, tmp_path) -> None:
    trainer = build_trainer(smoke_config(), stage, tmp_path / stage, None, [])
    (checkpoint,) = _callbacks_of(trainer, ModelCheckpoint)
    assert checkpoint is trainer.checkpoint_callback
    assert Path(checkpoint.dirpath) == tmp_path / stage / "checkpoints"
    assert checkpoint.monitor == f"{stage}/val_dice_mean" and checkpoint.save_last
    assert not _callbacks_of(trainer, EarlyStopping)
    # the per-stage Trainer settings of conf/trainer reach the Trainer
    assert trainer.max_epochs == {"stage1": 2, "stage2": 6}[stage]
    # the DataModules shard per rank themselves: Lightning must not add its sampler
    assert not trainer._accelerator_connector.use_distributed_sampler


def test_early_stopping_is_one_config_choice(tmp_path) -> None:
    cfg = smoke_config("callbacks=early_stopping", "callbacks.early_stopping.patience=1")
    trainer = build_trainer(cfg, "stage2", tmp_path, None, [])
    (stopping,) = _callbacks_of(trainer, EarlyStopping)
    assert stopping.monitor == "stage2/val_dice_mean" and stopping.patience == 1
    assert len(_callbacks_of(trainer, ModelCheckpoint)) == 1


def test_a_callback_added_on_the_command_line_is_built(tmp_path) -> None:
    cfg = smoke_config(
        "+callbacks.lr_monitor={_target_: lightning.pytorch.callbacks.LearningRateMonitor}"
    )
    trainer = build_trainer(cfg, "stage1", tmp_path, None, [])
    assert any(type(c).__name__ == "LearningRateMonitor" for c in trainer.callbacks)


def test_a_callback_switched_off_leaves_lightning_default_checkpointing(tmp_path) -> None:
    trainer = build_trainer(
        smoke_config("callbacks.model_checkpoint=null"), "stage1", tmp_path, None, []
    )
    # Lightning's own checkpoint callback, which monitors nothing: the last weights are kept
    assert trainer.checkpoint_callback.monitor is None


def test_callbacks_shape_the_stage_folder_and_loader_workers_do_not() -> None:
    ids = (["a", "b"], ["c"], "identity")
    base = stage1_folder(smoke_config(), *ids)
    assert stage1_folder(smoke_config("callbacks=early_stopping"), *ids) != base
    assert stage1_folder(smoke_config("data.stage1.num_workers=0"), *ids) == base


def test_the_memory_format_retrains_neither_stage() -> None:
    ids = (["a", "b"], ["c"], "identity")
    plain, last = smoke_config(), smoke_config("model.channels_last=true")
    assert last.model.lightning.stage1.channels_last and last.model.lightning.stage2.channels_last
    assert stage1_folder(last, *ids) == stage1_folder(plain, *ids)
    assert stage2_folder(last, "prior", *ids) == stage2_folder(plain, "prior", *ids)
    # a setting that shapes the weights still moves both
    other = smoke_config("model.loss.ce_weight=0.5")
    assert stage1_folder(other, *ids) != stage1_folder(plain, *ids)
    assert stage2_folder(other, "prior", *ids) != stage2_folder(plain, "prior", *ids)


def test_the_lightning_modules_are_partials_completed_by_the_pipeline() -> None:
    cfg = smoke_config()
    stage1 = build(cfg.model.lightning.stage1)
    assert stage1.keywords["views"] == ["axial", "sagittal", "coronal"]
    assert stage1.keywords["plane_size"] == list(cfg.data.stage1.slab_size)
    # the optimizer arrives as a partial taking the parameters
    assert stage1.keywords["optimizer"].keywords["lr"] == cfg.model.optimizer.lr


def test_weight_averaging_is_one_config_choice_that_shapes_the_weights(tmp_path) -> None:
    cfg = smoke_config("callbacks=weight_averaging")
    trainer = build_trainer(cfg, "stage1", tmp_path, None, [])
    (averaging,) = _callbacks_of(trainer, EMAWeightAveraging)
    # the first epoch stays out of the average
    assert averaging.update_starting_at_epoch == 1
    assert not averaging.should_update(epoch_idx=0) and averaging.should_update(epoch_idx=1)
    assert len(_callbacks_of(trainer, ModelCheckpoint)) == 1
    ids = (["a", "b"], ["c"], "identity")
    assert stage1_folder(cfg, *ids) != stage1_folder(smoke_config(), *ids)


class _RunsCode:
    """Unpickling it would call os.system: a cached checkpoint must never get that far."""

    def __reduce__(self):
        return (os.system, ("touch ran",))


def test_the_best_checkpoint_is_read_without_running_code(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "extra": _RunsCode()}, path)
    module = torch.nn.Linear(2, 2)
    with pytest.raises(pickle.UnpicklingError):
        _best_state(module, SimpleNamespace(best_model_path=str(path)))
    assert not (tmp_path / "ran").exists()
