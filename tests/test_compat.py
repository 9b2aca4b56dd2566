"""The Keras work-around in keras_research._compat is applied and works."""

import keras
import numpy as np
import tensorflow as tf

import keras_research  # noqa: F401  (applies the fix)
from keras_research.testing import _utils


def _ragged_sum_model():
    inputs = keras.Input((None,), dtype="int64", ragged=True)
    outputs = keras.layers.Dense(1, kernel_initializer="ones")(
        keras.layers.Lambda(
            lambda r: tf.reduce_sum(tf.cast(r, "float32"), axis=1,
                                    keepdims=True),
            output_shape=(1,))(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def test_ragged_fit_predict_evaluate_under_mirrored_strategy():
    from keras.src.backend.tensorflow import trainer

    assert trainer.TensorFlowTrainer._keras_research_patched
    ragged = tf.ragged.constant([[1, 2], [3], [], [4, 5, 6]], dtype="int64")
    y = np.array([[1.0], [2.0], [0.0], [3.0]], "float32")
    data = tf.data.Dataset.from_tensors((ragged, y))

    single = _ragged_sum_model()
    with _utils.mirrored_strategy().scope():
        mirrored = _ragged_sum_model()
    mirrored.set_weights(single.get_weights())
    for model in (single, mirrored):
        model.fit(data, epochs=2, verbose=0)
    np.testing.assert_allclose(mirrored.get_weights()[0],
                               single.get_weights()[0], rtol=1e-6)
    np.testing.assert_allclose(
        mirrored.predict(data.map(lambda a, b: a), verbose=0),
        single.predict(data.map(lambda a, b: a), verbose=0), rtol=1e-6)
    assert np.isfinite(mirrored.evaluate(data, verbose=0))
