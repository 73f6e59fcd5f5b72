"""Architectures and the multi-task model; importing this registers the built-in architectures."""

from pipeline.models import architectures  # noqa: F401  (registers the built-in architectures)
from pipeline.models.multitask_model import MultiTaskModel, model_fn
from pipeline.models.registry import names, register

__all__ = ["MultiTaskModel", "model_fn", "names", "register"]
