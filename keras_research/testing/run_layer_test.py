"""Reusable conformance checks for a Keras 3 layer."""

import json

import keras
import numpy as np
import tensorflow as tf

from keras_research.testing import _utils


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    *,
    call_kwargs=None,
    expected_output_shape=None,
    expected_output_dtype=None,
    expected_output=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    atol=1e-6,
    rtol=1e-6,
    run_training_check=True,
    run_jit_compile_check=True,
    run_mixed_precision_check=True,
    run_saving_check=True,
    run_distribution_check=True,
):
    """Checks that a layer behaves as Keras users expect.

    The public counterpart of Keras's private `run_layer_test`, for the
    package's own layers and for users' layers. Each check raises
    `AssertionError` with a message saying what differed.

    Checks, in order:

    1. Config: `get_config()` is JSON-serializable, `from_config` rebuilds
       an equal config, and `keras.saving.serialize_keras_object` /
       `deserialize_keras_object` round-trip without `custom_objects` (the
       class must be registered).
    2. Eager call on `input_data`: weight counts after build, the expected
       output shape, dtype and values.
    3. Symbolic call on a `keras.Input` built like `input_data` (ragged and
       sparse inputs included): the symbolic shape and dtype agree with the
       eager output, and a functional model gives the eager values.
    4. Training (`run_training_check`): a model wrapping a fresh layer is
       fitted to a random target with an MSE loss; the loss must go down.
       Repeated with `jit_compile=True` when `run_jit_compile_check`.
    5. Mixed precision (`run_mixed_precision_check`): under
       `mixed_float16` and `mixed_bfloat16`, floating outputs are in the
       compute dtype and floating weights stay float32.
    6. Saving (`run_saving_check`): `.keras` save and
       `load_model(safe_mode=True)` with no `custom_objects` give bit-equal
       outputs.
    7. Distribution (`run_distribution_check`): under
       `tf.distribute.MirroredStrategy` over two logical devices, the same
       weights give the same outputs, and one `fit` step gives the same
       weights as on one device (to `atol`/`rtol`, at least 1e-5).

    Args:
        layer_cls: the layer class to test.
        init_kwargs: dict of constructor arguments.
        input_data: one batch of input: NumPy array, `tf.Tensor`,
            `tf.RaggedTensor` or `tf.SparseTensor`. For the distribution
            check its batch size must be even.
        call_kwargs: optional dict of extra arguments for `call`.
        expected_output_shape: optional shape tuple of the eager output.
        expected_output_dtype: optional dtype name of the eager output.
        expected_output: optional array the eager output must equal.
        expected_num_trainable_weights: optional int.
        expected_num_non_trainable_weights: optional int.
        atol: absolute tolerance for value comparisons.
        rtol: relative tolerance for value comparisons.
        run_training_check: whether to run check 4.
        run_jit_compile_check: whether check 4 also runs with XLA.
        run_mixed_precision_check: whether to run check 5.
        run_saving_check: whether to run check 6.
        run_distribution_check: whether to run check 7.

    Raises:
        ValueError: if the arguments themselves are invalid.
        AssertionError: if the layer fails a check.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_research.testing import run_layer_test
    >>> run_layer_test(
    ...     keras.layers.Dense, {"units": 3},
    ...     np.ones((4, 2), "float32"),
    ...     expected_output_shape=(4, 3),
    ...     expected_num_trainable_weights=2,
    ...     run_distribution_check=False,
    ... )
    """
    if not (isinstance(layer_cls, type)
            and issubclass(layer_cls, keras.layers.Layer)):
        raise ValueError(
            "`layer_cls` must be a subclass of keras.layers.Layer. "
            f"Received: layer_cls={layer_cls!r}"
        )
    if not isinstance(init_kwargs, dict):
        raise ValueError(
            "`init_kwargs` must be a dict of constructor arguments. "
            f"Received: init_kwargs={init_kwargs!r}"
        )
    call_kwargs = dict(call_kwargs or {})
    if isinstance(input_data, np.ndarray) or not isinstance(
        input_data, (tf.Tensor, tf.RaggedTensor, tf.SparseTensor)
    ):
        input_data = tf.convert_to_tensor(input_data)

    _check_config(layer_cls, init_kwargs)
    layer, output = _check_eager(
        layer_cls, init_kwargs, input_data, call_kwargs,
        expected_output_shape, expected_output_dtype, expected_output,
        expected_num_trainable_weights, expected_num_non_trainable_weights,
        atol, rtol,
    )
    model = _check_symbolic(layer, input_data, call_kwargs, output, atol,
                            rtol)
    if run_training_check and layer.trainable_weights:
        _check_training(layer_cls, init_kwargs, input_data, call_kwargs,
                        output, jit_compile=False)
        if run_jit_compile_check:
            _check_training(layer_cls, init_kwargs, input_data, call_kwargs,
                            output, jit_compile=True)
    if run_mixed_precision_check:
        for policy in ("mixed_float16", "mixed_bfloat16"):
            _check_mixed_precision(layer_cls, init_kwargs, input_data,
                                   call_kwargs, policy)
    if run_saving_check:
        _check_saving(model, input_data)
    if run_distribution_check:
        _check_distribution(layer_cls, init_kwargs, input_data, call_kwargs,
                            model, atol=max(atol, 1e-5),
                            rtol=max(rtol, 1e-5))


