"""nilearn is the `synthesis` extra: training, predicting and evaluating on real data run without
it, and asking for realistic generated cases without it says how to install it, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cascade.data
from cascade.synthesis.anatomy import MissingExtraError
from cascade.synthesis.dataset import main as synthesis_main
from cascade.synthesis.dataset import write_dataset

INSTALL_HINT = "pip install 'cascade[synthesis]'"
# None in sys.modules makes an import fail as if the package were not installed: nilearn, and
# what a plain install lacks without it (pandas and scikit-learn come only with it and the extras).
WITHOUT_NILEARN = (
    "import sys\nfor name in ('nilearn', 'sklearn', 'pandas'):\n    sys.modules[name] = None\n"
)


def run_without_nilearn(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_NILEARN + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )


def test_entry_points_and_the_data_package_import_without_nilearn() -> None:
    """Importing them would fail if any imported nilearn; cascade.data imports no generator."""
    data_modules = sorted(path.stem for path in Path(cascade.data.__file__).parent.glob("*.py"))
    assert "cases" in data_modules
    result = run_without_nilearn(
        "import importlib\n"
        "for name in ['cascade.train', 'cascade.predict', 'cascade.evaluate', 'cascade.check',\n"
        "             'cascade.report', 'cascade.pipeline', 'cascade.pipeline.prepare']:\n"
        "    importlib.import_module(name)\n"
        "before = set(sys.modules)\n"
        f"for name in {data_modules!r}:\n"
        "    importlib.import_module('cascade.data.' + name)\n"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('cascade.synthesis')))"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


@pytest.fixture
def no_nilearn(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "nilearn", None)


def test_the_phantom_needs_no_nilearn(no_nilearn, tmp_path) -> None:
    (folder,) = write_dataset(tmp_path / "cases", 1, shape=(32, 32, 32), progress=False)
    assert len(list(folder.glob("*.nii.gz"))) == 5


def test_realistic_cases_without_nilearn_say_how_to_install_it(
    no_nilearn, tmp_path, capsys
) -> None:
    with pytest.raises(MissingExtraError, match=INSTALL_HINT.replace("[", r"\[")):
        write_dataset(tmp_path / "cases", 1, shape=(48, 48, 48), generator="realistic")
    assert not (tmp_path / "cases").exists()

    arguments = ["--out", str(tmp_path / "cli"), "--cases", "1", "--generator", "realistic"]
    assert synthesis_main(arguments) == 2
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("error:") and INSTALL_HINT in line
    assert not (tmp_path / "cli").exists()


def test_training_on_realistic_cases_without_nilearn_fails_in_one_line(tmp_path) -> None:
    overrides = ["experiment=smoke", "data=realistic", "logger=none", f"cache_dir={tmp_path}",
                 f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    result = run_without_nilearn(
        f"sys.argv = ['cascade.train', *{overrides!r}]\nfrom cascade.train import main\nmain()"
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert INSTALL_HINT in line and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.nii.gz"))
