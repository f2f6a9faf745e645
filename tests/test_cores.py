"""Cores of a job from its affinity mask, its cgroup v2 quota or CASCADE_CORES."""

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from cascade import cores


def cgroup_tree(tmp_path, limits: dict[str, str]):
    """A fake /sys/fs/cgroup with cpu.max files, and /proc/self/cgroup naming its leaf."""
    root = tmp_path / "cgroup"
    for group, limit in limits.items():
        folder = root / group
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(limit + "\n")
    membership = tmp_path / "self-cgroup"
    membership.write_text("0::/job.slice/run.scope\n")
    return root, membership


def test_quota_is_the_smallest_along_the_cgroup_path(tmp_path):
    root, membership = cgroup_tree(
        tmp_path, {"job.slice": "300000 100000", "job.slice/run.scope": "150000 100000"}
    )
    assert cores.cgroup_quota_cores(root, membership) == 1.5


def test_no_quota_and_no_cgroup_v2_give_none(tmp_path):
    root, membership = cgroup_tree(tmp_path, {"job.slice/run.scope": "max 100000"})
    assert cores.cgroup_quota_cores(root, membership) is None
    membership.write_text("12:cpu,cpuacct:/docker/abc\n")  # cgroup v1 only
    assert cores.cgroup_quota_cores(root, membership) is None
    assert cores.cgroup_quota_cores(root, tmp_path / "missing") is None


def test_cores_from_the_affinity_mask_capped_by_the_quota(monkeypatch):
    monkeypatch.delenv(cores.CORES_VARIABLE, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cores, "cgroup_quota_cores", lambda: None)
    assert cores.available_cores() == 4
    monkeypatch.setattr(cores, "cgroup_quota_cores", lambda: 1.5)
    assert cores.available_cores() == 2
    monkeypatch.setattr(cores, "cgroup_quota_cores", lambda: 0.2)
    assert cores.available_cores() == 1


def test_an_explicit_setting_wins(monkeypatch):
    monkeypatch.setenv(cores.CORES_VARIABLE, "3")
    assert cores.available_cores() == 3
    assert cores.available_cores(explicit=1) == 1
    monkeypatch.setenv(cores.CORES_VARIABLE, "0")
    with pytest.raises(ValueError, match=cores.CORES_VARIABLE):
        cores.available_cores()


def test_torch_gets_every_core_and_workers_leave_one_to_training():
    assert cores.plan(2, {"stage1": 4, "stage2": 1}) == cores.JobSize(
        2, 2, {"stage1": 1, "stage2": 1}
    )
    assert cores.plan(1, {"stage1": 4, "stage2": 4}).workers == {"stage1": 0, "stage2": 0}
    assert cores.plan(1, {"stage1": 4}).torch_threads == 1
    size = cores.plan(16, {"stage1": 4, "stage2": 2})
    assert size.workers == {"stage1": 4, "stage2": 2} and size.torch_threads == 16


def test_waiting_threads_sleep_or_spin_as_chosen_unless_the_user_chose(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # as before torch is imported
    environment = {}
    cores.choose_omp_waiting("passive", environment)
    assert environment == {"OMP_WAIT_POLICY": "PASSIVE"}
    spinning = {}
    cores.choose_omp_waiting("spin", spinning)
    assert spinning == {}  # OpenMP's own default
    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    cores.choose_omp_waiting("passive", chosen)
    assert chosen == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_waiting_is_left_alone_once_torch_has_loaded_openmp():
    environment = {}
    cores.choose_omp_waiting("passive", environment)  # torch is imported by this module
    assert environment == {}


def test_the_training_entry_point_loads_torch_after_choosing_the_waiting():
    """OpenMP reads its waiting policy once, when torch loads it: cascade.train must set it
    before anything it imports loads torch."""
    probe = "import sys, cascade.train; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.split() == ["False"], result.stderr[-2000:]


@pytest.mark.parametrize(("setting", "policy"), [("passive", "PASSIVE"), ("spin", None)])
def test_the_training_entry_point_sets_the_configured_waiting(tmp_path, setting, policy):
    """The run's `omp_waiting` reaches the environment before anything loads torch (which would
    leave it unset); `stage=3` then stops the run at the config check."""
    probe = (
        "import atexit, os, runpy, sys\n"
        "atexit.register(lambda: print('policy', os.environ.get('OMP_WAIT_POLICY')))\n"
        "sys.argv[0] = 'cascade.train'\n"
        "runpy.run_module('cascade.train', run_name='__main__')\n"
    )
    overrides = ["stage=3", f"omp_waiting={setting}", f"hydra.run.dir={tmp_path}"]
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [sys.executable, "-c", probe, *overrides], env=environment, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"policy {policy}" in result.stdout.splitlines()


def test_training_config_is_sized_in_place(monkeypatch):
    monkeypatch.setenv(cores.CORES_VARIABLE, "4")
    threads = torch.get_num_threads()
    cfg = OmegaConf.create(
        {
            "trainer": {"devices": 2},
            "data": {"stage1": {"num_workers": 4}, "stage2": {"num_workers": 1}},
        }
    )
    try:
        size = cores.size_training(cfg)  # two DDP processes share the 4 cores
        assert size.cores == 2 and torch.get_num_threads() == 2
        assert cfg.data.stage1.num_workers == 1 and cfg.data.stage2.num_workers == 1
    finally:
        torch.set_num_threads(threads)
