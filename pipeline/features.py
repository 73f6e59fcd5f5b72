"""Turns the model's named raw inputs into one dense matrix, and describes them for the serving signature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from pipeline.config import FeatureConfig


def feature_spec(feature: FeatureConfig) -> tf.TensorSpec:
    """The serving input of a feature: `[batch]` for a scalar column, `[batch, dim]` for a vector."""
    shape = [None] if feature.dim == 1 else [None, feature.dim]
    return tf.TensorSpec(shape, tf.float32, name=feature.name)


def feature_specs(features: Sequence[FeatureConfig]) -> dict[str, tf.TensorSpec]:
    return {feature.name: feature_spec(feature) for feature in features}


@keras.saving.register_keras_serializable(package="mtl")
class FeatureEncoder(keras.layers.Layer):
    """Concatenates the numeric features, in config order, into `[batch, sum of dims]`.

    Input: a dict `{name: [batch] or [batch, dim]}` holding at least the configured features.
    """

    def __init__(self, features: Sequence[FeatureConfig], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = tuple(features)
        self.output_dim = sum(feature.dim for feature in self.features)

    def call(self, inputs: Mapping[str, Any]) -> Any:
        columns = []
        for feature in self.features:
            value = ops.cast(inputs[feature.name], "float32")
            columns.append(ops.reshape(value, (-1, feature.dim)))
        return columns[0] if len(columns) == 1 else ops.concatenate(columns, axis=-1)

    def get_config(self) -> dict[str, Any]:
        features = [{"name": f.name, "kind": f.kind, "dim": f.dim} for f in self.features]
        return {**super().get_config(), "features": features}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeatureEncoder:
        config = dict(config)
        config["features"] = [FeatureConfig(**f) for f in config["features"]]
        return cls(**config)
