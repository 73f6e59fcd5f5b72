"""Training progress a person can follow in the log, and the same figures as TensorBoard scalars."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping

import tensorflow as tf
from absl import logging


class TrainingProgress:
    """Logs step, percentage, losses, throughput and ETA at each report, and writes them as summaries.

    Args:
        start_step: the step training resumes from.
        max_steps: the step training stops at.
        global_batch_size: examples per step over all replicas.
        writer: where the scalars go (a no-op writer off the chief).
    """

    def __init__(
        self,
        start_step: int,
        max_steps: int,
        global_batch_size: int,
        writer: tf.summary.SummaryWriter,
    ) -> None:
        self.max_steps = max_steps
        self.global_batch_size = global_batch_size
        self.writer = writer
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._first_report: tuple[int, float] | None = None
        self.examples_per_sec = 0.0

    @property
    def steady_examples_per_sec(self) -> float:
        """Throughput from the first report to the last: without start-up (tracing, input set-up).

        Before a second report there is only the first interval, start-up included.
        """
        if self._first_report is None or self._last_step == self._first_report[0]:
            return self.examples_per_sec
        first_step, first_time = self._first_report
        return (self._last_step - first_step) * self.global_batch_size / (self._last_time - first_time)

    def report(
        self,
        step: int,
        total_loss: float,
        task_losses: Mapping[str, float],
        learning_rate: float,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        """Logs a line and writes the scalars; `loss_weights` are learned task loss weights, if any."""
        now = time.perf_counter()
        steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self.examples_per_sec = steps_per_sec * self.global_batch_size
        self._last_step, self._last_time = step, now
        if self._first_report is None:
            self._first_report = (step, now)
        eta = datetime.timedelta(seconds=round((self.max_steps - step) / max(steps_per_sec, 1e-9)))
        tasks = "  ".join(f"{name} {value:.4f}" for name, value in task_losses.items())
        weights = "  ".join(f"{name} {value:.3f}" for name, value in (loss_weights or {}).items())
        logging.info(
            "step %d/%d (%d%%)  loss %.4f  [%s]%s  %s examples/s  %.1f steps/s  ETA %s",
            step,
            self.max_steps,
            100 * step // self.max_steps,
            total_loss,
            tasks,
            f"  loss weights [{weights}]" if weights else "",
            f"{self.examples_per_sec:,.0f}",
            steps_per_sec,
            eta,
        )
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss/total", total_loss)
            for name, value in task_losses.items():
                tf.summary.scalar(f"loss/{name}", value)
            tf.summary.scalar("learning_rate", learning_rate)
            for name, value in (loss_weights or {}).items():
                tf.summary.scalar(f"loss_weight/{name}", value)
            tf.summary.scalar("steps_per_sec", steps_per_sec)
            tf.summary.scalar("examples_per_sec", self.examples_per_sec)
        self.writer.flush()


class PassProgress:
    """Logs how far a pass over data (reading, statistics, conversion, evaluation) has come, at most every
    `every_secs`, so a long pass is never silent; a short one logs nothing.

    Args:
        what: what the pass does, e.g. "Reading train.csv".
        unit: what is counted, e.g. "rows".
        total: the count at the end, when known beforehand (adds a percentage).
    """

    def __init__(self, what: str, unit: str, total: int | None = None, every_secs: float = 5.0) -> None:
        self.what, self.unit, self.total, self.every_secs = what, unit, total, every_secs
        self._started = self._last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self._last < self.every_secs:
            return
        self._last = now
        share = f" ({100 * done // self.total}%)" if self.total else ""
        elapsed = now - self._started
        logging.info(
            "%s: %s %s%s in %.0fs, %s %s/s",
            self.what,
            f"{done:,}",
            self.unit,
            share,
            elapsed,
            f"{done / elapsed:,.0f}",
            self.unit,
        )
