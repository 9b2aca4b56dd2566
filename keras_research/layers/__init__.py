"""Public layers of keras_research."""

from keras_research.layers.bag_of_ngrams import BagOfNgrams
from keras_research.layers.class_probabilities import ClassProbabilities
from keras_research.layers.factorized_dense import FactorizedDense
from keras_research.layers.ragged_embedding_bag import RaggedEmbeddingBag
from keras_research.layers.standardize_text import StandardizeText

__all__ = [
    "BagOfNgrams",
    "ClassProbabilities",
    "FactorizedDense",
    "RaggedEmbeddingBag",
    "StandardizeText",
]
