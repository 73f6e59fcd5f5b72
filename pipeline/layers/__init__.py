"""Small Keras 3 layers the architectures are composed from."""

from pipeline.layers.gate import Gate
from pipeline.layers.mixture_of_experts import MixtureOfExperts
from pipeline.layers.mlp import MLP
from pipeline.layers.separate_bottoms import SeparateBottoms
from pipeline.layers.tower import Tower

__all__ = ["MLP", "Gate", "MixtureOfExperts", "SeparateBottoms", "Tower"]
