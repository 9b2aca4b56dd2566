"""Reusable conformance checks for a Keras 3 optimizer."""

import keras
import numpy as np
import tensorflow as tf

from keras_research.testing import _utils

_DEFAULT_TOLERANCE = {
    "float32": (1e-5, 1e-6),
    # Keras keeps the learning rate in a float32 variable, so a float64
    # update differs from an exact float64 reference by ~1e-8 * |grad|.
    "float64": (1e-7, 1e-7),
}


def run_optimizer_test(
    optimizer_fn,
    reference_step,
    *,
    num_steps=5,
    shapes=((3, 4), (4,)),
    dtypes=("float32", "float64"),
    rtol=None,
    atol=None,
    check_saving=True,
    seed=0,
):
    """Checks an optimizer against a NumPy reference and through saving.

    Checks, in order:

    1. Numerics: for each dtype in `dtypes`, variables of `shapes` are
       updated `num_steps` times with random gradients through
       `optimizer.apply_gradients`, and after every step each variable
       must equal the NumPy reference to `rtol`/`atol` (defaults per dtype:
       float32 1e-5/1e-6, float64 1e-7/1e-7: Keras keeps
       the learning rate in float32). `optimizer.iterations` must
       count the steps.
    2. Saving (`check_saving`): a small model is trained for 3 steps, saved
       as `.keras` and reloaded with `safe_mode=True`; every optimizer
       variable (slots and the iteration count) must be bit-equal; then
       both models train 3 more steps on the same data and must end with
       bit-equal weights (training resumed after a reload equals an
       uninterrupted run). The same is checked through a
       `tf.train.Checkpoint` of model and optimizer.

    Args:
        optimizer_fn: zero-argument callable returning a fresh optimizer.
        reference_step: NumPy reference for one step of one variable:
            `reference_step(param, grad, state, step) -> new_param`, where
            `param` and `grad` are arrays of the variable's dtype, `state`
            is a dict (empty at the first step) in which the reference keeps
            its slots, and `step` counts from 1. The learning rate etc. are
            the reference's own constants.
        num_steps: number of steps compared.
        shapes: shapes of the variables updated together.
        dtypes: variable dtypes to check.
        rtol: relative tolerance (default per dtype).
        atol: absolute tolerance (default per dtype).
        check_saving: whether to run check 2.
        seed: seed of the random initial values and gradients.

    Raises:
        ValueError: if the arguments are invalid.
        AssertionError: if the optimizer fails a check.

    Example:

    >>> import keras
    >>> from keras_research.testing import run_optimizer_test
    >>> def sgd(param, grad, state, step):
    ...     return param - 0.1 * grad
    >>> run_optimizer_test(
    ...     lambda: keras.optimizers.SGD(learning_rate=0.1), sgd)
    """
    if not callable(optimizer_fn):
        raise ValueError(
            "`optimizer_fn` must be a callable returning a fresh optimizer. "
            f"Received: optimizer_fn={optimizer_fn!r}"
        )
    if not callable(reference_step):
        raise ValueError(
            "`reference_step` must be a callable "
            "(param, grad, state, step) -> new_param. "
            f"Received: reference_step={reference_step!r}"
        )
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(
            "`num_steps` must be a positive integer. "
            f"Received: num_steps={num_steps!r}"
        )
    probe = optimizer_fn()
    if not isinstance(probe, keras.optimizers.Optimizer):
        raise ValueError(
            "`optimizer_fn()` must return a keras.optimizers.Optimizer. "
            f"Received: {probe!r}"
        )
    for dtype in dtypes:
        default_rtol, default_atol = _DEFAULT_TOLERANCE.get(
            dtype, (1e-3, 1e-3))
        _check_numerics(
            optimizer_fn, reference_step, num_steps, shapes, dtype,
            default_rtol if rtol is None else rtol,
            default_atol if atol is None else atol, seed,
        )
    if check_saving:
        _check_keras_saving(optimizer_fn, seed)
        _check_checkpoint(optimizer_fn, seed)