def _check_config(layer_cls, init_kwargs):
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    try:
        json.dumps(config)
    except TypeError as e:
        raise AssertionError(
            f"{layer_cls.__name__}.get_config() is not JSON-serializable: {e}"
        ) from e
    try:
        revived = layer_cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise AssertionError(
            f"{layer_cls.__name__}.from_config(get_config()) failed: {e}"
        ) from e
    assert revived.get_config() == config, (
        f"{layer_cls.__name__}: from_config(get_config()) changed the "
        f"config.\nbefore: {config}\nafter:  {revived.get_config()}"
    )
    serialized = keras.saving.serialize_keras_object(layer)
    json.dumps(serialized)
    try:
        deserialized = keras.saving.deserialize_keras_object(serialized)
    except (TypeError, ValueError) as e:
        raise AssertionError(
            f"{layer_cls.__name__} does not deserialize without "
            f"custom_objects (is it registered?): {e}"
        ) from e
    assert type(deserialized) is layer_cls, (
        f"deserialize_keras_object gave {type(deserialized).__name__}, "
        f"expected {layer_cls.__name__}"
    )
    assert deserialized.get_config() == config, (
        f"{layer_cls.__name__}: serialize/deserialize changed the config"
    )


def _check_eager(layer_cls, init_kwargs, x, call_kwargs, expected_shape,
                 expected_dtype, expected_output, n_trainable,
                 n_non_trainable, atol, rtol):
    layer = layer_cls(**init_kwargs)
    output = layer(x, **call_kwargs)
    if n_trainable is not None:
        got = len(layer.trainable_weights)
        assert got == n_trainable, (
            f"{layer_cls.__name__}: {got} trainable weights, expected "
            f"{n_trainable}: {[w.path for w in layer.trainable_weights]}"
        )
    if n_non_trainable is not None:
        got = len(layer.non_trainable_weights)
        assert got == n_non_trainable, (
            f"{layer_cls.__name__}: {got} non-trainable weights, expected "
            f"{n_non_trainable}"
        )
    if expected_shape is not None:
        shape = tuple(output.shape)
        assert shape == tuple(expected_shape), (
            f"{layer_cls.__name__}: output shape {shape}, expected "
            f"{tuple(expected_shape)}"
        )
    if expected_dtype is not None:
        dtype = keras.backend.standardize_dtype(output.dtype)
        assert dtype == keras.backend.standardize_dtype(expected_dtype), (
            f"{layer_cls.__name__}: output dtype {dtype}, expected "
            f"{expected_dtype}"
        )
    if expected_output is not None:
        _utils.assert_same(output, expected_output, atol=atol, rtol=rtol,
                           what=f"{layer_cls.__name__} eager output")
    return layer, output


def _check_symbolic(layer, x, call_kwargs, eager_output, atol, rtol):
    name = type(layer).__name__
    inputs = _utils.keras_input_like(x)
    symbolic = layer(inputs, **call_kwargs)
    for sym, eager in zip(tf.nest.flatten(symbolic),
                          tf.nest.flatten(eager_output)):
        sym_shape = tuple(sym.shape)
        eager_shape = tuple(eager.shape)
        assert len(sym_shape) == len(eager_shape) and all(
            s is None or e is None or s == e
            for s, e in zip(sym_shape, eager_shape)
        ), (
            f"{name}: symbolic output shape {sym_shape} does not match the "
            f"eager output shape {eager_shape}"
        )
        sym_dtype = keras.backend.standardize_dtype(sym.dtype)
        eager_dtype = keras.backend.standardize_dtype(eager.dtype)
        assert sym_dtype == eager_dtype, (
            f"{name}: symbolic output dtype {sym_dtype} != eager output "
            f"dtype {eager_dtype}"
        )
    model = keras.Model(inputs, symbolic)
    _utils.assert_same(model(x), eager_output, atol=atol, rtol=rtol,
                       what=f"{name}: functional model vs eager call")
    return model


