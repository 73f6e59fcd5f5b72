"""The runner: an Estimator-like owner of `model_dir` and of the training and evaluation loops.

The loop is a TF2 custom loop (`tf.function` + `strategy.run`) rather than `keras.Model.fit`, which fails
under `MultiWorkerMirroredStrategy` with Keras 3 (keras-team/keras#20585). Several steps run per
`tf.function` call, so Python is entered once per report or checkpoint, not once per step.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from pipeline import distribute, early_stopping, experts_report, export, heads
from pipeline import model_dir as model_dir_files
from pipeline.checks import check_positive_int
from pipeline.config import ExperimentConfig
from pipeline.errors import ConfigError, ModelDirError, TrainingDiverged, TrainingStopped
from pipeline.models import model_fn
from pipeline.optimizers import decays_over_the_run, learning_rate_schedule, make_optimizer, set_learning_rate
from pipeline.progress import PassProgress, TrainingProgress
from pipeline.warm_start import WarmStartReport, warm_start

# (input context, batches already trained) -> batches of (features, labels, weights); see `pipeline.data`.
InputFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]

BEST_DIR = "best"
OTHER_WORKER_STOPPED = "another worker's signal"
CHECKPOINT_CHOICES = "latest, best or a step number"


class Estimator:
    """Trains, evaluates and exports one model in `model_dir`, resuming from its latest checkpoint.

    Args:
        config: the experiment; it must match the config already saved in `model_dir`, if any.
        model_dir: checkpoints, TensorBoard events, `config.json` and `eval_results.json` go here.
        strategy: a `tf.distribute.Strategy`; by default chosen from the environment.
        warm_start_from: a `model_dir` or checkpoint whose variables of equal name and shape initialise a
            `model_dir` without checkpoints (see `pipeline.warm_start`); ignored when resuming.
        warm_start_optimizer: also carry the source's optimizer state (its step and slots).
        checkpoint: the checkpoint to load when `model_dir` has any: `latest` (to train on), or `best` or a
            step (to evaluate or export; see `restore`).

    Raises:
        ConfigError: `config` is invalid or differs from the model saved in `model_dir`.
        ModelDirError: `checkpoint` names a checkpoint `model_dir` does not hold.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        model_dir: str | os.PathLike,
        strategy: tf.distribute.Strategy | None = None,
        warm_start_from: str | os.PathLike | None = None,
        warm_start_optimizer: bool = False,
        checkpoint: str = "latest",
    ) -> None:
        self.config = config.validate()
        self.model_dir = model_dir_files.check_usable(model_dir)
        model_dir_files.check_same_model(self.model_dir, config)
        self.strategy = strategy or distribute.select_strategy()
        self.is_chief = distribute.is_chief(self.strategy)
        keras.utils.set_random_seed(config.train.seed)
        with self.strategy.scope():
            self.model = model_fn(config.model)
            self.optimizer = make_optimizer(config.train)
            self.optimizer.build(self.model.trainable_variables)
            self.global_step = tf.Variable(
                0,
                dtype=tf.int64,
                trainable=False,
                name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        self._checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, global_step=self.global_step
        )
        # Off the chief, checkpoints still have to be written (they are collective under
        # MultiWorkerMirroredStrategy) but into a scratch directory nobody reads.
        self._scratch = None if self.is_chief else tempfile.TemporaryDirectory(prefix="mtl-worker-")
        checkpoint_dir = self.model_dir if self._scratch is None else Path(self._scratch.name)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint,
            directory=str(checkpoint_dir),
            max_to_keep=config.train.keep_checkpoint_max,
            step_counter=self.global_step,
        )
        # The best evaluation's checkpoint lives apart, where `keep_checkpoint_max` does not reach it.
        self._best_manager = tf.train.CheckpointManager(
            self._checkpoint,
            directory=str(checkpoint_dir / BEST_DIR),
            max_to_keep=1,
            step_counter=self.global_step,
        )
        self.warm_start_report: WarmStartReport | None = None
        self._detached = False  # whether the loaded checkpoint is not the latest
        trained = model_dir_files.latest_checkpoint(self.model_dir) is not None
        if trained or checkpoint != "latest":
            self.restore(checkpoint)
        elif warm_start_from is not None:
            with self.strategy.scope():
                self.warm_start_report = warm_start(
                    self.model, self.optimizer, warm_start_from, warm_start_optimizer
                )
            for line in self.warm_start_report.lines():
                logging.info("%s", line)
        self._train_steps_fn: Callable | None = None
        self._eval_batch_fn: Callable | None = None
        self._eval_metrics = self.model.task_loss.create_metrics()
        self._stop_reason: str | None = None
        # The schedule of the run being trained: one that decays over the run needs its max_steps.
        self._schedule_steps: int | None = None
        self.schedule = None if decays_over_the_run(config.train) else learning_rate_schedule(config.train)

    # -- checkpoints ------------------------------------------------------------------------------

    def _restore(self, path: str) -> None:
        model_dir_files.restore(self._checkpoint, path)
        logging.info("Restored %s (step %d).", path, self.step)

    @property
    def step(self) -> int:
        return int(self.global_step.numpy())

    @property
    def learning_rate(self) -> float:
        """The rate of the next training step, as the schedule gives it.

        Raises:
            ConfigError: the schedule decays over the run, and no run (`max_steps`) was trained yet.
        """
        if self.schedule is None:
            raise ConfigError("The schedule decays over the run: its rates are known once a run trains.")
        return float(self.schedule(self.optimizer.iterations))

    def _schedule_run(self, max_steps: int) -> None:
        """Fits a schedule that decays over the run to a run ending at `max_steps`."""
        if not decays_over_the_run(self.config.train) or self._schedule_steps == max_steps:
            return
        self.schedule = learning_rate_schedule(self.config.train, max_steps)
        self._schedule_steps = max_steps
        self._train_steps_fn = None  # traced with the previous schedule

    def _require_trained(self) -> None:
        if model_dir_files.latest_checkpoint(self.model_dir) is None:
            raise ModelDirError(f"No checkpoint in {self.model_dir}; train there first.")

    def checkpoint_path(self, checkpoint: str = "latest") -> str:
        """The checkpoint `latest`, `best` (the best evaluation of `train_and_evaluate`) or `<step>` names.

        Raises:
            ModelDirError: there is no such checkpoint; the message lists the steps there are.
        """
        self._require_trained()
        if checkpoint == "latest":
            return model_dir_files.latest_checkpoint(self.model_dir)
        if checkpoint == "best":
            best = tf.train.latest_checkpoint(str(self.model_dir / BEST_DIR))
            if best is None:
                raise ModelDirError(
                    f"{self.model_dir} has no best checkpoint: train_and_evaluate keeps one in "
                    f"{self.model_dir / BEST_DIR}."
                )
            return best
        steps = model_dir_files.checkpoint_steps(self.model_dir)
        if not checkpoint.isdigit():
            raise ModelDirError(f"The checkpoint {checkpoint!r} must be {CHECKPOINT_CHOICES}.")
        if int(checkpoint) not in steps:
            raise ModelDirError(
                f"{self.model_dir} has no checkpoint of step {checkpoint}; it has steps "
                f"{', '.join(map(str, steps))} (and latest, best)."
            )
        return str(self.model_dir / f"ckpt-{int(checkpoint)}")

    def restore(self, checkpoint: str = "latest") -> str:
        """Loads the checkpoint `checkpoint` names (see `checkpoint_path`) for evaluation or export.

        Training after restoring an older checkpoint would continue from it; `train` is meant to run on the
        latest one.
        """
        path = self.checkpoint_path(checkpoint)
        self._restore(path)
        self._detached = path != model_dir_files.latest_checkpoint(self.model_dir)
        return path

    # -- training ---------------------------------------------------------------------------------

    def _build_train_steps(self) -> Callable:
        model, optimizer, strategy, schedule = self.model, self.optimizer, self.strategy, self.schedule
        task_heads, task_loss = model.heads, model.task_loss

        def step_fn(features: dict, labels: dict, weights: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            with tf.GradientTape() as tape:
                logits = model.task_logits(features, training=True)
                loss, task_losses = task_loss(labels, weights, logits)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return loss, task_losses

        @tf.function(reduce_retracing=True)
        def train_steps(
            iterator: Any, num_steps: tf.Tensor, stop: tf.Tensor
        ) -> tuple[tf.Tensor, dict, tf.Tensor]:
            """Runs `num_steps` steps; returns the mean total and per-task losses over them, and how many
            replicas asked to stop (`stop`), in which case no replica runs a step: every worker of a
            multi-worker job learns of a signal to one of them at the same call, and they stop together."""
            votes = strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.cast(stop, tf.float32)), axis=None
            )
            num_steps = tf.where(votes > 0, tf.zeros_like(num_steps), num_steps)
            total = tf.constant(0.0)
            per_task = {head.name: tf.constant(0.0) for head in task_heads}
            for _ in tf.range(num_steps):
                features, labels, weights = next(iterator)
                set_learning_rate(optimizer, schedule)
                loss, task_losses = strategy.run(step_fn, args=(features, labels, weights))
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
                per_task = {
                    name: per_task[name]
                    + strategy.reduce(tf.distribute.ReduceOp.SUM, task_losses[name], axis=None)
                    for name in per_task
                }
                self.global_step.assign_add(1)
            steps = tf.maximum(tf.cast(num_steps, tf.float32), 1.0)
            return total / steps, {name: value / steps for name, value in per_task.items()}, votes

        return train_steps

    def _summary_writer(self, name: str) -> tf.summary.SummaryWriter:
        if not self.is_chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(str(self.model_dir / name))

    def _stop_if_asked(self) -> None:
        """Between evaluation batches or before an export, a process training alone stops at once when asked:
        the checkpoint of its step is saved already. Workers of a multi-worker job evaluate together, so
        they stop at their next group of training steps, together."""
        if self._stop_reason and not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise TrainingStopped(self.step, self._stop_reason)

    def request_stop(self, reason: str) -> None:
        """Asks `train` to stop after the running group of steps, save a checkpoint and raise
        `TrainingStopped`. Safe to call from a signal handler. Under multi-worker training the other
        workers stop at the same step."""
        self._stop_reason = reason

    def train(self, input_fn: InputFn, max_steps: int) -> dict[str, Any]:
        """Trains until the global step reaches `max_steps` (a total, as in the Estimator).

        A `model_dir` already at or past `max_steps` is left as it is. The input function is told how many
        steps were already trained, so a resumed run sees the batches an uninterrupted run would have seen
        without reading through the ones before.

        Returns:
            `{"global_step", "loss", "task_losses", "examples_per_sec"}` of the last report, with
            `steady_examples_per_sec` from the first report to the last (start-up excluded), or just
            `{"global_step"}` when there was nothing to train.

        Raises:
            TrainingStopped: `request_stop` was called; a checkpoint of the step reached was saved.
        """
        self._stop_reason = None
        return self._train(input_fn, max_steps, max_steps)

    def _train(self, input_fn: InputFn, until: int, max_steps: int) -> dict[str, Any]:
        """Trains up to step `until`, reporting progress towards `max_steps`."""
        check_positive_int("max_steps", max_steps)
        if self._detached:
            raise ModelDirError(
                f"The loaded checkpoint (step {self.step}) is not the latest of {self.model_dir}; training "
                "goes on from the latest one, with a new Estimator."
            )
        start = self.step
        if start >= until:
            logging.info("Already at step %d >= %d; nothing to train.", start, until)
            return {"global_step": start}
        if self.is_chief:
            model_dir_files.save_config(self.model_dir, self.config)
        self._schedule_run(max_steps)
        if self._train_steps_fn is None:
            self._train_steps_fn = self._build_train_steps()
        train_config = self.config.train
        dataset = self.strategy.distribute_datasets_from_function(lambda context: input_fn(context, start))
        iterator = iter(dataset)
        progress = TrainingProgress(start, max_steps, train_config.batch_size, self._summary_writer("train"))
        logging.info(
            "Training %s from step %d to %d (batch %d) in %s",
            self.config.model.architecture,
            start,
            until,
            train_config.batch_size,
            self.model_dir,
        )
        step, result = start, {}
        boundaries = (train_config.log_every_steps, train_config.save_checkpoints_steps)
        while step < until:
            next_stop = min([until] + [(step // every + 1) * every for every in boundaries])
            total, task_losses, stop_votes = self._train_steps_fn(
                iterator, tf.constant(next_stop - step), tf.constant(self._stop_reason is not None)
            )
            if float(stop_votes) > 0:
                path = self._manager.save(checkpoint_number=step)
                logging.info("Saved checkpoint %s", path)
                raise TrainingStopped(step, self._stop_reason or OTHER_WORKER_STOPPED)
            if not math.isfinite(float(total)):
                raise self._diverged(step, self.step, task_losses)
            step = self.step
            if step % train_config.log_every_steps == 0 or step == until:
                task_values = {name: float(value) for name, value in task_losses.items()}
                loss_weights = self.model.task_loss.weights_now()
                progress.report(step, float(total), task_values, self.learning_rate, loss_weights)
                result = {
                    "global_step": step,
                    "loss": float(total),
                    "task_losses": task_values,
                    "examples_per_sec": progress.examples_per_sec,
                    "steady_examples_per_sec": progress.steady_examples_per_sec,
                }
            if step % train_config.save_checkpoints_steps == 0 or step == until:
                path = self._manager.save(checkpoint_number=step)
                logging.info("Saved checkpoint %s", path)
        return result

    def _diverged(self, last_finite: int, step: int, task_losses: dict[str, tf.Tensor]) -> TrainingDiverged:
        """The error for a loss that became NaN or infinite in the steps after `last_finite`: the model's
        variables are no longer usable, so nothing is saved and the last checkpoint stays the latest."""
        bad = {name: float(value) for name, value in task_losses.items() if not math.isfinite(float(value))}
        where = ", ".join(f"{name} {value}" for name, value in bad.items()) or "the learned loss weights"
        latest = model_dir_files.latest_checkpoint(self.model_dir)
        kept = f"the latest checkpoint is still {latest}" if latest else "no checkpoint was written"
        return TrainingDiverged(
            f"The training loss became non-finite between steps {last_finite} and {step} ({where}); "
            f"nothing of those steps was saved and {kept}. Lower the learning rate, or look for extreme "
            "values in the data."
        )

    # -- evaluation -------------------------------------------------------------------------------

    def _build_eval_batch(self) -> Callable:
        model, strategy, metrics = self.model, self.strategy, self._eval_metrics

        def logits_fn(features: dict) -> dict:
            return model.tower_logits(features, training=False)

        def gather(values: dict) -> dict:
            return {name: strategy.gather(value, axis=0) for name, value in values.items()}

        @tf.function(reduce_retracing=True)
        def eval_batch(features: Any, labels: Any, weights: Any) -> tf.Tensor:
            towers = gather(strategy.run(logits_fn, args=(features,)))
            labels, weights = gather(labels), gather(weights)
            logits = model.task_logits_from_towers(towers)
            model.task_loss.update_metrics(metrics, labels, weights, logits, towers)
            return tf.shape(next(iter(labels.values())))[0]

        return eval_batch

    def evaluate(self, input_fn: InputFn, split: str = "eval", files: tuple[str, ...] = ()) -> dict[str, Any]:
        """Computes each task's metrics, on that task's labelled rows, over one pass of `input_fn`.

        Writes the results to `model_dir/<split>_results.json` and as TensorBoard scalars under `<split>/`.

        Args:
            input_fn: the split's input function.
            split: the split's name (`eval`, `test`), under which the results are kept.
            files: the files the split was read from, recorded with the results.

        Returns:
            `{"global_step", "split", "files", "examples", "loss", "tasks": {task: {metric: value}}}`, where
            `loss` is the task-weighted total of the task losses and each task's `examples` counts the rows
            labelled for it.

        Raises:
            ModelDirError: `model_dir` holds no checkpoint.
        """
        self._require_trained()
        if self._eval_batch_fn is None:
            self._eval_batch_fn = self._build_eval_batch()
        metrics = self._eval_metrics
        for task_metrics in metrics.values():
            for metric in task_metrics.values():
                metric.reset_state()
        started = time.perf_counter()
        examples = 0
        progress = None
        dataset = self.strategy.distribute_datasets_from_function(lambda context: input_fn(context, 0))
        for features, labels, weights in dataset:
            self._stop_if_asked()
            progress = progress or PassProgress(
                f"Evaluating the {split} split at step {self.step}", "examples"
            )
            examples += int(self._eval_batch_fn(features, labels, weights))
            progress.update(examples)
        tasks = {
            name: {
                metric_name: int(metric.result()) if metric_name == heads.EXAMPLES else float(metric.result())
                for metric_name, metric in task.items()
            }
            for name, task in metrics.items()
        }
        results = {
            "global_step": self.step,
            "split": split,
            "files": list(files),
            "examples": examples,
            "loss": self.model.task_loss.combine({name: values["loss"] for name, values in tasks.items()}),
            "tasks": tasks,
        }
        logging.info(
            "Evaluated %d %s examples at step %d in %.1fs: %s",
            examples,
            split,
            self.step,
            time.perf_counter() - started,
            "; ".join(
                f"{name} "
                + " ".join(
                    f"{metric} {value}" if isinstance(value, int) else f"{metric} {value:.4g}"
                    for metric, value in values.items()
                )
                for name, values in tasks.items()
            ),
        )
        if self.is_chief:
            results_path = self.model_dir / model_dir_files.results_file(split)
            model_dir_files.write_json_atomically(results_path, results)
            with self._summary_writer(split).as_default(step=self.step):
                tf.summary.scalar("loss/total", results["loss"])
                for name, values in tasks.items():
                    for metric_name, value in values.items():
                        tf.summary.scalar(f"{metric_name}/{name}", value)
        return results

    def report_experts(self, input_fn: InputFn, split: str = "eval") -> dict[str, Any]:
        """What the gates do on `split` (see `pipeline.experts_report`), written to `model_dir/experts.json`
        and `model_dir/experts.png`.

        Raises:
            ValueError: the model mixes no experts with gates.
        """
        dataset = input_fn(tf.distribute.InputContext(), 0)
        report = experts_report.gate_statistics(self.model, (inputs for inputs, _, _ in dataset))
        report = {"global_step": self.step, "split": split, **report}
        if self.is_chief:
            model_dir_files.write_json_atomically(self.model_dir / experts_report.REPORT_FILE, report)
            experts_report.draw(report, self.model_dir / experts_report.PICTURE_FILE)
        return report

    def evaluate_continuously(
        self,
        input_fn: InputFn,
        max_steps: int,
        timeout_secs: float,
        split: str = "eval",
        files: tuple[str, ...] = (),
        present_at_start: list[int] | None = None,
        poll_secs: float = 1.0,
    ) -> Iterator[dict[str, Any]]:
        """Evaluates the latest checkpoint, then every newer one once, oldest first, as it appears (the
        Estimator's evaluator task); yields each evaluation's results.

        Args:
            present_at_start: the checkpoint steps there were when the evaluator started (default: those
                there are now); of these only the latest is evaluated.

        Stops after evaluating a checkpoint at or past `max_steps`, or when no new checkpoint appeared for
        `timeout_secs`. A checkpoint deleted (by `keep_checkpoint_max`) before its turn is skipped with a
        warning.

        Raises:
            ModelDirError: a checkpoint does not hold this model.
        """
        check_positive_int("max_steps", max_steps)
        if present_at_start is None:
            present_at_start = model_dir_files.checkpoint_steps(self.model_dir)
        after_step = present_at_start[-2] if len(present_at_start) > 1 else -1
        waited_since = time.monotonic()
        while True:
            for step in model_dir_files.checkpoint_steps(self.model_dir):
                if step <= after_step:
                    continue
                every = self.config.train.save_checkpoints_steps
                missed = [
                    s for s in range((after_step // every + 1) * every, step, every) if s > after_step >= 0
                ]
                if missed:
                    logging.warning(
                        "%d checkpoint(s) of steps %d to %d were deleted (keep_checkpoint_max) before they "
                        "could be evaluated.",
                        len(missed),
                        missed[0],
                        missed[-1],
                    )
                after_step = step
                path = str(self.model_dir / f"ckpt-{step}")
                try:
                    self._restore(path)
                except tf.errors.OpError:
                    logging.warning("Skipped %s, deleted before it could be evaluated.", path)
                    continue
                yield self.evaluate(input_fn, split, files)
                waited_since = time.monotonic()
                if step >= max_steps:
                    return
            if time.monotonic() - waited_since > timeout_secs:
                logging.info("No new checkpoint in %s for %gs; stopping.", self.model_dir, timeout_secs)
                return
            time.sleep(poll_secs)

    def train_and_evaluate(
        self,
        train_input_fn: InputFn,
        eval_input_fn: InputFn,
        max_steps: int,
        eval_every_steps: int,
        eval_files: tuple[str, ...] = (),
        export_best: str | os.PathLike | None = None,
        exports_to_keep: int | None = None,
    ) -> dict[str, Any]:
        """Alternates training for `eval_every_steps` and evaluating, until `max_steps` or early stopping.

        Every evaluation is kept in `model_dir/eval_history.json`. The checkpoint of the best one by
        `train.best_metric` is kept in `model_dir/best/` (with `best.json`), where `keep_checkpoint_max`
        does not delete it, and with `export_best` each new best is also exported there as a new version.
        With `train.early_stopping_metric`, training stops once it has not improved for
        `train.early_stopping_patience` evaluations; the history keeps that decision, so a rerun of the same
        `model_dir` stops at once (unless given more patience).

        Returns:
            The last evaluation's results, with `stopped_early` holding the reason when training stopped
            early.

        Raises:
            TrainingStopped: `request_stop` was called during training.
        """
        check_positive_int("eval_every_steps", eval_every_steps)
        check_positive_int("max_steps", max_steps)
        self._stop_reason = None
        history = model_dir_files.read_json(self.model_dir / model_dir_files.EVAL_HISTORY_FILE, default=[])
        history = [results for results in history if results["global_step"] <= self.step]
        reason = self._stop_early(history)
        if reason:
            logging.info("Stopped early before: %s. Nothing to train.", reason)
            return {**history[-1], "stopped_early": reason}
        # A run stopped (by a signal) at an evaluation step before evaluating it evaluates it now, so its
        # history, early stopping and best checkpoint are those of an uninterrupted run.
        evaluated = bool(history) and history[-1]["global_step"] == self.step
        results = history[-1] if evaluated else {}
        at_evaluation = self.step % eval_every_steps == 0 or self.step >= max_steps
        if self.step and at_evaluation and not evaluated:
            results, history, reason = self._evaluate_and_decide(
                eval_input_fn, eval_files, history, export_best, exports_to_keep
            )
            if reason:
                return results
        while self.step < max_steps:
            target = min(max_steps, (self.step // eval_every_steps + 1) * eval_every_steps)
            self._train(train_input_fn, target, max_steps)
            results, history, reason = self._evaluate_and_decide(
                eval_input_fn, eval_files, history, export_best, exports_to_keep
            )
            if reason:
                return results
        return results

    def _evaluate_and_decide(
        self,
        eval_input_fn: InputFn,
        eval_files: tuple[str, ...],
        history: list[dict[str, Any]],
        export_best: str | os.PathLike | None,
        exports_to_keep: int | None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
        """Evaluates, records the evaluation, keeps the checkpoint if it is the best, and decides whether to
        stop early; returns the results (with `stopped_early` when stopping), the history and the reason."""
        results = self.evaluate(eval_input_fn, "eval", eval_files)
        history = [r for r in history if r["global_step"] != results["global_step"]] + [results]
        if self.is_chief:
            model_dir_files.write_json_atomically(self.model_dir / model_dir_files.EVAL_HISTORY_FILE, history)
        self._keep_if_best(results, export_best, exports_to_keep)
        reason = self._stop_early(history)
        if reason:
            logging.info("Stopping early at step %d: %s.", self.step, reason)
            results = {**results, "stopped_early": reason}
        return results, history, reason

    def _stop_early(self, history: list[dict[str, Any]]) -> str | None:
        train = self.config.train
        if not train.early_stopping_metric or not history:
            return None
        return early_stopping.stop_reason(
            history,
            train.early_stopping_metric,
            train.early_stopping_patience,
            train.early_stopping_min_delta,
            train.early_stopping_mode,
        )

    def best_metric(self) -> tuple[str, str]:
        """The metric the best checkpoint is chosen by, and its direction (`max` or `min`)."""
        train = self.config.train
        metric = train.best_metric or train.early_stopping_metric or "loss"
        mode = train.early_stopping_mode if metric == train.early_stopping_metric else "auto"
        return metric, early_stopping.direction(metric, mode)

    def _keep_if_best(
        self, results: dict[str, Any], export_best: str | os.PathLike | None, exports_to_keep: int | None
    ) -> None:
        metric, mode = self.best_metric()
        value = early_stopping.metric_value(results, metric)
        if math.isnan(value):
            logging.warning("%s is NaN at step %d: not a best checkpoint.", metric, self.step)
            return
        best_file = self.model_dir / BEST_DIR / model_dir_files.BEST_FILE
        best = model_dir_files.read_json(best_file, default=None)
        if best is not None and (best["metric"], best["mode"]) == (metric, mode):
            if not early_stopping.improves(value, best["value"], mode):
                return
        elif best is not None:
            logging.warning(
                "The best checkpoint was chosen by %s (%s); from now on by %s (%s), from this evaluation on.",
                best["metric"],
                best["mode"],
                metric,
                mode,
            )
        path = self._best_manager.save(checkpoint_number=self.step)
        if not self.is_chief:
            return
        model_dir_files.write_json_atomically(
            best_file,
            {
                "metric": metric,
                "mode": mode,
                "value": value,
                "global_step": self.step,
                "checkpoint": Path(path).name,
                "results": results,
            },
        )
        logging.info("New best %s %.6g at step %d: kept in %s", metric, value, self.step, path)
        if export_best is not None:
            self._stop_if_asked()
            export.export_saved_model(self.model, export_best, exports_to_keep=exports_to_keep)

    # -- export -----------------------------------------------------------------------------------

    def export(self, export_base: str | os.PathLike, exports_to_keep: int | None = None) -> Path:
        """Writes the loaded checkpoint (the latest, unless `restore` chose another) as
        `<export_base>/<version>/` (see `pipeline.export`)."""
        self._require_trained()
        return export.export_saved_model(self.model, export_base, exports_to_keep=exports_to_keep)
