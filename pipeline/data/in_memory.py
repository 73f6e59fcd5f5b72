"""Batches of a table held in memory: a fresh permutation every epoch and one gather per column and batch.

Element-wise `tf.data` ops (`from_tensor_slices` + `shuffle` + `batch`) cost more per example than training
these models; gathering whole batches from preprocessed tensors costs almost nothing.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from pipeline.errors import ConfigError


def _batch_indices(
    num_examples: int,
    batch_size: int,
    seed: int,
    train: bool,
    input_context: tf.distribute.InputContext | None,
    start_step: int,
) -> tf.data.Dataset:
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    replicas = input_context.num_replicas_in_sync if input_context is not None else 1
    if not train:
        indices = tf.data.Dataset.range(num_examples)
        if pipelines > 1:
            indices = indices.shard(pipelines, pipeline_id)
        return indices.batch(batch_size)
    batches_per_epoch = num_examples // batch_size
    if batches_per_epoch == 0:
        raise ConfigError(
            f"`batch_size` {batch_size} (per replica) exceeds the {num_examples} training examples."
        )

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        return tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[: batches_per_epoch * batch_size], [batches_per_epoch, batch_size])
        )

    # Batches are numbered over all pipelines; pipeline i takes i, i + n, ... Each step takes one batch per
    # replica. Resuming at `start_step` starts in the right epoch, so no batch before it is made.
    first = start_step * replicas
    first_epoch = first // batches_per_epoch
    indices = tf.data.Dataset.counter(first_epoch).flat_map(epoch_batches)
    indices = indices.skip(first - first_epoch * batches_per_epoch)
    if pipelines > 1:
        indices = indices.shard(pipelines, pipeline_id)
    return indices


def batches(
    tensors: Any,
    batch_size: int,
    seed: int,
    train: bool,
    input_context: tf.distribute.InputContext | None = None,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Batches of `tensors` (a nest of tensors sharing their first dimension).

    Training batches are whole batches of each epoch's permutation (seeded by `seed` and the epoch), repeated
    forever, sharded per input pipeline and started at `start_step`; other batches are the rows in order.
    """
    num_examples = int(tf.nest.flatten(tensors)[0].shape[0])
    indices = _batch_indices(num_examples, batch_size, seed, train, input_context, start_step)
    return indices.map(
        lambda batch: tf.nest.map_structure(lambda column: tf.gather(column, batch), tensors),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).prefetch(tf.data.AUTOTUNE)
