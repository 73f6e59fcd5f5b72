"""Turns the model's named raw inputs into one dense matrix, and describes them for the serving signature."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from pipeline.config import FeatureConfig


def feature_spec(feature: FeatureConfig) -> tf.TensorSpec:
    """The serving input of a feature: raw values, strings for categorical and hashed features."""
    if feature.kind != "numeric":
        return tf.TensorSpec([None], tf.string, name=feature.name)
    shape = [None] if feature.dim == 1 else [None, feature.dim]
    return tf.TensorSpec(shape, tf.float32, name=feature.name)


def feature_specs(features: Sequence[FeatureConfig]) -> dict[str, tf.TensorSpec]:
    return {feature.name: feature_spec(feature) for feature in features}


def _preprocessing(feature: FeatureConfig) -> list[keras.layers.Layer]:
    """The layers turning one raw column into dense values; part of the model, so exports take raw values."""
    if feature.kind == "numeric":
        if feature.mean is None:
            return []
        normalize = keras.layers.Normalization(
            mean=feature.mean, variance=feature.variance, name=f"{feature.name}_norm"
        )
        # Built now, eagerly: given a mean and variance it builds constants, which Keras' first symbolic
        # call would otherwise create inside a scratch graph they cannot leave.
        normalize.build((None, feature.dim))
        return [normalize]
    if feature.kind == "categorical":
        lookup = keras.layers.StringLookup(
            vocabulary=list(feature.vocabulary),
            num_oov_indices=feature.oov_buckets,
            name=f"{feature.name}_lookup",
        )
        size = len(feature.vocabulary) + feature.oov_buckets
    else:
        lookup = keras.layers.Hashing(num_bins=feature.hash_buckets, name=f"{feature.name}_hash")
        size = feature.hash_buckets
    return [lookup, keras.layers.Embedding(size, feature.embedding_dim, name=f"{feature.name}_embedding")]


@keras.saving.register_keras_serializable(package="mtl")
class FeatureEncoder(keras.layers.Layer):
    """Preprocesses every raw feature and concatenates the results, in config order.

    Numeric features are normalised with their training mean and variance; categorical ones looked up in
    their vocabulary (unseen values go to the out-of-vocabulary buckets) and embedded; hashed ones hashed and
    embedded. Input: a dict `{name: [batch] or [batch, dim]}`. Output: `[batch, sum of widths]`.
    """

    def __init__(self, features: Sequence[FeatureConfig], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = tuple(features)
        self.preprocessing = {feature.name: _preprocessing(feature) for feature in self.features}
        self.output_dim = sum(
            feature.dim if feature.kind == "numeric" else feature.embedding_dim for feature in self.features
        )

    def lookup_layers(self) -> list[keras.layers.Layer]:
        """The vocabulary lookups, whose tables an export must track explicitly."""
        return [
            layer
            for layers in self.preprocessing.values()
            for layer in layers
            if isinstance(layer, keras.layers.StringLookup)
        ]

    def call(self, inputs: Mapping[str, Any]) -> Any:
        columns = []
        for feature in self.features:
            value = inputs[feature.name]
            if feature.kind == "numeric":
                value = ops.reshape(ops.cast(value, "float32"), (-1, feature.dim))
            for layer in self.preprocessing[feature.name]:
                value = layer(value)
            columns.append(value)
        return columns[0] if len(columns) == 1 else ops.concatenate(columns, axis=-1)

    def get_config(self) -> dict[str, Any]:
        features = [dataclasses.asdict(feature) for feature in self.features]
        return {**super().get_config(), "features": features}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeatureEncoder:
        config = dict(config)
        config["features"] = [
            FeatureConfig(**{**f, "vocabulary": tuple(f.get("vocabulary", ()))}) for f in config["features"]
        ]
        return cls(**config)
