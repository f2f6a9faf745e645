import numpy as np
import pytest
import torch
from torch import nn

from cascade.data.slabs import view_axis
from cascade.inference.multiview import (
    predict_prior,
    predict_view,
    slab_batch_size,
    write_priors,
)
from cascade.nn.unet2d import UNet2d
from cascade.sampling.pool import CasePool
from cascade.sampling.slabs import TUMOR_GROUP, SlabDraws

VIEWS = ["axial", "sagittal", "coronal"]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return UNet2d(20, 4, filters=4, depth=3, norm="instance", activation="leaky_relu").eval()


@pytest.mark.parametrize("view", VIEWS)
def test_prior_shape_and_normalised_for_every_view(view: str) -> None:
    image = torch.randn(4, 11, 9, 7)
    prior = predict_prior(_net(), image, 5, [view], batch_size=3, device="cpu", fp16=True)
    assert prior.shape == (4, 11, 9, 7) and prior.dtype == torch.float32
    torch.testing.assert_close(prior.sum(0), torch.ones(11, 9, 7))


def test_three_view_prior_is_the_mean_of_the_views() -> None:
    net, image = _net(), np.random.default_rng(0).normal(size=(4, 10, 8, 6)).astype(np.float32)
    prior = predict_prior(net, image, 5, VIEWS, batch_size=4, device="cpu", fp16=False)
    tensor = torch.from_numpy(image)
    views = [predict_view(net, tensor, 5, view, 4, False) for view in VIEWS]
    torch.testing.assert_close(prior, sum(views) / 3)
    torch.testing.assert_close(prior.sum(0), torch.ones(10, 8, 6))


def test_prior_does_not_depend_on_the_slab_batch() -> None:
    net, image = _net(), torch.randn(4, 10, 8, 7)
    one_at_a_time = predict_prior(net, image, 5, VIEWS, batch_size=1, device="cpu", fp16=False)
    batched = predict_prior(net, image, 5, VIEWS, batch_size=4, device="cpu", fp16=False)
    torch.testing.assert_close(one_at_a_time, batched)


@pytest.mark.parametrize("view", VIEWS)
def test_mirrored_view_is_the_mean_over_in_plane_flips_and_never_flips_the_slab_axis(
    view: str,
) -> None:
    net, image = _net(), torch.randn(4, 10, 8, 7)
    axis = 1 + view_axis(view)
    in_plane = [a for a in (1, 2, 3) if a != axis]
    expected = []
    for flips in ((), (in_plane[0],), (in_plane[1],), tuple(in_plane)):
        flipped = image.flip(flips) if flips else image
        softmax = predict_view(net, flipped, 5, view, 4, False)
        expected.append(softmax.flip(flips) if flips else softmax)
    mirrored = predict_view(net, image, 5, view, 4, False, mirror=True)
    torch.testing.assert_close(mirrored, sum(expected) / 4)
    # a random net is not flip-equivariant: the mirrored prior differs from the plain one
    assert not torch.allclose(mirrored, expected[0], atol=1e-4)
    torch.testing.assert_close(mirrored.sum(0), torch.ones(10, 8, 7))


def test_mirroring_leaves_a_flip_equivariant_net_unchanged() -> None:
    net = nn.Conv2d(20, 4, kernel_size=1).eval()  # per pixel: every flip commutes with it
    image = torch.randn(4, 9, 8, 6)
    plain = predict_prior(net, image, 5, VIEWS, batch_size=2, device="cpu", fp16=False)
    mirrored = predict_prior(
        net, image, 5, VIEWS, batch_size=2, device="cpu", fp16=False, mirror=True
    )
    torch.testing.assert_close(mirrored, plain)


def test_slab_batch_size_by_device_and_for_older_settings() -> None:
    settings = {"slab_batch_size": 32, "cpu_slab_batch_size": 1}
    assert slab_batch_size(settings, "cpu") == 1
    assert slab_batch_size(settings, torch.device("cuda", 0)) == 32
    assert slab_batch_size({"slab_batch_size": 16}, "cpu") == 16


class _Store:
    def __init__(self, image: np.ndarray, label: np.ndarray) -> None:
        self.volume, self.labels, self.priors = image, label, {}

    def image(self, case_id):
        return self.volume

    def label(self, case_id):
        return self.labels

    def has_prior(self, case_id, tag):
        return (case_id, tag) in self.priors

    def write_prior(self, case_id, tag, prior):
        self.priors[(case_id, tag)] = prior


@pytest.mark.parametrize("view", VIEWS)
def test_inference_slabs_match_training_slabs(view: str) -> None:
    """The net sees the same channel layout at inference as the data module gives in training."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(4, 9, 8, 7)).astype(np.float32)
    label = np.zeros((9, 8, 7), np.uint8)
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[view]
    label[tuple(slice(1, 2) if a == axis else slice(None) for a in range(3))] = 1  # slice 1
    plane = {"axial": (9, 8), "coronal": (9, 7), "sagittal": (8, 7)}[view]
    pool = CasePool(1, (9, 8, 7), 5, [TUMOR_GROUP], "cpu", seed=0)
    pool.insert(
        [torch.from_numpy(image).half(), torch.from_numpy(label)[None]], torch.from_numpy(label)
    )
    # on tumor, the whole plane as the window: the slab centred on slice 1
    training_slab = SlabDraws(5, [view], plane, 1.0, 0.0)(pool, 1, None)["image"][0]

    seen = []

    class Recorder(nn.Module):
        def forward(self, batch):
            seen.append(batch.clone())
            return torch.zeros(batch.shape[0], 4, *batch.shape[2:])

    stored = torch.from_numpy(image).half().float()  # the pool keeps float16, as the cache
    predict_view(Recorder(), stored, 5, view, batch_size=2, fp16=False)
    torch.testing.assert_close(seen[0][1], training_slab)


def test_write_priors_skips_existing_and_stores_the_prior_in_steps_of_1_255() -> None:
    image = np.random.default_rng(0).normal(size=(4, 8, 8, 6)).astype(np.float32)
    store = _Store(image, None)
    store.priors[("done", "t1")] = "untouched"
    write_priors(_net(), store, ["new", "done"], "t1", 5, VIEWS, 4, "cpu", False, progress=False)
    assert store.priors[("done", "t1")] == "untouched"
    prior = store.priors[("new", "t1")]
    assert prior.dtype == np.uint8 and prior.shape == (4, 8, 8, 6)
    expected = predict_prior(_net(), torch.from_numpy(image), 5, VIEWS, 4, "cpu", False)
    np.testing.assert_array_equal(prior, np.rint(expected.numpy() * 255))


def test_plane_padding_keeps_shape() -> None:
    prior = predict_prior(
        _net(), torch.randn(4, 9, 7, 5), 5, VIEWS[:1], 4, "cpu", False, plane_size=(16, 16)
    )
    assert prior.shape == (4, 9, 7, 5)
