import os
import subprocess
import sys

import pytest

from cascade.io import atomic_path, remove_stale_temporaries, temporary_sibling, write_text_atomic


def test_a_write_replaces_the_target_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "out" / "metrics.json"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [path.name for path in target.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_old_target(tmp_path) -> None:
    target = tmp_path / "case_seg.nii.gz"
    target.write_text("complete")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        assert temporary.name.endswith("case_seg.nii.gz") and temporary.name.startswith(".")
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "complete"
    assert [path.name for path in tmp_path.iterdir()] == ["case_seg.nii.gz"]


def test_stale_temporaries_of_dead_processes_go_and_live_ones_stay(tmp_path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = ended.stdout.strip()
    live = temporary_sibling(tmp_path / "case_a")
    live.mkdir()
    dead = tmp_path / live.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-", 1)
    dead.mkdir()
    (dead / "image.npy").write_bytes(b"partial")
    remove_stale_temporaries(tmp_path)
    assert live.exists() and not dead.exists()
