"""The multi-task model every architecture shares: features -> bottom -> one tower and head per task."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from pipeline.config import ExperimentConfig, ModelConfig
from pipeline.features import FeatureEncoder, Preprocessor
from pipeline.heads import build_heads
from pipeline.layers import Tower, UncertaintyWeights
from pipeline.models import registry


@keras.saving.register_keras_serializable(package="mtl")
class MultiTaskModel(keras.Model):
    """A bottom chosen by `config.architecture`, then a `Tower` and a `Head` per task.

    `call` takes raw features and returns `{task: predictions [batch]}` (after the output activation): what
    is exported and served. `task_logits` takes the `Preprocessor`'s output, which the training data already
    holds, and returns the towers' logits, which training uses for numerically stable losses.

    Args:
        config: a validated `ModelConfig`.
    """

    def __init__(self, config: ModelConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.preprocessor = Preprocessor(config.features, name="preprocessing")
        self.encoder = FeatureEncoder(config.features, name="features")
        registry.import_modules(config.imports)
        self.bottom = registry.get(config.architecture)(config)
        self.towers = [
            Tower(
                config.tower_units,
                activation=config.activation,
                dropout=config.dropout,
                name=f"tower_{task.name}",
            )
            for task in config.tasks
        ]
        self.heads = build_heads(config.tasks)
        self.loss_weights = (
            UncertaintyWeights([task.name for task in config.tasks], name="loss_weights")
            if config.loss_weighting == "uncertainty"
            else None
        )

    def task_logits(self, inputs: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        """Logits per task from preprocessed inputs (`Preprocessor`'s output)."""
        shared = self.bottom(self.encoder(inputs), training=training)
        per_task = shared if isinstance(shared, list) else [shared]
        if len(per_task) == 1:
            per_task = per_task * len(self.towers)
        return {
            head.name: tower(x, training=training)
            for head, tower, x in zip(self.heads, self.towers, per_task, strict=True)
        }

    def call(self, features: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        logits = self.task_logits(self.preprocessor(features), training=training)
        return {head.name: head.predictions(logits[head.name]) for head in self.heads}

    @property
    def has_gates(self) -> bool:
        """Whether the bottom mixes experts with gates it can report: it has `named_gate_weights` (weights by
        gate) and `gate_experts` (the experts each gate weighs), as `MixtureOfExperts` and PLE do."""
        return hasattr(self.bottom, "named_gate_weights") and hasattr(self.bottom, "gate_experts")

    def gate_weights(self, features: dict[str, Any]) -> dict[str, Any]:
        """The bottom's gate weights for raw features, by name (MMoE and OMoE: one `[batch, experts]` per
        task; PLE: per task and level): what the export's `gates` signature serves."""
        encoded = self.encoder(self.preprocessor(features))
        return self.bottom.named_gate_weights(encoded, [task.name for task in self.config.tasks])

    def build_variables(self) -> None:
        """Creates every variable by calling the model once on a zero batch of the configured features."""
        if self.loss_weights is not None:
            self.loss_weights.build()
        self(
            {
                f.name: np.zeros((1, f.dim), np.float32) if f.kind == "numeric" else np.array([""], object)
                for f in self.config.features
            },
            training=False,
        )

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "config": ExperimentConfig(model=self.config).to_json()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MultiTaskModel:
        model_config = ExperimentConfig.from_json(config["config"]).model
        return cls(model_config, name=config.get("name"))


def model_fn(config: ModelConfig) -> MultiTaskModel:
    """Builds the model for `config` (validated first) with all variables created."""
    config.validate()
    model = MultiTaskModel(config, name=config.architecture)
    model.build_variables()
    return model
