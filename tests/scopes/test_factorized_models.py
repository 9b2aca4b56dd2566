"""factorized_scope on third-party models: Keras Applications, KerasHub."""

import keras
import numpy as np
import pytest

import keras_research
from keras_research.scopes.factorized_scope import choose_rank
from tests.scopes._helpers import (
    assert_factorized_like,
    fit_lowers_loss,
    load_merged,
)


def _rank_of(rank, min_size):
    def rank_of(path, shape):
        return choose_rank(rank, shape, min_size, None, None, "")

    return rank_of


def _mobilenet():
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )


def test_mobilenet_v2(tmp_path):
    with keras_research.factorized_scope(rank=0.25, min_size=1024):
        model = _mobilenet()
    plain = _mobilenet()
    count = assert_factorized_like(model, plain, _rank_of(0.25, 1024))
    assert count >= 20  # Every large 1x1 convolution and the classifier.
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3))
    x = x.astype("float32")
    load_merged(model, plain)
    np.testing.assert_allclose(model(x), plain(x), rtol=1e-4, atol=1e-5)
    y = keras.utils.to_categorical([1, 3, 5, 7], 10)
    # Batch statistics of 4 images at 1x1 resolution are too noisy for a
    # loss that must go down in 3 steps: freeze the normalization layers.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    # Eagerly: tracing MobileNetV2's train step takes longer than training
    # it on one batch; graph-mode `fit` is tested on each layer type.
    fit_lowers_loss(
        model,
        x,
        y,
        optimizer=keras.optimizers.SGD(0.05),
        loss="categorical_crossentropy",
        run_eagerly=True,
    )
    path = tmp_path / "mobilenet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(x), model(x))


@pytest.mark.slow  # Importing keras_hub alone takes several seconds.
def test_keras_hub_bert_backbone(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    config = dict(
        vocabulary_size=100,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    with keras_research.factorized_scope(rank=4, min_size=512):
        backbone = keras_hub.models.BertBackbone(**config)
    plain = keras_hub.models.BertBackbone(**config)
    count = assert_factorized_like(backbone, plain, _rank_of(4, 512))
    assert count >= 14  # Embeddings, attention, feed-forward, pooler.
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(0, 100, (4, 16)),
        "segment_ids": np.zeros((4, 16), "int32"),
        "padding_mask": np.ones((4, 16), "int32"),
    }
    load_merged(backbone, plain)
    np.testing.assert_allclose(
        backbone(inputs)["sequence_output"],
        plain(inputs)["sequence_output"],
        rtol=1e-4,
        atol=1e-5,
    )
    head = keras.layers.Dense(1)(backbone.output["pooled_output"])
    classifier = keras.Model(backbone.input, head)
    fit_lowers_loss(classifier, inputs, rng.normal(size=(4, 1)), epochs=3)

    # KerasHub backbones rebuild their layers from hyperparameters, so the
    # `.keras` file is loaded inside the same scope (as documented).
    path = tmp_path / "bert.keras"
    backbone.save(path)
    with keras_research.factorized_scope(rank=4, min_size=512):
        loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(backbone.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
