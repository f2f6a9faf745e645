from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from cascade.inference.multiview import predict_prior
from cascade.lit.optim import warmup_cosine
from cascade.lit.stage1 import Stage1Module
from cascade.metrics import case_metrics
from cascade.nn.losses import DiceCELoss
from cascade.nn.unet2d import UNet2d
from cascade.pipeline.composition import fit_keeping_best
from cascade.sampling.pool import CasePool
from cascade.sampling.slabs import TUMOR_GROUP, SlabDraws
from cascade.sampling.stage1 import Stage1DataModule

SHAPE = (16, 16, 12)


class TinyStore:
    """Noisy volumes where a bright ball is tumor: edema shell, enhancing core."""

    def __init__(self, count: int) -> None:
        self.images, self.labels = {}, {}
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1)
        for index in range(count):
            rng = np.random.default_rng(index)
            centre = rng.uniform(4, 8, size=3) + [2, 2, 0]
            distance = np.linalg.norm(grid - centre, axis=-1)
            label = np.where(distance < 3.5, 2, 0).astype(np.uint8)
            label[distance < 2] = 3
            image = rng.normal(0, 0.3, size=(4, *SHAPE)).astype(np.float32)
            image += (label > 0) * 1.5 + (label == 3) * np.array([0, 2, 0, 0])[:, None, None, None]
            self.images[f"c{index}"], self.labels[f"c{index}"] = image.astype(np.float32), label

    def image(self, case_id):
        return self.images[case_id]

    def label(self, case_id):
        return self.labels[case_id]


def _mean_val_loss(module: Stage1Module, loader) -> float:
    module.eval()
    with torch.no_grad():
        losses = [module._step(batch)[0].item() for batch in loader]
    module.train()
    return float(np.mean(losses))


def _tiny_data() -> Stage1DataModule:
    return Stage1DataModule(
        store=TinyStore(4),
        train_ids=["c0", "c1", "c2"],
        val_ids=["c3"],
        slab_depth=3,
        views=["axial", "sagittal", "coronal"],
        slab_size=[16, 16],
        tumor_fraction=0.7,
        lookalike_fraction=0.0,
        lookalike_flair_z=2.0,
        lookalike_margin=4,
        train_slabs_per_epoch=40,
        batch_size=4,
        num_workers=0,
        pool_size=3,
        samples_per_case=8,
        flip_probability=0.5,
        intensity_probability=0.0,
        log_gamma=0.0,
        bias_field_coefficient=0.0,
        gamma_per_modality=False,
        seed=0,
    )


def _tiny_module(scheduler=None) -> Stage1Module:
    scheduler = scheduler or partial(torch.optim.lr_scheduler.CosineAnnealingLR)
    return Stage1Module(
        net=UNet2d(12, 4, filters=8, depth=3, norm="instance", activation="leaky_relu"),
        loss=DiceCELoss([1.0, 1.0, 1.0, 2.5]),
        optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=1e-4),
        scheduler=scheduler,
        slab_depth=3,
        plane_size=[16, 16],
    )


def test_a_few_steps_lower_the_loss() -> None:
    L.seed_everything(0, verbose=False)
    data = _tiny_data()
    module = _tiny_module()
    # the same 8 slabs of the held-out case before and after
    pool = CasePool(1, SHAPE, 5, [TUMOR_GROUP], "cpu", seed=0)
    label = torch.from_numpy(data.store.label("c3"))
    pool.insert([torch.from_numpy(data.store.image("c3")), label[None]], label)
    draws = SlabDraws(3, ["axial", "sagittal", "coronal"], [16, 16], 0.7, 0.0)
    held_out = draws(pool, 8, torch.Generator().manual_seed(0))
    slabs = [{key: value[i : i + 4] for key, value in held_out.items()} for i in (0, 4)]
    before = _mean_val_loss(module, slabs)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    after = _mean_val_loss(module, slabs)
    assert after < 0.8 * before
    metrics = trainer.callback_metrics
    for name in [
        "train_loss_epoch",
        "val_loss",
        *(f"val_dice_{r}" for r in ["wt", "tc", "et", "mean"]),
    ]:
        assert f"stage1/{name}" in metrics
    assert 0.0 <= metrics["stage1/val_dice_mean"].item() <= 1.0
    # validation scored the whole held-out case's three-view prior, as the predictor builds it
    module.eval()
    with torch.no_grad():
        prior = predict_prior(
            module.net, data.store.image("c3"), 3, module.views, 8, "cpu", False, [16, 16]
        )
    expected = case_metrics(prior.argmax(0).numpy(), data.store.label("c3"), (1.0, 1.0, 1.0))
    mean = np.mean([expected[f"dice_{region}"] for region in ("wt", "tc", "et")])
    assert metrics["stage1/val_dice_mean"].item() == pytest.approx(mean, abs=1e-5)
    # the cosine schedule spans exactly the run
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == 20


def test_weight_averaging_leaves_the_fit_with_the_averaged_weights(tmp_path) -> None:
    """The best checkpoint holds the moving average (validated as such), and the pipeline's
    fit ends with it loaded, not with the last step's weights."""
    L.seed_everything(0, verbose=False)
    module = _tiny_module(scheduler=partial(warmup_cosine, warmup_fraction=0.2))
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path, filename="best", monitor="stage1/val_dice_mean", mode="max"
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        callbacks=[checkpoint, EMAWeightAveraging(decay=0.9)],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    fit_keeping_best(trainer, module, _tiny_data())
    saved = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
    for name in ("net.head.weight", "net.stem.0.weight"):
        averaged, last = saved["state_dict"][name], saved["current_model_state"][name]
        assert not torch.allclose(averaged, last)
        assert torch.equal(module.state_dict()[name], averaged)
