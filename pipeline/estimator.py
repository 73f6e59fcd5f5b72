"""The runner: an Estimator-like owner of `model_dir` and of the training and evaluation loops.

The loop is a TF2 custom loop (`tf.function` + `strategy.run`) rather than `keras.Model.fit`, which fails
under `MultiWorkerMirroredStrategy` with Keras 3 (keras-team/keras#20585). Several steps run per
`tf.function` call, so Python is entered once per report or checkpoint, not once per step.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from pipeline import distribute, export, heads
from pipeline import model_dir as model_dir_files
from pipeline.checks import check_positive_int
from pipeline.config import ExperimentConfig, TrainConfig
from pipeline.errors import ModelDirError
from pipeline.models import model_fn
from pipeline.progress import TrainingProgress

# (input context, batches already trained) -> batches of (features, labels, weights); see `pipeline.data`.
InputFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]

_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adagrad": keras.optimizers.Adagrad,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


def _make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    return _OPTIMIZERS[train.optimizer](learning_rate=train.learning_rate)


class Estimator:
    """Trains, evaluates and exports one model in `model_dir`, resuming from its latest checkpoint.

    Args:
        config: the experiment; it must match the config already saved in `model_dir`, if any.
        model_dir: checkpoints, TensorBoard events, `config.json` and `eval_results.json` go here.
        strategy: a `tf.distribute.Strategy`; by default chosen from the environment.

    Raises:
        ConfigError: `config` is invalid or differs from the model saved in `model_dir`.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        model_dir: str | os.PathLike,
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        self.config = config.validate()
        self.model_dir = model_dir_files.check_usable(model_dir)
        model_dir_files.check_same_model(self.model_dir, config)
        self.strategy = strategy or distribute.select_strategy()
        self.is_chief = distribute.is_chief(self.strategy)
        keras.utils.set_random_seed(config.train.seed)
        with self.strategy.scope():
            self.model = model_fn(config.model)
            self.optimizer = _make_optimizer(config.train)
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
        self._restore_latest()
        self._train_steps_fn: Callable | None = None
        self._eval_batch_fn: Callable | None = None
        self._eval_metrics = {head.name: head.create_metrics() for head in self.model.heads}

    # -- checkpoints ------------------------------------------------------------------------------

    def _restore_latest(self) -> None:
        latest = tf.train.latest_checkpoint(str(self.model_dir))
        if latest is None:
            return
        self._checkpoint.restore(latest).assert_existing_objects_matched()
        # The learning rate is a flag, not state: a resumed run may lower it.
        self.optimizer.learning_rate = self.config.train.learning_rate
        logging.info("Restored %s (step %d).", latest, int(self.global_step.numpy()))

    @property
    def step(self) -> int:
        return int(self.global_step.numpy())

    def _require_trained(self) -> None:
        if tf.train.latest_checkpoint(str(self.model_dir)) is None:
            raise ModelDirError(
                f"No checkpoint in --model_dir={self.model_dir}; run `mtl train` there first."
            )

    # -- training ---------------------------------------------------------------------------------

    def _build_train_steps(self) -> Callable:
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        task_heads = model.heads

        def step_fn(features: dict, labels: dict, weights: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            with tf.GradientTape() as tape:
                logits = model.task_logits(features, training=True)
                loss, task_losses = heads.total_loss(task_heads, labels, weights, logits)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return loss, task_losses

        @tf.function(reduce_retracing=True)
        def train_steps(iterator: Any, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict]:
            """Runs `num_steps` steps; returns the mean total and per-task losses over them."""
            total = tf.constant(0.0)
            per_task = {head.name: tf.constant(0.0) for head in task_heads}
            for _ in tf.range(num_steps):
                features, labels, weights = next(iterator)
                loss, task_losses = strategy.run(step_fn, args=(features, labels, weights))
                total += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
                per_task = {
                    name: per_task[name]
                    + strategy.reduce(tf.distribute.ReduceOp.SUM, task_losses[name], axis=None)
                    for name in per_task
                }
                self.global_step.assign_add(1)
            steps = tf.cast(num_steps, tf.float32)
            return total / steps, {name: value / steps for name, value in per_task.items()}

        return train_steps

    def _summary_writer(self, name: str) -> tf.summary.SummaryWriter:
        if not self.is_chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(str(self.model_dir / name))

    def train(self, input_fn: InputFn, max_steps: int) -> dict[str, Any]:
        """Trains until the global step reaches `max_steps` (a total, as in the Estimator).

        A `model_dir` already at or past `max_steps` is left as it is. The input function is told how many
        steps were already trained, so a resumed run sees the batches an uninterrupted run would have seen
        without reading through the ones before.

        Returns:
            `{"global_step", "loss", "task_losses", "examples_per_sec"}` of the last report, with
            `steady_examples_per_sec` from the first report to the last (start-up excluded), or just
            `{"global_step"}` when there was nothing to train.
        """
        check_positive_int("max_steps", max_steps)
        start = self.step
        if start >= max_steps:
            logging.info("Already at step %d >= --max_steps=%d; nothing to train.", start, max_steps)
            return {"global_step": start}
        if self.is_chief:
            model_dir_files.save_config(self.model_dir, self.config)
        if self._train_steps_fn is None:
            self._train_steps_fn = self._build_train_steps()
        train_config = self.config.train
        dataset = self.strategy.distribute_datasets_from_function(
            lambda context: input_fn(context, start)
        )
        iterator = iter(dataset)
        progress = TrainingProgress(
            start, max_steps, self.config.train.batch_size, self._summary_writer("train")
        )
        logging.info(
            "Training %s from step %d to %d (batch %d) in %s",
            self.config.model.architecture,
            start,
            max_steps,
            train_config.batch_size,
            self.model_dir,
        )
        step, result = start, {}
        boundaries = (train_config.log_every_steps, train_config.save_checkpoints_steps)
        while step < max_steps:
            next_stop = min([max_steps] + [(step // every + 1) * every for every in boundaries])
            total, task_losses = self._train_steps_fn(iterator, tf.constant(next_stop - step))
            step = self.step
            if step % train_config.log_every_steps == 0 or step == max_steps:
                task_values = {name: float(value) for name, value in task_losses.items()}
                progress.report(step, float(total), task_values, float(self.optimizer.learning_rate.numpy()))
                result = {
                    "global_step": step,
                    "loss": float(total),
                    "task_losses": task_values,
                    "examples_per_sec": progress.examples_per_sec,
                    "steady_examples_per_sec": progress.steady_examples_per_sec,
                }
            if step % train_config.save_checkpoints_steps == 0 or step == max_steps:
                path = self._manager.save(checkpoint_number=step)
                logging.info("Saved checkpoint %s", path)
        return result

    # -- evaluation -------------------------------------------------------------------------------

    def _build_eval_batch(self) -> Callable:
        model, strategy, metrics = self.model, self.strategy, self._eval_metrics

        def logits_fn(features: dict) -> dict:
            return model.task_logits(features, training=False)

        def gather(values: dict) -> dict:
            return {name: strategy.gather(value, axis=0) for name, value in values.items()}

        @tf.function(reduce_retracing=True)
        def eval_batch(features: Any, labels: Any, weights: Any) -> tf.Tensor:
            logits = gather(strategy.run(logits_fn, args=(features,)))
            labels, weights = gather(labels), gather(weights)
            for head in model.heads:
                head.update_metrics(
                    metrics[head.name], labels[head.label], logits[head.name], weights[head.label]
                )
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
        dataset = self.strategy.distribute_datasets_from_function(lambda context: input_fn(context, 0))
        for features, labels, weights in dataset:
            examples += int(self._eval_batch_fn(features, labels, weights))
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
            "loss": sum(head.weight * tasks[head.name]["loss"] for head in self.model.heads),
            "tasks": tasks,
        }
        logging.info(
            "Evaluated %d %s examples at step %d in %.1fs: %s",
            examples,
            split,
            self.step,
            time.perf_counter() - started,
            "; ".join(
                f"{name} " + " ".join(f"{metric} {value:.4g}" for metric, value in values.items())
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

    def train_and_evaluate(
        self,
        train_input_fn: InputFn,
        eval_input_fn: InputFn,
        max_steps: int,
        eval_every_steps: int,
        eval_files: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Alternates training for `eval_every_steps` and evaluating, until `max_steps`.

        Returns:
            The last evaluation's results.
        """
        check_positive_int("eval_every_steps", eval_every_steps)
        check_positive_int("max_steps", max_steps)
        results: dict[str, Any] = {}
        while True:
            target = min(max_steps, (self.step // eval_every_steps + 1) * eval_every_steps)
            self.train(train_input_fn, target)
            results = self.evaluate(eval_input_fn, "eval", eval_files)
            if self.step >= max_steps:
                return results

    # -- export -----------------------------------------------------------------------------------

    def export(self, export_base: str | os.PathLike, exports_to_keep: int | None = None) -> Path:
        """Writes the latest checkpoint as `<export_base>/<version>/` (see `pipeline.export`)."""
        self._require_trained()
        return export.export_saved_model(self.model, export_base, exports_to_keep=exports_to_keep)
