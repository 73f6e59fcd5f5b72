"""Small Keras 3 layers the architectures are composed from."""

from pipeline.layers.experts import Experts, mix
from pipeline.layers.gate import Gate
from pipeline.layers.mixture_of_experts import MixtureOfExperts
from pipeline.layers.mlp import MLP
from pipeline.layers.progressive_layered_extraction import ExtractionLevel, ProgressiveLayeredExtraction
from pipeline.layers.separate_bottoms import SeparateBottoms
from pipeline.layers.tower import Tower
from pipeline.layers.uncertainty_weights import UncertaintyWeights

__all__ = [
    "MLP",
    "Experts",
    "ExtractionLevel",
    "Gate",
    "MixtureOfExperts",
    "ProgressiveLayeredExtraction",
    "SeparateBottoms",
    "Tower",
    "UncertaintyWeights",
    "mix",
]
