"""Reusable save/load round-trip checks for a built Keras 3 model."""

import keras
import numpy as np
import tensorflow as tf

from keras_research.testing import _utils


def run_model_saving_test(model, input_data, *, atol=0.0):
    """Checks that a built model survives every Keras/TF saving format.

    Checks that each of these gives outputs equal to the original model's
    on `input_data` (bit-equal with the default `atol=0`) and the same
    variable values:

    1. `model.save("*.keras")` then `keras.saving.load_model(...,
       safe_mode=True)` with no `custom_objects`.
    2. `model.save_weights("*.weights.h5")` then `load_weights` into a
       model rebuilt from the config.
    3. `tf.train.Checkpoint(model=model).write` then `.read` into a model
       rebuilt from the config, with every object matched.

    Args:
        model: a built `keras.Model` (functional, Sequential, or a
            subclassed model whose `get_config`/`from_config` rebuild it).
        input_data: a batch the model accepts (array, tensor, ragged or
            sparse tensor, or a structure of them).
        atol: absolute tolerance; 0 demands bit-equal outputs.

    Raises:
        ValueError: if `model` is not a built `keras.Model`.
        AssertionError: if a round trip changes outputs or weights.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_research.testing import run_model_saving_test
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> run_model_saving_test(model, np.ones((2, 3), "float32"))
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras.Model. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            "`model` must be built (call it on data first). Received an "
            f"unbuilt model: {model.name}"
        )
    expected = model(input_data)
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    with _utils.temp_dir() as d:
        loaded = _utils.save_and_reload(model, model.name)
        _compare(loaded, input_data, expected, weights, atol, ".keras")

        rebuilt = _rebuild(model, input_data)
        weights_path = _utils.temp_path(d, "model.weights.h5")
        model.save_weights(weights_path)
        rebuilt.load_weights(weights_path)
        _compare(rebuilt, input_data, expected, weights, atol,
                 "save_weights/load_weights")

        rebuilt = _rebuild(model, input_data)
        prefix = tf.train.Checkpoint(model=model).write(
            _utils.temp_path(d, "ckpt"))
        tf.train.Checkpoint(model=rebuilt).read(
            prefix).assert_existing_objects_matched()
        _compare(rebuilt, input_data, expected, weights, atol,
                 "tf.train.Checkpoint")


def _rebuild(model, input_data):
    config = keras.saving.serialize_keras_object(model)
    rebuilt = keras.saving.deserialize_keras_object(config)
    if not rebuilt.built:
        rebuilt(input_data)
    return rebuilt


def _compare(loaded, input_data, expected, weights, atol, how):
    _utils.assert_same(loaded(input_data), expected, atol=atol, rtol=0,
                       what=f"output after {how} round trip")
    got = [keras.ops.convert_to_numpy(w) for w in loaded.weights]
    assert len(got) == len(weights), (
        f"{len(got)} weights after {how} round trip, expected {len(weights)}"
    )
    for i, (a, e) in enumerate(zip(got, weights)):
        if atol == 0:
            np.testing.assert_array_equal(
                a, e, err_msg=f"weight {i} after {how} round trip")
        else:
            np.testing.assert_allclose(
                a, e, atol=atol, err_msg=f"weight {i} after {how} round trip")
