"""Public activations of keras_research."""

from keras_research.activations.fused_activation import (
    FusedActivation,
    fused,
)
from keras_research.activations.research_activations import (
    gelu_tanh,
    mish,
    silu,
    silu_softplus_tanh_squared,
    snake,
)

__all__ = [
    "FusedActivation",
    "fused",
    "gelu_tanh",
    "mish",
    "silu",
    "silu_softplus_tanh_squared",
    "snake",
]
