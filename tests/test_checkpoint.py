from pathlib import Path

import pytest
import torch

from cascade.checkpoint import (
    CascadeModel,
    CheckpointError,
    build_predictor,
    load_checkpoint,
    save_checkpoint,
)
from cascade.data.cases import MODALITIES
from cascade.inference.settings import InferenceSettings
from cascade.nn.attention_unet3d import AttentionUNet3d
from cascade.nn.members import CascadeNets
from cascade.nn.residual_mix import LearnableResidualMix
from cascade.nn.unet2d import UNet2d

NETWORKS = {
    "stage1": {
        "_target_": "cascade.nn.unet2d.UNet2d",
        "in_channels": 12,
        "num_classes": 4,
        "filters": 4,
        "depth": 2,
        "norm": "instance",
        "activation": "leaky_relu",
    },
    "stage2": {
        "_target_": "cascade.nn.attention_unet3d.AttentionUNet3d",
        "in_channels": 8,
        "num_classes": 4,
        "filters": 4,
        "depth": 2,
        "norm": "instance",
        "activation": "leaky_relu",
    },
    "mix": {"_target_": "cascade.nn.residual_mix.LearnableResidualMix", "init": 0.3},
}
SETTINGS = InferenceSettings(
    preprocessing={"margin": 2, "lower_percentile": 0.5, "upper_percentile": 99.5},
    slab_depth=3,
    views=("axial",),
    slab_size=(24, 24),
    patch_size=(16, 16, 16),
    overlap=0.5,
    roi_margin=4,
    window_batch_size=2,
    slab_batch_size=16,
    cpu_slab_batch_size=1,
    tta=False,
    stage1_tta=True,
    min_enhancing_voxels=None,
    largest_tumor_component=True,
    labels="brats2023",
)


def _model() -> CascadeModel:
    kwargs = {k: v for k, v in NETWORKS["stage1"].items() if k != "_target_"}
    stage1 = UNet2d(**kwargs)
    kwargs = {k: v for k, v in NETWORKS["stage2"].items() if k != "_target_"}
    stage2 = AttentionUNet3d(**kwargs)
    return CascadeModel([CascadeNets(stage1, stage2, LearnableResidualMix(0.3))], SETTINGS)


def test_round_trip_restores_weights_and_settings(tmp_path: Path) -> None:
    model = _model()
    save_checkpoint(tmp_path / "cascade.ckpt", model, NETWORKS)
    loaded = load_checkpoint(tmp_path / "cascade.ckpt")
    assert len(loaded.members) == 1
    for name in ("stage1", "stage2", "mix"):
        original = getattr(model.members[0], name).state_dict()
        restored = getattr(loaded.members[0], name).state_dict()
        assert original.keys() == restored.keys()
        assert all(torch.equal(original[key], restored[key]) for key in original)
    assert loaded.settings == SETTINGS
    assert float(loaded.members[0].mix.alpha.detach()) == pytest.approx(0.3, abs=1e-6)


def test_an_ensemble_keeps_each_members_own_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    first, second = _model(), _model()
    second.members[0].mix = LearnableResidualMix(0.7)
    ensemble = CascadeModel(first.members + second.members, SETTINGS)
    save_checkpoint(tmp_path / "cascade.ckpt", ensemble, NETWORKS)
    loaded = load_checkpoint(tmp_path / "cascade.ckpt")
    assert len(loaded.members) == 2
    for original, restored in zip(ensemble.members, loaded.members, strict=True):
        for name in ("stage1", "stage2", "mix"):
            stored = getattr(restored, name).state_dict()
            assert all(
                torch.equal(v, stored[k]) for k, v in getattr(original, name).state_dict().items()
            )
    alphas = [float(member.mix.alpha.detach()) for member in loaded.members]
    assert alphas == pytest.approx([0.3, 0.7], abs=1e-6)
    assert len(build_predictor(loaded, "cpu").members) == 2


def test_a_one_cascade_file_of_the_first_version_is_still_read(tmp_path: Path) -> None:
    model = _model()
    nets = model.members[0]
    torch.save(
        {
            "format": "cascade-checkpoint",
            "version": 1,
            "modalities": list(MODALITIES),
            "networks": NETWORKS,
            "settings": SETTINGS.to_stored(),
            "state_dicts": {name: getattr(nets, name).state_dict() for name in NETWORKS},
        },
        tmp_path / "old.ckpt",
    )
    loaded = load_checkpoint(tmp_path / "old.ckpt")
    assert len(loaded.members) == 1
    first = next(iter(nets.stage2.state_dict()))
    assert torch.equal(
        loaded.members[0].stage2.state_dict()[first], nets.stage2.state_dict()[first]
    )


def test_weights_that_do_not_fit_the_networks_are_named(tmp_path: Path) -> None:
    model = _model()
    smaller = {**NETWORKS, "stage2": {**NETWORKS["stage2"], "filters": 2}}
    save_checkpoint(tmp_path / "cascade.ckpt", model, smaller)
    with pytest.raises(CheckpointError, match=r"cascade.ckpt: the stage2 weights do not fit"):
        load_checkpoint(tmp_path / "cascade.ckpt")


