"""keras_research: drop-in Keras 3 research components (TensorFlow backend)."""

from keras_research import (
    _backend,  # noqa: F401  (must run before keras)
    _compat,  # noqa: F401  (narrow fixes of Keras bugs, see its docstring)
    activations,
    callbacks,
    layers,
    optimizers,
    scopes,
    testing,
)
from keras_research.scopes import (
    factorize,
    factorized_scope,
    weight_creator_scope,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "activations",
    "callbacks",
    "factorize",
    "factorized_scope",
    "layers",
    "optimizers",
    "scopes",
    "testing",
    "weight_creator_scope",
]
