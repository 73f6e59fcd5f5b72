"""Architecture registry: name -> builder of the shared part of the model (the "bottom").

A builder takes the `ModelConfig` and returns a Keras layer mapping `[batch, input_dim]` to one representation
per task (a list of `[batch, units]`), or a single representation all tasks share.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from pipeline.config import ModelConfig
from pipeline.errors import UnknownNameError

BottomBuilder = Callable[[ModelConfig], keras.layers.Layer]

_BUILDERS: dict[str, BottomBuilder] = {}


def register(name: str) -> Callable[[BottomBuilder], BottomBuilder]:
    """Decorator adding an architecture under `name`."""

    def decorate(builder: BottomBuilder) -> BottomBuilder:
        if name in _BUILDERS:
            raise ValueError(f"Architecture {name!r} is registered twice.")
        _BUILDERS[name] = builder
        return builder

    return decorate


def names() -> list[str]:
    return sorted(_BUILDERS)


def get(name: str) -> BottomBuilder:
    """The builder registered as `name`; an unknown name raises `UnknownNameError` listing the valid ones."""
    try:
        return _BUILDERS[name]
    except KeyError:
        raise UnknownNameError(f"Unknown model {name!r}. Valid models: {', '.join(names())}.") from None
