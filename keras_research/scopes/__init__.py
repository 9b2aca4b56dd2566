"""Public scopes of keras_research."""

from keras_research.scopes.factorize import factorize
from keras_research.scopes.factorized_scope import factorized_scope
from keras_research.scopes.weight_creator_scope import weight_creator_scope

__all__ = ["factorize", "factorized_scope", "weight_creator_scope"]
