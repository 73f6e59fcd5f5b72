"""The model's inputs in two steps: raw values -> integer ids and normalised numbers -> one dense matrix.

`Preprocessor` holds the per-example work with no trainable weights (imputation, normalisation, vocabulary
lookups, hashing). It is defined once and used both ways, as Keras' preprocessing-layer guidance advises: the
data pipeline applies it to the training table once (or per batch, when streaming), and the exported model
applies it to raw serving inputs. `FeatureEncoder` holds the trainable part, the embeddings.

All categorical and hashed features of one embedding width share one embedding table, each feature owning a
range of its rows, so a training step does one gather (and one gradient scatter) per width instead of one per
feature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from pipeline.config import FeatureConfig

NUMERIC = "numeric"


def feature_spec(feature: FeatureConfig) -> tf.TensorSpec:
    """The serving input of a feature: raw values, strings for categorical and hashed features.

    A missing number is NaN (REST accepts the `NaN` token, as TensorFlow Serving does).
    """
    if feature.kind != "numeric":
        return tf.TensorSpec([None], tf.string, name=feature.name)
    shape = [None] if feature.dim == 1 else [None, feature.dim]
    return tf.TensorSpec(shape, tf.float32, name=feature.name)


def feature_specs(features: Sequence[FeatureConfig]) -> dict[str, tf.TensorSpec]:
    return {feature.name: feature_spec(feature) for feature in features}


def parse_examples(features: Sequence[FeatureConfig], serialized: Any) -> dict[str, Any]:
    """Serialized `tf.train.Example`s `[batch]` -> the raw features the model takes: each numeric feature a
    float list of `dim` values (absent: NaN, a missing number), each other feature one byte string (absent:
    the empty string). What the export's signatures over `tf.Example` parse."""
    spec = {
        f.name: tf.io.FixedLenFeature([f.dim], tf.float32, default_value=[float("nan")] * f.dim)
        if f.kind == "numeric"
        else tf.io.FixedLenFeature([], tf.string, default_value="")
        for f in features
    }
    parsed = tf.io.parse_example(serialized, spec)
    return {
        f.name: tf.reshape(parsed[f.name], [-1]) if f.kind == "numeric" and f.dim == 1 else parsed[f.name]
        for f in features
    }


def to_examples(features: Sequence[FeatureConfig], values: Mapping[str, Any]) -> np.ndarray:
    """Raw feature values (as `feature_specs` describes them) -> serialized `tf.train.Example`s, one per row:
    the inverse of `parse_examples`, for clients and checks."""
    rows = len(next(iter(values.values())))
    serialized = []
    for row in range(rows):
        example = tf.train.Example()
        for f in features:
            value = values[f.name][row]
            if f.kind == "numeric":
                example.features.feature[f.name].float_list.value.extend(np.ravel(value).astype(float))
            else:
                text = value if isinstance(value, bytes) else str(value).encode()
                example.features.feature[f.name].bytes_list.value.append(text)
        serialized.append(example.SerializeToString())
    return np.array(serialized, dtype=object)


def ids_key(embedding_dim: int) -> str:
    return f"ids_{embedding_dim}"


def table_size(feature: FeatureConfig) -> int:
    """Rows of the shared embedding table a categorical or hashed feature owns."""
    if feature.kind == "categorical":
        return len(feature.vocabulary) + feature.oov_buckets
    return feature.hash_buckets


def _embedding_groups(features: Sequence[FeatureConfig]) -> dict[int, list[FeatureConfig]]:
    groups: dict[int, list[FeatureConfig]] = {}
    for feature in features:
        if feature.kind != "numeric":
            groups.setdefault(feature.embedding_dim, []).append(feature)
    return groups


def encoded_width(features: Sequence[FeatureConfig]) -> int:
    """Width of the dense matrix `FeatureEncoder` outputs."""
    numeric = sum(f.dim + (f.dim if f.missing_indicator else 0) for f in features if f.kind == "numeric")
    return numeric + sum(f.embedding_dim for f in features if f.kind != "numeric")


def _serialize(features: Sequence[FeatureConfig]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(feature) for feature in features]


def _deserialize(features: Sequence[Mapping[str, Any]]) -> list[FeatureConfig]:
    return [FeatureConfig(**{**f, "vocabulary": tuple(f.get("vocabulary", ()))}) for f in features]


