"""keras-io `text_classification_from_scratch`, small, with every swap.

The script's functional text CNN (Embedding, Dropout, two strided Conv1D,
global max pooling, a Dense head) on random ids, and its bag-of-words
variant on `RaggedEmbeddingBag`: built, trained a few steps, saved and
reloaded in a fresh process with the README's swaps applied.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import layers

import keras_research
from keras_research.callbacks import JacobianRegularizer
from tests.integration._helpers import compile_and_fit, factorized

MAX_FEATURES = 1000
SEQUENCE_LENGTH = 64
EMBEDDING_DIM = 32
ACTIVATION = "keras_research>gelu_tanh"


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.integers(1, MAX_FEATURES, size=(n, SEQUENCE_LENGTH))
    y = (np.sum(x < 100, axis=1) > 6).astype("float32")[:, None]
    return x.astype("int64"), y


def text_cnn():
    inputs = keras.Input(shape=(None,), dtype="int64")
    x = layers.Embedding(MAX_FEATURES, EMBEDDING_DIM, name="embedding")(inputs)
    x = layers.Dropout(0.5)(x)
    x = layers.Conv1D(32, 7, padding="valid", activation="relu", strides=3)(x)
    x = layers.Conv1D(32, 7, padding="valid", activation="relu", strides=3)(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(32, activation=ACTIVATION)(x)
    x = layers.Dropout(0.5)(x)
    predictions = layers.Dense(1, activation="sigmoid", name="predictions")(x)
    return keras.Model(inputs, predictions)


def test_text_cnn_with_every_swap(save_and_reload):
    x, y = _data()
    with keras_research.factorized_scope(rank=0.25):
        model = text_cnn()
    # The embedding table and both conv kernels are stored as factors.
    assert factorized(model) == [
        "conv1d/kernel",
        "conv1d_1/kernel",
        "embedding/embeddings",
    ], factorized(model)
    dense = model.layers[-3]
    assert dense.activation is keras_research.activations.gelu_tanh
    history = compile_and_fit(
        model,
        x,
        y,
        "binary_crossentropy",
        callbacks=[
            JacobianRegularizer(0.01, wrt="embedding", method="projection")
        ],
    )
    assert np.all(np.isfinite(history.history["jacobian_norm"]))
    save_and_reload(model, x, "text_cnn")


def test_bag_of_words_variant_on_ragged_embedding_bag(save_and_reload):
    x, y = _data()
    lengths = np.random.default_rng(1).integers(1, SEQUENCE_LENGTH, len(x))
    ragged = tf.ragged.constant([row[:n] for row, n in zip(x, lengths)])
    inputs = keras.Input(shape=(None,), dtype="int64", ragged=True)
    h = keras_research.layers.RaggedEmbeddingBag(
        MAX_FEATURES, EMBEDDING_DIM, "mean", name="bag"
    )(inputs)
    h = layers.Dense(32, activation=ACTIVATION)(h)
    outputs = layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inputs, outputs)
    dataset = tf.data.Dataset.from_tensor_slices((ragged, y)).batch(8)
    model.compile(
        optimizer=keras_research.optimizers.Adam(1e-2),
        loss="binary_crossentropy",
    )
    history = model.fit(
        dataset,
        epochs=1,
        callbacks=[JacobianRegularizer(0.01, wrt="bag", method="projection")],
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isfinite(history.history["jacobian_norm"]))
    save_and_reload(model, ragged, "bag_of_words")
