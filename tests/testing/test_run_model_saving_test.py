"""The saving checks pass on stock models and fail on broken layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_research.testing import run_model_saving_test

X = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")


def test_functional_and_sequential_models_pass():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    outputs = keras.layers.LayerNormalization()(hidden)
    run_model_saving_test(keras.Model(inputs, outputs), X)
    run_model_saving_test(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), X)


def test_ragged_input_model_passes():
    inputs = keras.Input((None,), dtype="int64", ragged=True)
    outputs = keras.layers.Lambda(
        lambda r: tf.reduce_sum(tf.cast(r, "float32"), axis=1,
                                keepdims=True),
        output_shape=(1,))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(outputs))
    ragged = tf.ragged.constant([[1, 2], [3]], dtype="int64")
    with pytest.raises(AssertionError, match="safe_mode"):
        # A Lambda layer is arbitrary code: safe_mode refuses it, and the
        # check reports that clearly.
        run_model_saving_test(model, ragged)


@keras.saving.register_keras_serializable(package="keras_research_tests")
class LosesWeightsOnLoad(keras.layers.Dense):
    def load_own_variables(self, store):
        pass


@keras.saving.register_keras_serializable(package="keras_research_tests")
class ShiftsAfterConfig(keras.layers.Dense):
    """Broken: an argument that changes outputs is missing from config."""

    def __init__(self, units, shift=0.0, **kwargs):
        super().__init__(units, **kwargs)
        self.shift = shift

    def call(self, inputs):
        return super().call(inputs) + self.shift


@pytest.mark.parametrize(
    "layer, message",
    [
        (LosesWeightsOnLoad(2), ".keras round trip"),
        (ShiftsAfterConfig(2, shift=1.0), ".keras round trip"),
    ],
)
def test_broken_layers_fail(layer, message):
    model = keras.Sequential([keras.Input((3,)), layer])
    with pytest.raises(AssertionError, match=message):
        run_model_saving_test(model, X)


def test_bad_arguments():
    with pytest.raises(ValueError, match="keras.Model"):
        run_model_saving_test(keras.layers.Dense(2), X)
    with pytest.raises(ValueError, match="built"):
        run_model_saving_test(keras.Sequential([keras.layers.Dense(2)]), X)
