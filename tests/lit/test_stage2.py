"""Stage2Module: a few Lightning steps on a tiny in-memory store lower the loss and log alpha."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from cascade.lit.stage2 import Stage2Module
from cascade.nn.attention_unet3d import AttentionUNet3d
from cascade.nn.losses import DiceCELoss
from cascade.nn.residual_mix import LearnableResidualMix
from tests.sampling.test_stage2 import MemoryStore, make_datamodule


def make_module(
    alpha_lr: float | None = None,
    scheduler=None,
    channels_last: bool = False,
    own_loss_weight: float = 0.0,
) -> Stage2Module:
    torch.manual_seed(0)
    return Stage2Module(
        net=AttentionUNet3d(8, 4, filters=4, depth=3, norm="instance", activation="leaky_relu"),
        mix=LearnableResidualMix(0.5),
        loss=DiceCELoss([1.0, 1.0, 1.0, 1.0]),
        optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=1e-4),
        scheduler=scheduler,
        patch_size=(16, 16, 16),
        overlap=0.25,
        window_batch_size=2,
        alpha_lr=alpha_lr,
        own_loss_weight=own_loss_weight,
        channels_last=channels_last,
    )


def make_trainer(tmp_path: Path, max_epochs: int, **options) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=CSVLogger(tmp_path, name="run", version=0),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the datamodule shards the patches itself
        num_sanity_val_steps=0,
        **options,
    )


def read_metrics(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_training_lowers_the_loss_logs_alpha_and_validates(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    store = MemoryStore(5)
    datamodule = make_datamodule(
        store, val_ids=store.case_ids()[3:], train_ids=store.case_ids()[:3], patches_per_epoch=12
    )
    module = make_module()
    trainer = make_trainer(tmp_path, max_epochs=6, check_val_every_n_epoch=3)
    trainer.fit(module, datamodule=datamodule)

    rows = read_metrics(tmp_path)
    losses = [float(r["stage2/train_loss_step"]) for r in rows if r.get("stage2/train_loss_step")]
    alphas = [float(r["stage2/alpha_step"]) for r in rows if r.get("stage2/alpha_step")]
    assert len(losses) == len(alphas) == 6 * 6  # 12 patches / batch 2, 6 epochs
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6
    assert all(0.0 <= alpha <= 1.0 for alpha in alphas)
    assert alphas[-1] != 0.5  # alpha is trained
    epoch_alphas = [r["stage2/alpha_epoch"] for r in rows if r.get("stage2/alpha_epoch")]
    assert len(epoch_alphas) == 6

    # validation every 3rd epoch, on whole volumes, all regions
    val_rows = [r for r in rows if r.get("stage2/val_dice_mean")]
    assert len(val_rows) == 2
    for region in ("wt", "tc", "et", "mean"):
        assert 0.0 <= float(val_rows[-1][f"stage2/val_dice_{region}"]) <= 1.0
    metrics = trainer.callback_metrics
    assert {"stage2/alpha", "stage2/val_dice_mean", "stage2/val_loss"} <= set(metrics)
    # one pool for the whole fit, full since the first step
    assert datamodule.pooled.pool.filled == datamodule.pool_size == 2


@pytest.mark.parametrize("channels_last", [False, True])
def test_window_prediction_mixes_each_window_with_its_prior(channels_last: bool) -> None:
    module = make_module(channels_last=channels_last).eval()
    with torch.no_grad():
        module.mix.logit.fill_(0.7)
        image, prior = (
            torch.randn(2, 4, 16, 16, 16),
            torch.softmax(torch.randn(2, 4, 16, 16, 16), 1),
        )
        mixed = module._predict_patches(torch.cat([image, prior], 1))
        p2 = torch.softmax(module.net(torch.cat([image, prior], 1)), 1)
        alpha = torch.sigmoid(torch.tensor(0.7))
    torch.testing.assert_close(mixed, alpha * p2 + (1 - alpha) * prior, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.sum(1), torch.ones(2, 16, 16, 16))


def _patch_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    label = torch.randint(0, 4, (2, 16, 16, 16), generator=generator).to(torch.uint8)
    prior = torch.nn.functional.one_hot(label.long(), 4).movedim(-1, 1).float()
    return {"image": torch.randn(2, 4, 16, 16, 16, generator=generator), "prior": prior,
            "label": label}  # fmt: skip


def _net_gradient(module: Stage2Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    module.zero_grad()
    module.training_step(batch, 0).backward()
    return torch.cat([parameter.grad.flatten() for parameter in module.net.parameters()])


@pytest.mark.filterwarnings("ignore:.*self.log.*")
def test_own_loss_trains_the_net_where_the_mix_leans_on_a_perfect_prior() -> None:
    batch = _patch_batch()
    mixed_only, with_own = make_module(), make_module(own_loss_weight=0.5)
    for module in (mixed_only, with_own):
        with torch.no_grad():
            module.mix.logit.fill_(-12.0)  # alpha ~ 6e-6: the output is the (perfect) prior
    own = with_own.stage2_probabilities(batch["image"], batch["prior"])
    mixed = with_own(batch["image"], batch["prior"])
    expected = with_own.loss(mixed, batch["label"]) + 0.5 * with_own.loss(own, batch["label"])
    torch.testing.assert_close(with_own.training_step(batch, 0), expected)
    # through the mix alone the net learns (almost) nothing; its own loss gives it a gradient
    assert _net_gradient(mixed_only, batch).abs().max() < 1e-4
    assert _net_gradient(with_own, batch).abs().max() > 1e-3


def test_alpha_gets_its_own_group_without_weight_decay() -> None:
    module = make_module(alpha_lr=0.1)
    optimizer = module.configure_optimizers()
    net_group, alpha_group = optimizer.param_groups
    assert alpha_group["params"] == [module.mix.logit]
    assert alpha_group["lr"] == 0.1 and alpha_group["weight_decay"] == 0.0
    assert net_group["lr"] == 1e-2 and net_group["weight_decay"] == 1e-4
    assert len(net_group["params"]) == len(list(module.net.parameters()))


def test_scheduler_partial_gets_the_total_steps(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    seen: list[int] = []

    def scheduler(optimizer: torch.optim.Optimizer, total_steps: int):
        seen.append(total_steps)
        return torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=total_steps)

    module = make_module(scheduler=scheduler)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_datamodule(MemoryStore(3)))
    assert seen == [4]  # 8 patches / batch 2
    assert trainer.optimizers[0].param_groups[0]["lr"] < 1e-2
