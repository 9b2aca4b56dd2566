"""Public layers of keras_research."""

from keras_research.layers.ragged_embedding_bag import RaggedEmbeddingBag

__all__ = ["RaggedEmbeddingBag"]
