import json
from pathlib import Path

import pytest

from cascade.report import main


def _job(sweep: Path, number: int, overrides: list[str], dice: float) -> None:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    metrics = {"dice_wt": dice, "dice_tc": dice, "dice_et": dice, "dice_mean": dice, "alpha": 0.5}
    (job / "metrics.json").write_text(json.dumps(metrics))


def test_seeds_are_grouped_and_overrides_become_columns(tmp_path: Path, capsys) -> None:
    _job(tmp_path, 0, ["+experiment=smoke", "model.stage2.filters=8", "seed=0"], 0.6)
    _job(tmp_path, 1, ["+experiment=smoke", "model.stage2.filters=8", "seed=1"], 0.8)
    _job(tmp_path, 2, ["+experiment=smoke", "model.stage2.filters=16", "seed=0"], 0.9)
    assert main([str(tmp_path)]) == 0
    table = (tmp_path / "report.md").read_text()
    assert "model.stage2.filters" in table.splitlines()[0]
    assert "experiment" not in table  # the same in every job: not a column
    row_8 = next(line for line in table.splitlines() if "| 8 |" in line)
    assert "| 2 |" in row_8 and "0.700 ± 0.141" in row_8
    assert "0.900 ± 0.000" in table
    csv_text = (tmp_path / "report.csv").read_text()
    assert csv_text.splitlines()[0].startswith("model.stage2.filters,seeds,dice_wt")


def test_empty_sweep_is_an_error(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 1
    assert "no job with a metrics.json" in capsys.readouterr().out


@pytest.mark.parametrize("rank", ["1"])
def test_ddp_child_reruns_the_parent_job_only(monkeypatch, rank: str) -> None:
    import sys

    from cascade.config import export_job_for_ddp_children, pin_ddp_child_to_parent_job

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    export_job_for_ddp_children(Path("/runs/multirun/0"), ["+experiment=f32_d5", "seed=1"])
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "seed=0,1", "hydra.run.dir=elsewhere"])
    pin_ddp_child_to_parent_job()  # rank 0 keeps its command line
    assert sys.argv[1] == "-m"
    monkeypatch.setenv("LOCAL_RANK", rank)
    pin_ddp_child_to_parent_job()
    assert sys.argv[1:3] == ["+experiment=f32_d5", "seed=1"]
    assert "-m" not in sys.argv
    assert "hydra.run.dir=/runs/multirun/0" in sys.argv


def test_the_table_follows_the_regions_of_the_runs() -> None:
    from cascade.report import metric_keys

    brats2024 = {"dice_wt": 0.9, "dice_tc": 0.8, "dice_et": 0.7, "dice_rc": 0.5, "dice_mean": 0.7,
                 "hd95_wt": 3.0, "hd95_tc": 4.0, "hd95_et": 5.0, "hd95_rc": 6.0, "alpha": 0.4,
                 "stage1_dice_wt": 0.8, "dice_wt_ci_low": 0.85}  # fmt: skip
    assert metric_keys(brats2024) == [
        "dice_wt", "dice_tc", "dice_et", "dice_rc", "dice_mean",
        "hd95_wt", "hd95_tc", "hd95_et", "hd95_rc", "alpha",
    ]  # fmt: skip
