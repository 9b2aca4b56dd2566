"""Public layers of keras_research."""

from keras_research.layers.factorized_dense import FactorizedDense
from keras_research.layers.ragged_embedding_bag import RaggedEmbeddingBag

__all__ = ["FactorizedDense", "RaggedEmbeddingBag"]
