"""The multi-task model every architecture shares: features -> bottom -> one tower and head per task."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from pipeline.config import ExperimentConfig, ModelConfig
from pipeline.features import FeatureEncoder, PerTaskFeatureEncoders, Preprocessor
from pipeline.heads import Head, TaskLoss, funnel_logit
from pipeline.layers import Tower
from pipeline.models import registry


@keras.saving.register_keras_serializable(package="mtl")
class MultiTaskModel(keras.Model):
    """A bottom chosen by `config.architecture`, then a `Tower` and a `Head` per task, and the `TaskLoss`.

    `call` takes raw features and returns `{task: predictions}` (after the output activation; `[batch]`, or
    `[batch, num_classes]` for a multi-class task), and for a task that follows another in a funnel also its
    conditional probability under `conditional_output`: what is exported and served. `task_logits` takes the
    `Preprocessor`'s output, which the training data already holds, and returns each task's logits, which
    training uses for numerically stable losses.

    Args:
        config: a validated `ModelConfig`.
    """

    def __init__(self, config: ModelConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.preprocessor = Preprocessor(config.features, name="preprocessing")
        registry.import_modules(config.imports)
        build_bottom = registry.get(config.architecture)
        self.encoder = (
            FeatureEncoder(config.features, name="features")
            if registry.shares_embeddings(config.architecture)
            else PerTaskFeatureEncoders(
                config.features, [task.name for task in config.tasks], name="features"
            )
        )
        self.bottom = build_bottom(config)
        self.towers = [
            Tower(
                config.tower_units,
                activation=config.activation,
                dropout=config.dropout,
                output_units=task.output_units,
                name=f"tower_{task.name}",
            )
            for task in config.tasks
        ]
        # Created after the towers: checkpoints hold the variables in the order the model lists them.
        self.task_loss = TaskLoss(config.tasks, config.loss_weighting, name="task_loss")

    @property
    def heads(self) -> list[Head]:
        return self.task_loss.heads

    def tower_logits(self, inputs: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        """Each tower's logits from preprocessed inputs (`Preprocessor`'s output); a funnel task's tower
        gives the logit of its event given the earlier one."""
        shared = self.bottom(self.encoder(inputs), training=training)
        per_task = shared if isinstance(shared, list) else [shared]
        if len(per_task) == 1:
            per_task = per_task * len(self.towers)
        return {
            task.name: tower(x, training=training)
            for task, tower, x in zip(self.config.tasks, self.towers, per_task, strict=True)
        }

    def task_logits_from_towers(self, towers: dict[str, Any]) -> dict[str, Any]:
        """Each task's logits from its tower's (see `task_logits`)."""
        logits: dict[str, Any] = {}
        for task in self.config.tasks:  # an earlier funnel step comes first (`ModelConfig` checks)
            own = towers[task.name]
            logits[task.name] = funnel_logit(logits[task.after], own) if task.after else own
        return logits

    def task_logits(self, inputs: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        """Each task's logits from preprocessed inputs: a funnel task's are those of its event and every
        earlier one (see `TaskConfig.after`)."""
        return self.task_logits_from_towers(self.tower_logits(inputs, training=training))

    def call(self, features: dict[str, Any], training: bool | None = None) -> dict[str, Any]:
        towers = self.tower_logits(self.preprocessor(features), training=training)
        logits = self.task_logits_from_towers(towers)
        outputs = {head.name: head.predictions(logits[head.name]) for head in self.heads}
        for task in self.config.funnel_tasks():
            outputs[task.conditional_output] = keras.activations.sigmoid(towers[task.name])
        return outputs

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
        self.task_loss.build()
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
