import json

import pytest
from lightning.pytorch.utilities import rank_zero_only

from cascade import timings
from cascade.timings import PhaseTimings


class _Clock:
    """perf_counter that advances by the given steps."""

    def __init__(self, *steps: float) -> None:
        self.now, self.steps = 0.0, list(steps)

    def __call__(self) -> float:
        self.now += self.steps.pop(0)
        return self.now


class _Metrics:
    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log_metrics(self, metrics: dict, step=None) -> None:
        self.logged.append(metrics)


def test_each_phase_is_written_in_order_with_its_rate(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(timings.time, "perf_counter", _Clock(1.0, 4.0, 1.0, 0.5))
    recorder = PhaseTimings(tmp_path)
    with caplog.at_level("INFO", logger="cascade.timings"):
        with recorder.phase("preprocessing", "cases") as phase:
            phase.count, phase.detail = 10, "6 of 16 already cached"
        with recorder.phase("stage1_fit", "samples") as phase:
            phase.count = 160
    written = json.loads((tmp_path / "timings.json").read_text())
    assert written == {
        "phases": [
            {"name": "preprocessing", "seconds": 4.0, "count": 10, "unit": "cases",
             "per_second": 2.5, "peak_memory_bytes": None, "detail": "6 of 16 already cached"},
            {"name": "stage1_fit", "seconds": 0.5, "count": 160, "unit": "samples",
             "per_second": 320.0, "peak_memory_bytes": None, "detail": None},
        ]
    }  # fmt: skip
    assert [record.getMessage() for record in caplog.records] == [
        "phase preprocessing: 4.0 s, 10 cases, 2.5 cases/s (6 of 16 already cached)",
        "phase stage1_fit: 0.5 s, 160 samples, 320 samples/s",
    ]


def test_the_logger_gets_earlier_and_later_phases(tmp_path) -> None:
    recorder = PhaseTimings(tmp_path)
    with recorder.phase("checking", "cases") as phase:
        phase.count = 3
    metrics = _Metrics()
    recorder.log_to(metrics)
    with recorder.phase("priors", "cases"):
        pass
    assert [sorted(logged) for logged in metrics.logged] == [
        ["timings/checking/per_second", "timings/checking/seconds"],
        ["timings/priors/per_second", "timings/priors/seconds"],
    ]


def test_a_failed_phase_records_nothing(tmp_path) -> None:
    recorder = PhaseTimings(tmp_path)
    with pytest.raises(RuntimeError), recorder.phase("evaluation", "cases"):
        raise RuntimeError("stopped")
    assert recorder.phases == [] and not (tmp_path / "timings.json").exists()


def test_only_rank_zero_writes(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    recorder = PhaseTimings(tmp_path)
    with recorder.phase("priors", "cases") as phase:
        phase.count = 2
    assert len(recorder.phases) == 1 and not (tmp_path / "timings.json").exists()
