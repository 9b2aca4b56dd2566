"""The layer conformance checks pass on stock layers and fail on broken ones.

A check that cannot fail is a defect: each broken layer below breaks exactly
one property, and the test asserts that `run_layer_test` reports it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_research.testing import run_layer_test

X = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")


@pytest.mark.parametrize(
    "layer_cls, init_kwargs, input_data, shape, n_weights",
    [
        (keras.layers.Dense, {"units": 2}, X, (4, 2), 2),
        (keras.layers.LayerNormalization, {}, X, (4, 3), 2),
        (keras.layers.Embedding, {"input_dim": 10, "output_dim": 3},
         np.array([[1, 2], [3, 4], [5, 6], [7, 8]]), (4, 2, 3), 1),
    ],
)
def test_passes_on_stock_layers(layer_cls, init_kwargs, input_data, shape,
                                n_weights):
    run_layer_test(
        layer_cls, init_kwargs, input_data,
        expected_output_shape=shape,
        expected_num_trainable_weights=n_weights,
        expected_num_non_trainable_weights=0,
    )


def test_expected_values_are_checked():
    run_layer_test(
        keras.layers.Dense,
        {"units": 1, "kernel_initializer": "ones"},
        X, expected_output=X.sum(axis=1, keepdims=True),
        run_training_check=False, run_mixed_precision_check=False,
        run_saving_check=False, run_distribution_check=False,
    )
    with pytest.raises(AssertionError, match="eager output"):
        run_layer_test(
            keras.layers.Dense,
            {"units": 1, "kernel_initializer": "ones"},
            X, expected_output=X.sum(axis=1, keepdims=True) + 1.0,
            run_training_check=False, run_mixed_precision_check=False,
            run_saving_check=False, run_distribution_check=False,
        )


def test_wrong_weight_count_fails():
    with pytest.raises(AssertionError, match="trainable weights"):
        run_layer_test(keras.layers.Dense, {"units": 2}, X,
                       expected_num_trainable_weights=3,
                       run_training_check=False, run_saving_check=False,
                       run_mixed_precision_check=False,
                       run_distribution_check=False)


def test_wrong_shape_fails():
    with pytest.raises(AssertionError, match="output shape"):
        run_layer_test(keras.layers.Dense, {"units": 2}, X,
                       expected_output_shape=(4, 3),
                       run_training_check=False, run_saving_check=False,
                       run_mixed_precision_check=False,
                       run_distribution_check=False)


@keras.saving.register_keras_serializable(package="keras_research_tests")
class ForgetfulConfig(keras.layers.Dense):
    """Broken: get_config drops `units`, so from_config cannot rebuild."""

    def get_config(self):
        config = super().get_config()
        del config["units"]
        return config


class Unregistered(keras.layers.Dense):
    """Broken: not registered, so a .keras file cannot name it."""


@keras.saving.register_keras_serializable(package="keras_research_tests")
class Frozen(keras.layers.Dense):
    """Broken: gradients never reach the weights."""

    def call(self, inputs):
        return tf.stop_gradient(super().call(inputs))


@keras.saving.register_keras_serializable(package="keras_research_tests")
class AscendingGradient(keras.layers.Dense):
    """Broken: a custom gradient with the wrong sign."""

    def call(self, inputs):
        @tf.custom_gradient
        def flip(y):
            return y, lambda dy: -dy

        return flip(super().call(inputs))


@keras.saving.register_keras_serializable(package="keras_research_tests")
class IgnoresPolicy(keras.layers.Dense):
    """Broken: always returns float32, whatever the dtype policy."""

    def call(self, inputs):
        return tf.cast(super().call(inputs), "float32")


@keras.saving.register_keras_serializable(package="keras_research_tests")
class LosesWeights(keras.layers.Dense):
    """Broken: loading a saved model leaves the fresh random weights."""

    def load_own_variables(self, store):
        pass


@keras.saving.register_keras_serializable(package="keras_research_tests")
class WrongSymbolicShape(keras.layers.Dense):
    """Broken: announces one unit more than it returns."""

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units + 1)


@keras.saving.register_keras_serializable(package="keras_research_tests")
class ReplicaDependent(keras.layers.Dense):
    """Broken: the output depends on which replica runs it."""

    def call(self, inputs):
        ctx = tf.distribute.get_replica_context()
        replica = 0 if ctx is None else ctx.replica_id_in_sync_group
        return super().call(inputs) + tf.cast(replica, self.compute_dtype)


@pytest.mark.parametrize(
    "layer_cls, message",
    [
        (ForgetfulConfig, "from_config"),
        (Unregistered, "registered"),
        (Frozen, "fit failed"),
        (AscendingGradient, "did not lower the loss"),
        (IgnoresPolicy, "compute dtype"),
        (LosesWeights, "save/load"),
        (WrongSymbolicShape, "symbolic output shape"),
        (ReplicaDependent, "MirroredStrategy"),
    ],
)
def test_each_check_fails_on_a_broken_layer(layer_cls, message):
    with pytest.raises(AssertionError, match=message):
        run_layer_test(layer_cls, {"units": 2}, X)


def test_ragged_input_layer_passes():
    @keras.saving.register_keras_serializable(package="keras_research_tests")
    class RaggedSum(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(1,), initializer="ones")

        def call(self, inputs):
            values = tf.cast(inputs, self.compute_dtype)
            return tf.reduce_sum(values, axis=1, keepdims=True) * self.w

    ragged = tf.ragged.constant([[1, 2], [3], [], [4, 5, 6]], dtype="int64")
    run_layer_test(RaggedSum, {}, ragged, expected_output_shape=(4, 1),
                   expected_output=[[3.0], [3.0], [0.0], [15.0]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_cls": "Dense", "init_kwargs": {}}, "layer_cls"),
        ({"layer_cls": keras.layers.Dense, "init_kwargs": 3}, "init_kwargs"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_layer_test(input_data=X, **kwargs)


def test_odd_batch_for_distribution_check_is_refused():
    with pytest.raises(ValueError, match="even batch"):
        run_layer_test(keras.layers.Dense, {"units": 2}, X[:3],
                       run_training_check=False,
                       run_mixed_precision_check=False)
