"""keras-io `text_classification_with_transformer`, small, with the swaps.

The script's custom layers (`TokenAndPositionEmbedding`: two `Embedding`s,
the position one called on `ops.arange`; `TransformerBlock`) are written
out in `_keras_io_layers.py`. The model is built, trained a few steps,
saved and reloaded in a fresh process.
"""

import keras
import numpy as np
import pytest
from keras import layers

import keras_research
from tests.integration._helpers import compile_and_fit, factorized
from tests.integration._keras_io_layers import (
    TokenAndPositionEmbedding,
    TransformerBlock,
)

VOCAB_SIZE = 500
MAXLEN = 16
EMBED_DIM = 64
NUM_HEADS = 2
FF_DIM = 64


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB_SIZE, size=(n, MAXLEN)).astype("int64")
    y = (np.sum(x < 50, axis=1) > 1).astype("int64")
    return x, y


def transformer_classifier(activation="relu"):
    inputs = layers.Input(shape=(MAXLEN,))
    embedding_layer = TokenAndPositionEmbedding(
        MAXLEN, VOCAB_SIZE, EMBED_DIM, name="token_and_position_embedding"
    )
    x = embedding_layer(inputs)
    transformer_block = TransformerBlock(
        EMBED_DIM, NUM_HEADS, FF_DIM, activation=activation
    )
    x = transformer_block(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def test_transformer_with_adam_and_activation(save_and_reload):
    # (JacobianRegularizer with `wrt=` a layer's output is exercised on the
    # text CNN, the same swap; its trace through attention costs ~10 s.)
    x, y = _data()
    model = transformer_classifier(activation="keras_research>gelu_tanh")
    block = model.layers[2]
    assert block.get_config()["activation"] == "keras_research>gelu_tanh"
    assert block.ffn.layers[0].activation is (
        keras_research.activations.gelu_tanh
    )
    compile_and_fit(model, x, y, "sparse_categorical_crossentropy")
    save_and_reload(model, x, "transformer")


def test_transformer_factorized_post_hoc_is_refused_as_documented():
    # `factorize` rebuilds the model from its config; the custom layers'
    # auto-named sublayers come back under new names, so it refuses (the
    # README's documented refusal) rather than guess which weight is which.
    model = transformer_classifier()
    with pytest.raises(ValueError, match="Could not match these weights"):
        keras_research.factorize(model, rank=0.25)


def test_transformer_under_factorized_scope(save_and_reload):
    # Weights created during the functional trace (the position embedding
    # on `ops.arange`) are factorized; the file loads with no scope.
    x, y = _data()
    with keras_research.factorized_scope(rank=0.25):
        model = transformer_classifier()
    assert "token_and_position_embedding/embedding/embeddings" in (
        factorized(model)
    ), factorized(model)
    compile_and_fit(model, x, y, "sparse_categorical_crossentropy")
    save_and_reload(model, x, "transformer_scope")
