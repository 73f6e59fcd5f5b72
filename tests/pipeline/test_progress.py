import pytest
import tensorflow as tf
from absl import logging

from pipeline import progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def test_throughput_eta_and_steady_rate_without_start_up(clock, monkeypatch):
    lines = []
    monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
    tracker = progress.TrainingProgress(0, 1000, 50, tf.summary.create_noop_writer())
    clock.now += 10.0  # the first 100 steps include tracing: 500 examples/s
    tracker.report(100, 0.5, {"y1": 0.3, "y2": 0.2}, 0.001)
    assert tracker.examples_per_sec == pytest.approx(500.0)
    assert tracker.steady_examples_per_sec == pytest.approx(500.0)  # one interval: all there is
    clock.now += 1.0
    tracker.report(200, 0.4, {"y1": 0.25, "y2": 0.15}, 0.001)
    clock.now += 4.0
    tracker.report(400, 0.3, {"y1": 0.2, "y2": 0.1}, 0.001)
    assert tracker.examples_per_sec == pytest.approx(200 * 50 / 4.0)
    assert tracker.steady_examples_per_sec == pytest.approx(300 * 50 / 5.0)
    assert lines[-1] == (
        "step 400/1000 (40%)  loss 0.3000  [y1 0.2000  y2 0.1000]  "
        "2,500 examples/s  50.0 steps/s  ETA 0:00:12"
    )


def test_summaries_are_written(clock, tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    tracker = progress.TrainingProgress(0, 10, 8, writer)
    clock.now += 2.0
    tracker.report(10, 1.5, {"y1": 1.0}, 0.01)
    events = [
        (value.tag, float(tf.make_ndarray(value.tensor)))
        for path in tmp_path.iterdir()
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    ]
    assert dict(events) == pytest.approx(
        {
            "loss/total": 1.5,
            "loss/y1": 1.0,
            "learning_rate": 0.01,
            "steps_per_sec": 5.0,
            "examples_per_sec": 40.0,
        }
    )


def test_a_pass_over_data_logs_at_most_every_interval_with_share_and_rate(clock, monkeypatch):
    lines = []
    monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
    reading = progress.PassProgress("Reading train.csv", "rows", total=1000, every_secs=5.0)
    clock.now += 4.0
    reading.update(100)  # a short pass logs nothing
    assert lines == []
    clock.now += 1.0
    reading.update(250)
    clock.now += 1.0
    reading.update(300)  # one second after the last line
    assert lines == ["Reading train.csv: 250 rows (25%) in 5s, 50 rows/s"]
    unknown = progress.PassProgress("Evaluating the eval split at step 10", "examples", every_secs=5.0)
    clock.now += 10.0
    unknown.update(12_345)
    assert lines[-1] == "Evaluating the eval split at step 10: 12,345 examples in 10s, 1,234 examples/s"
