"""python -m cascade.predict on tiny cases with an untrained (but real) cascade checkpoint."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cascade.checkpoint import CascadeModel, save_checkpoint
from cascade.inference import cascade as cascade_inference
from cascade.inference.precision import cpu_computes_bf16
from cascade.inference.settings import InferenceSettings
from cascade.nn.attention_unet3d import AttentionUNet3d
from cascade.nn.members import CascadeNets
from cascade.nn.residual_mix import LearnableResidualMix
from cascade.nn.unet2d import UNet2d
from cascade.predict import main as predict

NET = {"num_classes": 4, "filters": 4, "depth": 2, "norm": "instance", "activation": "leaky_relu"}
SETTINGS = {
    "preprocessing": {"margin": 2, "lower_percentile": 0.5, "upper_percentile": 99.5},
    "slab_depth": 3,
    "views": ["axial", "sagittal", "coronal"],
    "slab_size": [24, 24],
    "patch_size": [16, 16, 16],
    "inference": {
        "overlap": 0.5,
        "roi_margin": 4,
        "window_batch_size": 2,
        "slab_batch_size": 16,
        "tta": False,
    },
    "min_enhancing_voxels": None,
}


def write_checkpoint(path: Path, settings: dict) -> Path:
    """An untrained (but real) tiny cascade saved as cascade.ckpt with `settings`."""
    stage1, stage2 = UNet2d(in_channels=12, **NET), AttentionUNet3d(in_channels=8, **NET)
    networks = {
        "stage1": {"_target_": "cascade.nn.unet2d.UNet2d", "in_channels": 12, **NET},
        "stage2": {
            "_target_": "cascade.nn.attention_unet3d.AttentionUNet3d",
            "in_channels": 8,
            **NET,
        },
        "mix": {"_target_": "cascade.nn.residual_mix.LearnableResidualMix", "init": 0.5},
    }
    save_checkpoint(
        path,
        CascadeModel(
            [CascadeNets(stage1, stage2, LearnableResidualMix(0.5))],
            InferenceSettings.from_stored(settings),
        ),
        networks,
    )
    return path


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "cascade.ckpt", SETTINGS)


def _args(checkpoint: Path, source: Path, output: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(output),
            "--device", "cpu", *extra]  # fmt: skip


def test_predictions_keep_geometry_and_label_convention(checkpoint, tmp_path, write_case) -> None:
    data, output = tmp_path / "data", tmp_path / "seg"
    files_2020 = write_case(data, naming="brats2020", case_id="A", shape=(24, 26, 20))
    t1 = nib.load(files_2020["t1"])
    t1.header.set_qform(t1.affine, code=1)
    t1.header.set_sform(t1.affine, code=2)
    nib.save(t1, files_2020["t1"])
    write_case(data, naming="brats2023", case_id="B", shape=(24, 26, 20))
    assert predict(_args(checkpoint, data, output, "--overlays")) == 0

    written, source = nib.load(output / "A.nii.gz"), nib.load(files_2020["t1"])
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
    assert written.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2, 4}
    assert set(np.unique(np.asanyarray(nib.load(output / "B-seg.nii.gz").dataobj))) <= {0, 1, 2, 3}
    assert (output / "A.png").stat().st_size > 0


def test_a_folder_of_linked_case_folders_is_predicted(checkpoint, tmp_path, write_case) -> None:
    subset, output = tmp_path / "subset", tmp_path / "seg"
    subset.mkdir()
    for case_id in ("A", "B"):
        folder = write_case(tmp_path / "store", case_id=case_id)["t1"].parent
        (subset / case_id).symlink_to(folder)
    assert predict(_args(checkpoint, subset, output)) == 0
    assert sorted(path.name for path in output.iterdir()) == ["A.nii.gz", "B.nii.gz", "volumes.csv"]


def test_a_bad_case_is_skipped_in_one_line_and_leaves_no_file(
    checkpoint, tmp_path, write_case, capsys
) -> None:
    data, output = tmp_path / "data", tmp_path / "seg"
    write_case(data, case_id="good", shape=(24, 24, 16))
    write_case(data, case_id="bad", shape=(24, 24, 16), arrays={"flair": np.zeros((24, 24, 16))})
    assert predict(_args(checkpoint, data, output)) == 1
    printed = capsys.readouterr().out
    problem = [line for line in printed.splitlines() if "bad_flair" in line]
    assert len(problem) == 1 and "all zero" in problem[0].lower()
    assert sorted(path.name for path in output.iterdir()) == ["good.nii.gz", "volumes.csv"]


def test_a_flat_modality_is_skipped_in_one_line_and_leaves_no_file(
    checkpoint, tmp_path, write_case, capsys
) -> None:
    # one value over the whole brain (a mask saved as FLAIR): it cannot be z-scored
    data, output = tmp_path / "data", tmp_path / "seg"
    flat = np.zeros((24, 24, 16), np.float32)
    flat[4:20, 4:20, 3:13] = 5.0
    write_case(data, case_id="good", shape=(24, 24, 16))
    write_case(data, case_id="flat", shape=(24, 24, 16), arrays={"flair": flat})
    assert predict(_args(checkpoint, data, output)) == 1
    printed = capsys.readouterr().out
    problem = [line for line in printed.splitlines() if "flat_flair" in line]
    assert len(problem) == 1 and "no spread" in problem[0]
    assert "Traceback" not in printed
    assert sorted(path.name for path in output.iterdir()) == ["good.nii.gz", "volumes.csv"]


def test_existing_predictions_are_skipped_unless_overwrite(
    checkpoint, tmp_path, write_case
) -> None:
    data, output = tmp_path / "data", tmp_path / "seg"
    write_case(data, case_id="A", shape=(24, 24, 16))
    output.mkdir()
    (output / "A.nii.gz").write_bytes(b"placeholder")
    assert predict(_args(checkpoint, data, output)) == 0
    assert (output / "A.nii.gz").read_bytes() == b"placeholder"
    assert predict(_args(checkpoint, data, output, "--overwrite")) == 0
    assert nib.load(output / "A.nii.gz").shape == (24, 24, 16)


def test_a_file_that_is_not_a_cascade_checkpoint_is_refused(tmp_path, write_case, capsys) -> None:
    write_case(tmp_path / "data", case_id="A")
    foreign = tmp_path / "model.ckpt"
    foreign.write_bytes(b"\x80\x04not a checkpoint")
    assert predict(_args(foreign, tmp_path / "data", tmp_path / "seg")) == 2
    assert "model.ckpt" in capsys.readouterr().out
    assert not (tmp_path / "seg").exists()


def test_a_volume_summary_is_written_beside_the_predictions(checkpoint, tmp_path, write_case):
    data, output = tmp_path / "data", tmp_path / "seg"
    write_case(data, case_id="A", shape=(24, 26, 20))
    write_case(data, case_id="B", shape=(24, 26, 20))
    assert predict(_args(checkpoint, data / "A", output)) == 0
    assert predict(_args(checkpoint, data, output)) == 0  # B added, A kept from the first call

    lines = (output / "volumes.csv").read_text().splitlines()
    assert lines[0] == "case_id,file,volume_ml_wt,volume_ml_tc,volume_ml_et"
    rows = [line.split(",") for line in lines[1:]]
    assert [row[0] for row in rows] == ["A", "B"]
    written = np.asanyarray(nib.load(output / "A.nii.gz").dataobj)
    assert float(rows[0][2]) == pytest.approx(np.count_nonzero(written) / 1000.0)  # 1 mm voxels


def test_a_decathlon_case_is_predicted_in_its_own_convention(checkpoint, tmp_path) -> None:
    """MSD Task01: one 4D image per case, channels named in dataset.json; the 3D segmentation
    takes the image's grid and MSD's label values (1 edema, 2 non-enhancing, 3 enhancing)."""
    from tests.data.release_layouts import msd_task01

    root = msd_task01(tmp_path / "msd")
    assert predict(_args(checkpoint, root, tmp_path / "seg")) == 0
    image = nib.load(root / "imagesTs" / "BRATS_485.nii.gz")
    written = nib.load(tmp_path / "seg" / "BRATS_485.nii.gz")
    assert written.shape == image.shape[:3]
    np.testing.assert_allclose(written.affine, image.affine)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2, 3}
    assert sorted(path.name for path in (tmp_path / "seg").glob("*.nii.gz")) == [
        "BRATS_001.nii.gz", "BRATS_002.nii.gz", "BRATS_485.nii.gz"
    ]  # fmt: skip


def test_exact_runs_fp32_and_the_default_cpu_path_segments_alike(
    checkpoint, tmp_path, write_case, monkeypatch
) -> None:
    """--exact predicts with the eager fp32 nets; without it a CPU takes the fast bf16 path
    (where it computes bf16 natively), whose labels agree with the exact ones."""
    data = tmp_path / "data"
    write_case(data, naming="brats2020", case_id="A", shape=(24, 26, 20))
    used = []
    original = cascade_inference.CascadePredictor.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        used.append(self.autocast)

    monkeypatch.setattr(cascade_inference.CascadePredictor, "__init__", recording_init)
    assert predict(_args(checkpoint, data, tmp_path / "exact", "--exact", "--threads", "1")) == 0
    assert predict(_args(checkpoint, data, tmp_path / "fast")) == 0
    assert used == [None, torch.bfloat16 if cpu_computes_bf16() else None]
    exact = np.asanyarray(nib.load(tmp_path / "exact" / "A.nii.gz").dataobj)
    fast = np.asanyarray(nib.load(tmp_path / "fast" / "A.nii.gz").dataobj)
    assert exact.shape == fast.shape and np.mean(exact == fast) > 0.97


def _fixed_network_output(monkeypatch) -> None:
    """The nets 'predict' a tumor (edema around 8 enhancing voxels) and a stray edema blob far
    from it, on whatever preprocessed grid the case has; Stage 2 leaves the prior as it is."""

    def prior(self, member, image: torch.Tensor) -> torch.Tensor:
        classes = torch.zeros(image.shape[1:], dtype=torch.long)
        classes[2:10, 2:10, 2:8] = 2
        classes[5:7, 5:7, 4:6] = 3
        classes[-4:-2, -4:-2, -4:-2] = 2
        return torch.nn.functional.one_hot(classes, 4).movedim(-1, 0).float()

    monkeypatch.setattr(cascade_inference.CascadePredictor, "_stage1_prior", prior)
    monkeypatch.setattr(
        cascade_inference.CascadePredictor, "_stage2", lambda self, member, image, prior, box: prior
    )


def _labels(output: Path) -> np.ndarray:
    return np.asanyarray(nib.load(output / "A.nii.gz").dataobj)


def test_no_postprocessing_writes_the_networks_own_output(
    tmp_path, write_case, monkeypatch
) -> None:
    """A model stored with the largest-component rule drops the stray blob; --no-postprocessing
    keeps it, so the network itself can be scored."""
    checkpoint = write_checkpoint(
        tmp_path / "cascade.ckpt", {**SETTINGS, "largest_tumor_component": True}
    )
    write_case(tmp_path / "data", case_id="A", shape=(24, 26, 20))
    _fixed_network_output(monkeypatch)
    stored, raw = tmp_path / "stored", tmp_path / "raw"
    assert predict(_args(checkpoint, tmp_path / "data", stored)) == 0
    assert predict(_args(checkpoint, tmp_path / "data", raw, "--no-postprocessing")) == 0

    stray = 2 * 2 * 2
    assert np.count_nonzero(_labels(raw)) - np.count_nonzero(_labels(stored)) == stray
    assert np.array_equal(
        _labels(raw) != _labels(stored), (_labels(stored) == 0) & (_labels(raw) == 2)
    )


@pytest.mark.parametrize(
    ("stored", "option", "enhancing_kept"),
    [(None, "100", False), (100, "0", True), (100, None, False), (None, None, True)],
)
def test_min_enhancing_voxels_overrides_the_stored_threshold(
    tmp_path, write_case, monkeypatch, stored, option, enhancing_kept
) -> None:
    """8 enhancing voxels: kept below a threshold of 0 (off), relabelled as necrosis (file
    value 1) under 100, whichever of the stored value and the option decides."""
    checkpoint = write_checkpoint(
        tmp_path / "cascade.ckpt", {**SETTINGS, "min_enhancing_voxels": stored}
    )
    write_case(tmp_path / "data", case_id="A", shape=(24, 26, 20))
    _fixed_network_output(monkeypatch)
    extra = ("--min-enhancing-voxels", option) if option is not None else ()
    assert predict(_args(checkpoint, tmp_path / "data", tmp_path / "seg", *extra)) == 0

    labels = _labels(tmp_path / "seg")
    assert np.count_nonzero(labels == 4) == (8 if enhancing_kept else 0)
    assert np.count_nonzero(labels == 1) == (0 if enhancing_kept else 8)


def test_min_enhancing_voxels_and_no_postprocessing_exclude_each_other(
    checkpoint, tmp_path, capsys
) -> None:
    with pytest.raises(SystemExit):
        predict(_args(checkpoint, tmp_path, tmp_path / "seg", "--no-postprocessing",
                      "--min-enhancing-voxels", "5"))  # fmt: skip
    assert "not allowed with" in capsys.readouterr().err


def test_several_checkpoints_predict_as_one_ensemble(tmp_path, write_case, monkeypatch) -> None:
    """Three checkpoints: all call block A edema, the first two block B, the first alone block C.
    Their mean keeps A and B (3/3, 2/3) and drops C (1/3); the first checkpoint alone keeps all."""
    paths = [write_checkpoint(tmp_path / f"m{index}.ckpt", SETTINGS) for index in range(3)]
    write_case(tmp_path / "data", case_id="A", shape=(24, 26, 20))

    def prior(self, member, image: torch.Tensor) -> torch.Tensor:
        votes = self.members.index(member)
        classes = torch.zeros(image.shape[1:], dtype=torch.long)
        classes[1:4, 1:4, 1:4] = 2
        if votes < 2:
            classes[6:9, 6:9, 6:9] = 2
        if votes < 1:
            classes[11:14, 11:14, 11:14] = 2
        return torch.nn.functional.one_hot(classes, 4).movedim(-1, 0).float()

    monkeypatch.setattr(cascade_inference.CascadePredictor, "_stage1_prior", prior)
    monkeypatch.setattr(
        cascade_inference.CascadePredictor, "_stage2", lambda self, member, image, p, box: p
    )
    alone, together = tmp_path / "alone", tmp_path / "together"
    assert predict(_args(paths[0], tmp_path / "data", alone, "--no-postprocessing")) == 0
    arguments = _args(paths[0], tmp_path / "data", together, "--no-postprocessing")
    at = arguments.index(str(paths[0]))
    assert predict([*arguments[: at + 1], *map(str, paths[1:]), *arguments[at + 1 :]]) == 0
    blocks = 27
    assert np.count_nonzero(_labels(alone) == 2) == 3 * blocks
    assert np.count_nonzero(_labels(together) == 2) == 2 * blocks
    assert not ((_labels(together) > 0) & (_labels(alone) == 0)).any()


def test_checkpoints_with_other_settings_do_not_join(tmp_path, write_case, capsys) -> None:
    first = write_checkpoint(tmp_path / "a.ckpt", SETTINGS)
    other = write_checkpoint(tmp_path / "b.ckpt", {**SETTINGS, "largest_tumor_component": True})
    write_case(tmp_path / "data", case_id="A", shape=(24, 26, 20))
    arguments = _args(first, tmp_path / "data", tmp_path / "seg")
    at = arguments.index(str(first))
    assert predict([*arguments[: at + 1], str(other), *arguments[at + 1 :]]) == 2
    message = capsys.readouterr().out.strip()
    assert message == (
        f"error: {other}: largest_tumor_component not as in {first}; "
        "an ensemble's members share their settings"
    )
    assert not (tmp_path / "seg").exists()