def test_foreign_file_is_refused_with_its_name(tmp_path: Path) -> None:
    foreign = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="model.ckpt: not a cascade checkpoint"):
        load_checkpoint(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_networks_outside_cascade_are_not_instantiated(tmp_path: Path) -> None:
    networks = {**NETWORKS, "mix": {"_target_": "os.system", "command": "true"}}
    save_checkpoint(tmp_path / "cascade.ckpt", _model(), networks)
    with pytest.raises(CheckpointError, match="not a cascade network"):
        load_checkpoint(tmp_path / "cascade.ckpt")


def test_pickled_objects_are_not_loaded(tmp_path: Path) -> None:
    payload = {"format": "cascade-checkpoint", "version": 1, "evil": Path("/etc/passwd")}
    torch.save(payload, tmp_path / "pickled.ckpt")
    with pytest.raises(CheckpointError, match="pickled.ckpt"):
        load_checkpoint(tmp_path / "pickled.ckpt")


def _nested(node: object, depth: int) -> object:
    """`node` wrapped `depth` times in dicts and lists, as a config can nest it."""
    for level in range(depth):
        node = {"inner": node} if level % 2 == 0 else [node]
    return node


HOSTILE_TARGETS = [
    ("builtins.open", {"file": "{pwned}", "mode": "w"}),
    ("pathlib.Path.touch", {"self": "{pwned}"}),
    ("numpy.save", {"file": "{pwned}", "arr": [1]}),
]


@pytest.mark.parametrize(("target", "arguments"), HOSTILE_TARGETS)
@pytest.mark.parametrize("network", ["stage1", "stage2", "mix"])
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_a_nested_target_anywhere_is_refused_and_runs_nothing(
    tmp_path: Path, target, arguments, network, depth
) -> None:
    pwned = tmp_path / "pwned"
    hostile = {
        "_target_": target,
        **{
            k: str(v).replace("{pwned}", str(pwned)) if isinstance(v, str) else v
            for k, v in arguments.items()
        },
    }
    key = "filters" if network != "mix" else "init"
    networks = {**NETWORKS, network: {**NETWORKS[network], key: _nested(hostile, depth)}}
    save_checkpoint(tmp_path / "cascade.ckpt", _model(), networks)

    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(tmp_path / "cascade.ckpt")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'cascade.ckpt'}: network '{network}' setting '{key}'")
    assert "\n" not in message
    assert not pwned.exists()


def test_a_hostile_target_in_place_of_a_network_runs_nothing(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    for target, arguments in HOSTILE_TARGETS:
        node = {
            "_target_": target,
            **{k: str(pwned) if v == "{pwned}" else v for k, v in arguments.items()},
        }
        save_checkpoint(tmp_path / "cascade.ckpt", _model(), {**NETWORKS, "stage2": node})
        with pytest.raises(
            CheckpointError, match="network 'stage2' names .* not a cascade network"
        ):
            load_checkpoint(tmp_path / "cascade.ckpt")
        assert not pwned.exists()


def test_arguments_hydra_would_act_on_are_refused(tmp_path: Path) -> None:
    for key in ("_partial_", "_args_", "_recursive_", "_convert_"):
        networks = {**NETWORKS, "mix": {**NETWORKS["mix"], key: True}}
        save_checkpoint(tmp_path / "cascade.ckpt", _model(), networks)
        with pytest.raises(CheckpointError, match=f"setting '{key}' is not a plain value"):
            load_checkpoint(tmp_path / "cascade.ckpt")


def test_settings_of_an_older_checkpoint_take_what_it_was_used_with(tmp_path: Path) -> None:
    stored = SETTINGS.to_stored()
    del stored["labels"], stored["inference"]["cpu_slab_batch_size"]
    older = InferenceSettings.from_stored(stored)
    assert older.labels == "brats2020"
    assert older.slab_batch_size_on("cpu") == older.slab_batch_size_on("cuda") == 16


def test_a_checkpoint_whose_settings_lack_a_key_is_refused_with_its_name(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "cascade.ckpt", _model(), NETWORKS)
    payload = torch.load(tmp_path / "cascade.ckpt", weights_only=True)
    del payload["settings"]["patch_size"]
    torch.save(payload, tmp_path / "cascade.ckpt")
    with pytest.raises(CheckpointError, match="cascade.ckpt: the settings have no 'patch_size'"):
        load_checkpoint(tmp_path / "cascade.ckpt")


def test_predictor_mirrors_each_stage_as_stored_and_tta_turns_both_on(tmp_path: Path) -> None:
    model = _model()  # stored: Stage-1 mirroring on, Stage-2 off
    stored = build_predictor(model, "cpu")
    assert (stored.stage1_tta, stored.tta) == (True, False)
    both = build_predictor(model, "cpu", tta=True)
    assert (both.stage1_tta, both.tta) == (True, True)
    neither = build_predictor(model, "cpu", tta=False)
    assert (neither.stage1_tta, neither.tta) == (False, False)


def test_settings_without_stage1_mirroring_load_with_it_off() -> None:
    stored = SETTINGS.to_stored()
    del stored["inference"]["stage1_tta"]
    assert InferenceSettings.from_stored(stored).stage1_tta is False