def _build_model(layer_cls, init_kwargs, x, call_kwargs):
    inputs = _utils.keras_input_like(x)
    outputs = layer_cls(**init_kwargs)(inputs, **call_kwargs)
    return keras.Model(inputs, outputs)


def _target_like(output, seed=0):
    rng = np.random.default_rng(seed)
    return tf.nest.map_structure(
        lambda o: rng.normal(size=tuple(o.shape)).astype("float32"), output
    )


def _check_training(layer_cls, init_kwargs, x, call_kwargs, output,
                    jit_compile):
    name = type(layer_cls).__name__ if not isinstance(
        layer_cls, type) else layer_cls.__name__
    if not _utils.float_outputs(output):
        return
    model = _build_model(layer_cls, init_kwargs, x, call_kwargs)
    y = _target_like(output)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.05),
                  loss="mse", jit_compile=jit_compile)
    data = _utils.single_batch_dataset(x, y)
    before = model.evaluate(data, verbose=0, return_dict=True)["loss"]
    try:
        model.fit(data.repeat(10), epochs=1, verbose=0)
    except ValueError as e:
        raise AssertionError(
            f"{name}: fit failed (jit_compile={jit_compile}): {e}"
        ) from e
    after = model.evaluate(data, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(after), (
        f"{name}: loss became {after} after fit (jit_compile={jit_compile})"
    )
    assert after < before, (
        f"{name}: fit did not lower the loss (jit_compile={jit_compile}): "
        f"{before:.6g} -> {after:.6g}"
    )


def _check_mixed_precision(layer_cls, init_kwargs, x, call_kwargs, policy):
    name = layer_cls.__name__
    with _utils.dtype_policy(policy):
        layer = layer_cls(**init_kwargs)
        output = layer(x, **call_kwargs)
        compute = keras.config.dtype_policy().compute_dtype
    for o in _utils.float_outputs(output):
        got = keras.backend.standardize_dtype(o.dtype)
        assert got == compute, (
            f"{name} under {policy}: output dtype {got}, expected the "
            f"compute dtype {compute}"
        )
    for w in layer.weights:
        dtype = keras.backend.standardize_dtype(w.dtype)
        if "float" in dtype:
            assert dtype == "float32", (
                f"{name} under {policy}: weight {w.path} is {dtype}, "
                "expected float32 (the variable dtype)"
            )


def _check_saving(model, x):
    name = model.layers[-1].__class__.__name__
    expected = model(x)
    loaded = _utils.save_and_reload(model, name)
    _utils.assert_same(loaded(x), expected, atol=0, rtol=0,
                       what=f"{name}: output after .keras save/load")


def _check_distribution(layer_cls, init_kwargs, x, call_kwargs, model, atol,
                        rtol):
    name = layer_cls.__name__
    if _utils.batch_size(x) % 2:
        raise ValueError(
            "The distribution check splits the batch over 2 replicas: "
            "`input_data` needs an even batch size. Received batch size "
            f"{_utils.batch_size(x)}; pass run_distribution_check=False or "
            "an even batch."
        )
    weights = model.get_weights()
    output = model(x)
    if not _utils.float_outputs(output):
        return
    y = _target_like(output, seed=1)
    data = _utils.single_batch_dataset(x, y)

    def fitted(strategy):
        with strategy.scope():
            m = _build_model(layer_cls, init_kwargs, x, call_kwargs)
            m.set_weights(weights)
            m.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                      loss="mse")
        predicted = m.predict(data.map(lambda a, b: a), verbose=0)
        m.fit(data, epochs=1, verbose=0)
        return predicted, m.get_weights()

    single_pred, single_weights = fitted(tf.distribute.get_strategy())
    strategy = _utils.mirrored_strategy()
    if strategy.num_replicas_in_sync < 2:
        raise AssertionError(
            "The distribution check needs 2 logical devices; split the CPU "
            "with tf.config.set_logical_device_configuration before "
            "TensorFlow initializes."
        )
    mirrored_pred, mirrored_weights = fitted(strategy)
    _utils.assert_same(mirrored_pred, single_pred, atol=atol, rtol=rtol,
                       what=f"{name}: MirroredStrategy predict vs 1 device")
    for i, (a, b) in enumerate(zip(mirrored_weights, single_weights)):
        _utils.assert_same(a, b, atol=atol, rtol=rtol,
                           what=f"{name}: weight {i} after one fit step "
                           "under MirroredStrategy vs 1 device")
