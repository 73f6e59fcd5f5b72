"""Initializer handling shared by the layers."""

from __future__ import annotations

import keras


def fresh_copy(initializer: keras.initializers.Initializer) -> keras.initializers.Initializer:
    """A new initializer of the same kind for one sublayer.

    A Keras 3 initializer built with `seed=None` fixes a seed at construction and repeats its values on
    every call, so sibling layers sharing one object (the gates of an MMoE, equal-sized dense layers) would
    start identical. A copy made from the config draws its own seed; an explicitly seeded one stays seeded.
    """
    return initializer.__class__.from_config(initializer.get_config())