@keras.saving.register_keras_serializable(package="mtl")
class Preprocessor(keras.layers.Layer):
    """Raw feature values -> `{"numeric": [batch, width], "ids_<dim>": [batch, features]}`.

    Numeric features: a missing value (NaN, or an infinite number, which no mean or variance could absorb) is
    imputed with the training mean, then every value normalised
    with the training mean and variance (features without statistics pass through); `missing_indicator`
    features add a 0/1 column saying the value was missing. Categorical features are looked up in their
    vocabulary (unseen values go to the OOV buckets), hashed features hashed; both become int32 row numbers
    of their width's shared embedding table. No weights are trained here.
    """

    def __init__(self, features: Sequence[FeatureConfig], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = tuple(features)
        numeric = [f for f in self.features if f.kind == "numeric"]
        self._numeric = numeric
        self._normalize = None
        if numeric:
            mean = np.concatenate([np.full(f.dim, f.mean or 0.0) for f in numeric]).astype(np.float32)
            variance = np.concatenate(
                [np.full(f.dim, 1.0 if f.variance is None else f.variance) for f in numeric]
            ).astype(np.float32)
            self._mean = mean
            self._indicators = np.flatnonzero(
                np.concatenate([np.full(f.dim, f.missing_indicator) for f in numeric])
            ).tolist()
            self._normalize = keras.layers.Normalization(mean=mean, variance=variance, name="numeric_norm")
            # Built now, eagerly: given a mean and variance it builds constants, which Keras' first symbolic
            # call would otherwise create inside a scratch graph they cannot leave.
            self._normalize.build((None, len(mean)))
        # Per embedding width: (width, [(feature name, its first row in the width's table)]); the lookups.
        self._offsets: list[tuple[int, list[tuple[str, int]]]] = []
        self.lookups = []
        for dim, features_of_width in _embedding_groups(self.features).items():
            offset = 0
            self._offsets.append((dim, []))
            for feature in features_of_width:
                if feature.kind == "categorical":
                    layer = keras.layers.StringLookup(
                        vocabulary=list(feature.vocabulary),
                        num_oov_indices=feature.oov_buckets,
                        output_mode="int",
                        name=f"{feature.name}_lookup",
                    )
                else:
                    layer = keras.layers.Hashing(num_bins=feature.hash_buckets, name=f"{feature.name}_hash")
                self.lookups.append(layer)
                self._offsets[-1][1].append((feature.name, offset))
                offset += table_size(feature)

    def lookup_layers(self) -> list[keras.layers.Layer]:
        """The vocabulary lookups, whose tables an export must track explicitly."""
        return [layer for layer in self.lookups if isinstance(layer, keras.layers.StringLookup)]

    def call(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        if self._numeric:
            values = ops.concatenate(
                [ops.reshape(ops.cast(inputs[f.name], "float32"), (-1, f.dim)) for f in self._numeric],
                axis=-1,
            )
            missing = ops.logical_not(ops.isfinite(values))
            values = self._normalize(ops.where(missing, self._mean, values))
            if self._indicators:
                flags = ops.cast(ops.take(missing, self._indicators, axis=1), "float32")
                values = ops.concatenate([values, flags], axis=-1)
            outputs[NUMERIC] = values
        layers = iter(self.lookups)
        for dim, offsets in self._offsets:
            ids = [
                ops.cast(next(layers)(ops.reshape(inputs[name], (-1,))), "int32") + offset
                for name, offset in offsets
            ]
            outputs[ids_key(dim)] = ops.stack(ids, axis=1)
        return outputs

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "features": _serialize(self.features)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Preprocessor:
        return cls(**{**config, "features": _deserialize(config["features"])})


@keras.saving.register_keras_serializable(package="mtl")
class FeatureEncoder(keras.layers.Layer):
    """`Preprocessor`'s output -> one dense matrix: the numbers, then each width's embeddings, flattened.

    Input: `{"numeric": [batch, n], "ids_<dim>": [batch, k]}`. Output: `[batch, encoded_width(features)]`.
    """

    def __init__(self, features: Sequence[FeatureConfig], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = tuple(features)
        groups = _embedding_groups(self.features)
        self._widths = [(dim, len(group) * dim) for dim, group in groups.items()]
        self.embeddings = [
            keras.layers.Embedding(sum(table_size(f) for f in group), dim, name=f"embedding_{dim}")
            for dim, group in groups.items()
        ]
        self.output_dim = encoded_width(self.features)

    def call(self, inputs: Mapping[str, Any]) -> Any:
        columns = [inputs[NUMERIC]] if NUMERIC in inputs else []
        for (dim, width), embedding in zip(self._widths, self.embeddings, strict=True):
            columns.append(ops.reshape(embedding(inputs[ids_key(dim)]), (-1, width)))
        return columns[0] if len(columns) == 1 else ops.concatenate(columns, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "features": _serialize(self.features)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeatureEncoder:
        return cls(**{**config, "features": _deserialize(config["features"])})


@keras.saving.register_keras_serializable(package="mtl")
class PerTaskFeatureEncoders(keras.layers.Layer):
    """A `FeatureEncoder` per task, for architectures that share nothing between tasks, not even embeddings.

    Input: as `FeatureEncoder`'s. Output: a list with each task's `[batch, encoded_width(features)]`.
    """

    def __init__(self, features: Sequence[FeatureConfig], task_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = tuple(features)
        self.task_names = tuple(task_names)
        self.encoders = [FeatureEncoder(self.features, name=f"features_{task}") for task in self.task_names]
        self.output_dim = encoded_width(self.features)

    def call(self, inputs: Mapping[str, Any]) -> list[Any]:
        return [encoder(inputs) for encoder in self.encoders]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "features": _serialize(self.features),
            "task_names": list(self.task_names),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PerTaskFeatureEncoders:
        return cls(**{**config, "features": _deserialize(config["features"])})
