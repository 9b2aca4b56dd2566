"""factorized_scope around keras-io example models, written out here.

The layers below are copied from keras-io scripts nobody here wrote
(`text_classification_with_transformer`, `mnist_convnet`, `vae`), registered
(their auto-generated configs suffice) so that the Transformer can be
saved, as a user would.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import layers, ops

import keras_research
from tests.scopes._helpers import factorized_weights

# keras-io text_classification_with_transformer.py
VOCAB_SIZE = 20000
MAXLEN = 200
EMBED_DIM = 32
NUM_HEADS = 2
FF_DIM = 32


@keras.saving.register_keras_serializable(package="keras_io_tests")
class TransformerBlock(layers.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.att = layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=embed_dim
        )
        self.ffn = keras.Sequential(
            [
                layers.Dense(ff_dim, activation="relu"),
                layers.Dense(embed_dim),
            ]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output)
        return self.layernorm2(out1 + ffn_output)


@keras.saving.register_keras_serializable(package="keras_io_tests")
class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_emb = layers.Embedding(
            input_dim=vocab_size, output_dim=embed_dim
        )
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(start=0, stop=maxlen, step=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions


def transformer_classifier():
    inputs = layers.Input(shape=(MAXLEN,))
    embedding_layer = TokenAndPositionEmbedding(MAXLEN, VOCAB_SIZE, EMBED_DIM)
    x = embedding_layer(inputs)
    transformer_block = TransformerBlock(EMBED_DIM, NUM_HEADS, FF_DIM)
    x = transformer_block(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def _text_data():
    rng = np.random.default_rng(0)
    return rng.integers(0, VOCAB_SIZE, (16, MAXLEN)), rng.integers(0, 2, 16)


# Default settings: only the two embeddings are large enough. With
# `min_size=512` the attention and feed-forward kernels are factorized too.
SCOPES = {
    "defaults": dict(rank=0.25),
    "encoder_too": dict(rank=0.25, min_size=512),
}


@pytest.mark.parametrize("settings", sorted(SCOPES))
def test_keras_io_transformer_builds_trains_saves_loads(settings, tmp_path):
    keras.utils.set_random_seed(1)
    with keras_research.factorized_scope(**SCOPES[settings]) as scope:
        model = transformer_classifier()
    paths = {w.path for w in model.weights}
    factorized = set(factorized_weights(model))
    # Both embeddings, although the position one is built inside the
    # functional trace on `ops.arange`.
    assert len([p for p in factorized if p.endswith("embeddings")]) == 2
    if settings == "encoder_too":
        assert len(factorized) >= 7, sorted(factorized)  # q, k, v, o, ffn
    assert not any(p.endswith("/embeddings") for p in paths)
    assert len(scope.report) == len(factorized)

    x, y = _text_data()
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses

    path = tmp_path / "transformer.keras"
    model.save(path)
    expected = model.predict(x, verbose=0)
    # No scope: the factorization is recorded in the file.
    loaded = keras.saving.load_model(path, safe_mode=True)
    # (Paths differ: Keras names the inner Embeddings anew.)
    assert [tuple(w.shape) for w in loaded.weights] == [
        tuple(w.shape) for w in model.weights
    ]
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    # Inside the same scope (the README's older advice) it loads too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with keras_research.factorized_scope(**SCOPES[settings]):
            again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(again.predict(x, verbose=0), expected)


def mnist_convnet(num_classes=10):
    """keras-io mnist_convnet.py."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )


def vae_decoder(latent_dim=2):
    """The decoder of keras-io vae.py."""
    latent_inputs = keras.Input(shape=(latent_dim,))
    x = layers.Dense(7 * 7 * 64, activation="relu")(latent_inputs)
    x = layers.Reshape((7, 7, 64))(x)
    x = layers.Conv2DTranspose(
        64, 3, activation="relu", strides=2, padding="same"
    )(x)
    x = layers.Conv2DTranspose(
        32, 3, activation="relu", strides=2, padding="same"
    )(x)
    outputs = layers.Conv2DTranspose(
        1, 3, activation="sigmoid", padding="same"
    )(x)
    return keras.Model(latent_inputs, outputs, name="decoder")


def test_mnist_convnet_keeps_its_head_at_full_rank():
    with keras_research.factorized_scope(rank=0.25) as scope:
        model = mnist_convnet()
    shapes = {w.path: tuple(w.shape) for w in model.weights}
    head = model.layers[-1]
    assert tuple(head.kernel.shape) == (1600, 10)
    assert shapes[head.kernel.path] == (1600, 10)
    conv2 = model.layers[2]
    assert shapes[conv2.kernel.path + "_left"] == (288, 16)
    (skipped_head,) = [
        e for e in scope.report.skipped if e["shape"] == (1600, 10)
    ]
    assert "min_dim=32" in skipped_head["reason"]
    summary = scope.report.summary()
    assert summary.startswith("factorized 1 of 3 matrix weights")
    assert "thin" in summary and "(1600, 10)" in summary
    # It still trains.
    x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1))
    y = keras.utils.to_categorical(np.arange(8) % 10, 10)
    model.compile("adam", "categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=1, verbose=0)


def test_thin_weights_with_integer_rank_and_the_threshold():
    with keras_research.factorized_scope(rank=1):
        decoder = vae_decoder()
    dense = decoder.get_layer(index=1)
    assert tuple(dense.kernel.shape) == (2, 3136)
    assert "kernel" not in dense.__dict__.get("_kr_factorized", {})
    # The threshold is an argument: `min_dim=0` factorizes thin weights.
    with keras_research.factorized_scope(rank=0.25, min_dim=0) as scope:
        mnist_convnet()
    assert (1600, 10) in [e["shape"] for e in scope.report]


@pytest.mark.parametrize("min_dim", [-1, 2.5, "32", True])
def test_bad_min_dim(min_dim):
    with pytest.raises(ValueError, match="min_dim"):
        keras_research.factorized_scope(rank=2, min_dim=min_dim)
    model = mnist_convnet()
    with pytest.raises(ValueError, match="min_dim"):
        keras_research.factorize(model, rank=2, min_dim=min_dim)