def _check_numerics(optimizer_fn, reference_step, num_steps, shapes, dtype,
                    rtol, atol, seed):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s).astype(dtype) for s in shapes]
    grads = [[rng.normal(size=s).astype(dtype) for s in shapes]
             for _ in range(num_steps)]
    variables = [keras.Variable(p, dtype=dtype, name=f"v{i}")
                 for i, p in enumerate(params)]
    optimizer = optimizer_fn()
    name = type(optimizer).__name__
    states = [dict() for _ in shapes]
    expected = [p.copy() for p in params]
    for step in range(1, num_steps + 1):
        optimizer.apply_gradients(
            zip([tf.constant(g) for g in grads[step - 1]], variables))
        for i in range(len(shapes)):
            expected[i] = np.asarray(
                reference_step(expected[i], grads[step - 1][i], states[i],
                               step)
            ).astype(dtype)
            got = keras.ops.convert_to_numpy(variables[i])
            assert got.dtype == np.dtype(dtype), (
                f"{name}: variable {i} changed dtype to {got.dtype}"
            )
            np.testing.assert_allclose(
                got, expected[i], rtol=rtol, atol=atol,
                err_msg=f"{name}: variable {i} ({dtype}) differs from the "
                f"NumPy reference after step {step}",
            )
    iterations = int(keras.ops.convert_to_numpy(optimizer.iterations))
    assert iterations == num_steps, (
        f"{name}: optimizer.iterations is {iterations} after {num_steps} "
        "steps"
    )


def _model_and_data(optimizer, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    return model, x, y


def _optimizer_state(optimizer):
    return [keras.ops.convert_to_numpy(v) for v in optimizer.variables]


def _assert_states_equal(actual, expected, name, how):
    assert len(actual) == len(expected), (
        f"{name}: {len(actual)} optimizer variables after {how}, expected "
        f"{len(expected)}"
    )
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_array_equal(
            a, e, err_msg=f"{name}: optimizer variable {i} differs after {how}"
        )


def _continue_and_compare(model, loaded, x, y, name, how):
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    for i, (a, e) in enumerate(zip(loaded.get_weights(),
                                   model.get_weights())):
        np.testing.assert_array_equal(
            a, e, err_msg=f"{name}: weight {i} after training resumed from "
            f"{how} differs from an uninterrupted run",
        )


def _check_keras_saving(optimizer_fn, seed):
    model, x, y = _model_and_data(optimizer_fn(), seed)
    name = type(model.optimizer).__name__
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    loaded = _utils.save_and_reload(model, name)
    assert type(loaded.optimizer) is type(model.optimizer), (
        f"{name}: reloaded optimizer is {type(loaded.optimizer).__name__}"
    )
    assert loaded.optimizer.get_config() == model.optimizer.get_config(), (
        f"{name}: optimizer config changed through .keras saving"
    )
    _assert_states_equal(_optimizer_state(loaded.optimizer),
                         _optimizer_state(model.optimizer), name,
                         ".keras save/load")
    _continue_and_compare(model, loaded, x, y, name, ".keras")


def _check_checkpoint(optimizer_fn, seed):
    model, x, y = _model_and_data(optimizer_fn(), seed)
    name = type(model.optimizer).__name__
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    with _utils.temp_dir() as d:
        prefix = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer).write(
                _utils.temp_path(d, "ckpt"))
        restored, _, _ = _model_and_data(optimizer_fn(), seed + 1)
        restored.optimizer.build(restored.trainable_variables)
        status = tf.train.Checkpoint(
            model=restored, optimizer=restored.optimizer).read(prefix)
        status.assert_existing_objects_matched()
    _assert_states_equal(_optimizer_state(restored.optimizer),
                         _optimizer_state(model.optimizer), name,
                         "tf.train.Checkpoint restore")
    _continue_and_compare(model, restored, x, y, name, "tf.train.Checkpoint")
