"""Architecture registry: name -> builder of the shared part of the model (the "bottom").

A builder takes the `ModelConfig` and returns a Keras layer mapping `[batch, input_dim]` to one representation
per task (a list of `[batch, units]`), or a single representation all tasks share. An architecture registered
with `shares_embeddings=False` gets each task's inputs embedded by embeddings of its own: its layer takes a
list with one `[batch, input_dim]` per task.

Architectures outside this package register themselves when their module is imported: a module a model
names in `ModelConfig.imports` (`mtl --import=...`), or one an installed package declares in the
`mtl.architectures` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from importlib import metadata

import keras
from absl import logging

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError, UnknownNameError

ENTRY_POINT_GROUP = "mtl.architectures"

BottomBuilder = Callable[[ModelConfig], keras.layers.Layer]

_BUILDERS: dict[str, BottomBuilder] = {}
_OWN_EMBEDDINGS: set[str] = set()
_entry_points_loaded = False


def register(name: str, shares_embeddings: bool = True) -> Callable[[BottomBuilder], BottomBuilder]:
    """Decorator adding an architecture under `name`; with `shares_embeddings=False` every task embeds the
    categorical inputs with tables of its own."""

    def decorate(builder: BottomBuilder) -> BottomBuilder:
        if name in _BUILDERS:
            raise ValueError(f"Architecture {name!r} is registered twice.")
        _BUILDERS[name] = builder
        if not shares_embeddings:
            _OWN_EMBEDDINGS.add(name)
        return builder

    return decorate


def shares_embeddings(name: str) -> bool:
    """Whether the tasks of architecture `name` share the embeddings of the categorical inputs."""
    return name not in _OWN_EMBEDDINGS


def import_modules(modules: Sequence[str]) -> None:
    """Imports modules that register architectures (as `ModelConfig.imports` names them).

    Raises:
        ConfigError: a module cannot be imported; the message names it and says why.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001  (any failure of a user's module is theirs to fix)
            raise ConfigError(f"Cannot import the architecture module {module!r}: {error!r}") from None


def _load_entry_points() -> None:
    """Imports every module installed packages declare in the `mtl.architectures` group, once."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            import_modules([entry_point.module])
        except ConfigError as error:  # one broken package must not stop the architectures of the others
            logging.warning("Skipped the %s entry point %r: %s", ENTRY_POINT_GROUP, entry_point.name, error)


def names(plugins: bool = True) -> list[str]:
    """The registered architectures; with `plugins`, also those of installed packages' entry points."""
    if plugins:
        _load_entry_points()
    return sorted(_BUILDERS)


def get(name: str) -> BottomBuilder:
    """The builder registered as `name`; an unknown name raises `UnknownNameError` listing the valid ones."""
    _load_entry_points()
    try:
        return _BUILDERS[name]
    except KeyError:
        raise UnknownNameError(f"Unknown model {name!r}. Valid models: {', '.join(names())}.") from None
