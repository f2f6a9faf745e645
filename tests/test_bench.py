"""The benchmark's quick mode runs end to end and writes a consistent JSON and Markdown report."""

from __future__ import annotations

import json
import time

import pytest
import torch

from experiments.bench.__main__ import main


def test_quick_bench_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    threads = torch.get_num_threads()
    try:
        assert (
            main(["--quick", "--threads", "1", "--out", str(out), "--workdir", str(tmp_path)]) == 0
        )
    finally:
        torch.set_num_threads(threads)

    report = json.loads((out / "bench.json").read_text())
    header = report["header"]
    assert header["command"].startswith("python -m experiments.bench --quick")
    assert header["machine"]["torch"] == torch.__version__
    assert header["machine"]["device"] in (
        "cpu",
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    )
    sections = report["sections"]
    assert len(sections) == 6  # five sections, the training one with its analytic memory table

    rows = {row["name"]: row for section in sections.values() for row in section.get("rows", [])}
    assert rows["PreprocessCache.build, 1 torch thread(s)"]["s/case"] > 0
    loaders = [row for name, row in rows.items() if name.startswith("Stage-2 patches")]
    # Stage 2 at the configured workers (1 in smoke) and at 2, then 2 on each cache format
    assert len(loaders) == 4 and all(row["items/s"] > 0 for row in loaders)
    sizes = [row for name, row in rows.items() if name.startswith("cache bytes per case")]
    assert [row["x before"] for row in sizes][0] == 1 and 0 < sizes[1]["x before"] < 0.6
    steps = {row["name"]: row for row in sections["3. Training step per stage"]["rows"]}
    step = steps["Stage 2 AttentionUNet3d smoke"]
    assert step["ms/step"] > 0 and step["samples/s"] > 0
    full_volume = rows["Full-volume AttentionUNet3d smoke"]
    assert full_volume["activations fp32 GiB"] > full_volume["activations fp16 GiB"] > 0
    inference = [row for name, row in rows.items() if name.startswith("cascade smoke")]
    assert len(inference) == 3  # ROI exact and on the fast CPU path, full volume
    fast = rows["cascade smoke, Stage 2 on ROI (true tumor box, forced), fast CPU path"]
    assert fast["x exact"] > 0
    assert all(0 <= fast[f"guard {region} Dice"] <= 1 for region in ("WT", "TC", "ET"))
    for row in inference:
        parts = sum(row[f"{part} s"] for part in ("read_preprocess", "stage1", "stage2", "finish"))
        assert abs(parts - row["total s"]) < 0.05 * row["total s"] + 1e-3

    markdown = (out / "bench.md").read_text()
    assert "python -m experiments.bench --quick" in markdown
    assert f"torch {torch.__version__}" in markdown
    for title in sections:
        assert f"## {title}" in markdown
    assert "| Stage 2 AttentionUNet3d smoke |" in markdown


def test_overrides_after_the_sections_are_overrides_and_unknown_sections_fail() -> None:
    from experiments.bench.__main__ import _parse

    args = _parse(["--sections", "inference", "model.inference.slab_batch_size=64", "seed=1"])
    assert args.sections == ["inference"]
    assert args.overrides == ["model.inference.slab_batch_size=64", "seed=1"]
    assert "compile" not in _parse([]).sections and "candidates" not in _parse([]).sections
    with pytest.raises(SystemExit):
        _parse(["--sections", "networks", "speed"])


def test_case_option_takes_one_labelled_case(tmp_path, write_case) -> None:
    from experiments.bench.__main__ import _labelled_case

    paths = write_case(tmp_path / "labelled", case_id="BraTS20_Training_007")
    case = _labelled_case(paths["t1"].parent)
    assert case.case_id == "BraTS20_Training_007" and case.label == paths["label"]

    write_case(tmp_path / "unlabelled", case_id="BraTS20_Validation_001", labelled=False)
    with pytest.raises(SystemExit, match="without one"):
        _labelled_case(tmp_path / "unlabelled")
    with pytest.raises(SystemExit, match="no such folder"):
        _labelled_case(tmp_path / "empty-folder-that-does-not-exist")


def test_cpu_candidates_are_timed_against_eager_fp32() -> None:
    from experiments.bench.cpu_candidates import candidate_rows
    from experiments.bench.measure import compose

    smoke = compose(["+experiment=smoke"])
    rows = {row["name"]: row for row in candidate_rows(smoke, "smoke", 1, compile=False)}
    assert rows["Stage 1 slab: eager fp32 (--exact)"]["x eager fp32"] == 1.0
    assert rows["Stage 1 slab: channels_last fp32"]["max |logit diff|"] < 1e-3
    assert rows["Stage 2 window: eager fp32 (--exact)"]["ms"] > 0
    assert all(row["ms"] > 0 and row["x eager fp32"] > 0 for row in rows.values())


PIPELINE_COLUMNS = ("host ms/sample", "fit samples/s", "network samples/s", "fit/network")


def test_pipeline_section_times_the_fit_against_the_networks(tmp_path) -> None:
    out = tmp_path / "bench"
    threads = torch.get_num_threads()
    try:
        argv = ["--quick", "--threads", "1", "--sections", "pipeline", "--steps", "1"]
        argv += ["--warmup", "1", "--out", str(out), "--workdir", str(tmp_path)]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)

    report = json.loads((out / "bench.json").read_text())
    (section,) = report["sections"].values()
    rows = {row["name"]: row for row in section["rows"]}
    assert set(rows) == {"pipeline Stage-1", "pipeline Stage-2"}
    for row in rows.values():
        assert all(row[column] > 0 for column in PIPELINE_COLUMNS)
        assert row["fit/network"] == pytest.approx(row["fit samples/s"] / row["network samples/s"])
        assert row["host ms/sample"] == pytest.approx(
            row["main ms/sample"] + row["workers ms/sample"]
        )
    # smoke: batches of 16 slabs of 80^2 (4 modalities x 5 slices), 2 patches of 48^3
    assert rows["pipeline Stage-1"]["batch"] == "16x20x80x80"
    assert rows["pipeline Stage-2"]["batch"] == "2x4x48x48x48"
    assert rows["pipeline Stage-1"]["validation s/case"] > 0
    assert rows["pipeline Stage-1"]["priors s/case"] > 0

    markdown = (out / "bench.md").read_text()
    assert "| name | setting | " + " | ".join(PIPELINE_COLUMNS) + " |" in markdown
    assert "| pipeline Stage-1 |" in markdown and "| pipeline Stage-2 |" in markdown


def test_worker_cpu_time_is_read_from_the_descendant_processes() -> None:
    import os
    import subprocess
    import sys

    from experiments.bench.pipeline import cpu_seconds, descendants

    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", busy + "\ntime.sleep(5)"])
    try:
        time.sleep(1.0)  # the loop has run by now
        assert child.pid in descendants(os.getpid())
        assert 0.2 <= cpu_seconds({child.pid}) < 1.0
    finally:
        child.kill()
        child.wait()
