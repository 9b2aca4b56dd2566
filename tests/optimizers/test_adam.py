"""Tests of `keras_research.optimizers.Adam` against Keras and NumPy."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_research.optimizers import Adam
from keras_research.testing import run_optimizer_test


def _numpy_adam(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False):
    """Kingma & Ba with Keras's epsilon-hat placement, one variable.

    Like `keras.optimizers.Adam`, which casts the Python betas through
    float32 before raising them to the step's power, the bias corrections
    use float32-rounded betas (this matters only in the float64 check).
    """
    beta_1_f32, beta_2_f32 = (
        float(np.float32(beta_1)),
        float(np.float32(beta_2)),
    )

    def step(param, grad, state, t):
        m = state.get("m", np.zeros_like(param))
        v = state.get("v", np.zeros_like(param))
        m = m + (grad - m) * (1 - beta_1)
        v = v + (grad**2 - v) * (1 - beta_2)
        state["m"], state["v"] = m, v
        if amsgrad:
            v = np.maximum(state.get("v_hat", np.zeros_like(param)), v)
            state["v_hat"] = v
        alpha = lr * np.sqrt(1 - beta_2_f32**t) / (1 - beta_1_f32**t)
        return param - alpha * m / (np.sqrt(v) + epsilon)

    return step


@pytest.mark.parametrize(
    "amsgrad, jit_compile", [(False, True), (True, True), (True, False)]
)
def test_conformance(amsgrad, jit_compile):
    run_optimizer_test(
        lambda: Adam(
            learning_rate=0.01, amsgrad=amsgrad, jit_compile=jit_compile
        ),
        _numpy_adam(lr=0.01, amsgrad=amsgrad),
        num_steps=6,
        # The large kernel takes the compiled path, the small ones run op
        # by op.
        shapes=((3, 4), (130, 128), (4,)),
        check_saving=jit_compile and amsgrad,
    )


def test_one_step_by_hand():
    variable = keras.Variable([1.0, -2.0])
    optimizer = Adam(learning_rate=0.1)
    optimizer.apply([tf.constant([0.5, -4.0])], [variable])
    # Step 1: m = 0.1 g, v = 0.001 g^2, alpha = 0.1 sqrt(0.001) / 0.1, so
    # the update is 0.1 * sign(g) * |g| / (|g| + 1e-7 / sqrt(0.001)).
    expected = [
        1.0 - 0.1 * 0.5 / (0.5 + 1e-7 / np.sqrt(0.001)),
        -2.0 + 0.1 * 4.0 / (4.0 + 1e-7 / np.sqrt(0.001)),
    ]
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_matches_keras_adam_over_100_steps(amsgrad):
    rng = np.random.default_rng(0)
    init = [
        rng.normal(size=(5, 4)).astype("float32"),
        rng.normal(size=(4,)).astype("float32"),
        rng.normal(size=(130, 128)).astype("float32"),  # Compiled.
    ]
    grads = [
        [rng.normal(size=w.shape).astype("float32") for w in init]
        for _ in range(100)
    ]
    results = []
    for optimizer in (
        keras.optimizers.Adam(amsgrad=amsgrad),
        Adam(amsgrad=amsgrad),
    ):
        variables = [keras.Variable(w) for w in init]
        step = _compiled_apply(optimizer, variables)
        for gs in grads:
            step([tf.constant(g) for g in gs])
        results.append([v.numpy() for v in variables])
    for keras_value, ours in zip(*results):
        np.testing.assert_allclose(ours, keras_value, rtol=1e-6, atol=1e-7)
    reference = _numpy_adam(lr=0.001, amsgrad=amsgrad)
    for i, w in enumerate(init):
        state, w = {}, w.astype("float64")
        for t, gs in enumerate(grads, start=1):
            w = reference(w, gs[i].astype("float64"), state, t)
        np.testing.assert_allclose(results[1][i], w, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.01, beta_1=0.5, beta_2=0.9, epsilon=1e-3),
        dict(learning_rate=0.01, amsgrad=True),
        dict(learning_rate=0.01, weight_decay=0.1),
        dict(learning_rate=0.01, clipnorm=0.1),
        dict(learning_rate=0.01, clipvalue=0.01),
        dict(learning_rate=0.01, global_clipnorm=0.1),
        dict(learning_rate=0.01, use_ema=True, ema_overwrite_frequency=3),
        dict(learning_rate=0.01, gradient_accumulation_steps=2),
        dict(learning_rate=0.01, loss_scale_factor=128.0),
    ],
    ids=lambda kw: ",".join(k for k in kw if k != "learning_rate") or "lr",
)
def test_optimizer_arguments_match_keras(kwargs):
    keras_model, ours = _fit_pair(
        lambda: keras.optimizers.Adam(**kwargs), lambda: Adam(**kwargs)
    )
    _assert_weights_close(keras_model, ours)


def test_schedule_and_weight_decay_exclusion_match_keras():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 2, 0.5)

    def make(cls):
        optimizer = cls(learning_rate=schedule, weight_decay=0.2)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        return optimizer

    keras_model, ours = _fit_pair(
        lambda: make(keras.optimizers.Adam), lambda: make(Adam)
    )
    _assert_weights_close(keras_model, ours)


@pytest.mark.parametrize(
    "mode, jit_compile",
    [("graph", True), ("jit_compile", True), ("eager", True), ("eager", False)],
)
def test_train_step_modes_match_keras(mode, jit_compile):
    compile_kwargs = {
        "graph": dict(jit_compile=False),
        "jit_compile": dict(jit_compile=True),
        "eager": dict(run_eagerly=True),
    }[mode]
    keras_model, ours = _fit_pair(
        lambda: keras.optimizers.Adam(0.01),
        lambda: Adam(0.01, jit_compile=jit_compile),
        compile_kwargs=compile_kwargs,
    )
    _assert_weights_close(keras_model, ours)


def test_mirrored_strategy_matches_keras():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras_model, ours = _fit_pair(
        lambda: keras.optimizers.Adam(0.01, weight_decay=0.1),
        lambda: Adam(0.01, weight_decay=0.1),
        strategy=strategy,
    )
    _assert_weights_close(keras_model, ours)
    assert ours.optimizer.iterations.numpy() == 8


def test_mixed_float16_loss_scaling_matches_keras():
    keras.config.set_dtype_policy("mixed_float16")
    keras_model, ours = _fit_pair(
        lambda: keras.optimizers.Adam(0.01), lambda: Adam(0.01)
    )
    assert isinstance(ours.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(ours.optimizer.inner_optimizer, Adam)
    _assert_weights_close(keras_model, ours, rtol=1e-3, atol=1e-4)


def test_non_finite_gradients_behave_as_keras():
    for cls in (keras.optimizers.Adam, Adam):
        variable = keras.Variable([1.0, 2.0])
        cls().apply([tf.constant([np.nan, 1.0])], [variable])
        # As in Keras: applied as is, nan reaches the variable.
        assert np.isnan(variable.numpy()[0])
        assert np.isfinite(variable.numpy()[1])
        # A LossScaleOptimizer skips the step and halves its scale.
        variable = keras.Variable([1.0, 2.0])
        optimizer = keras.optimizers.LossScaleOptimizer(cls())
        optimizer.apply([tf.constant([np.inf, 1.0])], [variable])
        np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])
        assert float(optimizer.dynamic_scale) == 2.0**14


def _indexed_slices(ids, rng, shape=(10, 3)):
    values = rng.normal(size=(len(ids), shape[1])).astype("float32")
    return tf.IndexedSlices(
        tf.constant(values), tf.constant(ids), tf.constant(shape)
    )


# A 10 x 3 table runs op by op, a 2000 x 16 one in a compiled call.
TABLES = pytest.mark.parametrize("shape", [(10, 3), (2000, 16)])


@TABLES
def test_sparse_gradient_without_duplicates_matches_keras(shape):
    rng = np.random.default_rng(0)
    table = rng.normal(size=shape).astype("float32")
    grads = [
        _indexed_slices([1, 4, 7], rng, shape),
        _indexed_slices([4, 2], rng, shape),
    ]
    results = []
    for optimizer in (keras.optimizers.Adam(0.1), Adam(0.1)):
        variable = keras.Variable(table)
        step = _compiled_apply(optimizer, [variable])
        for grad in grads:
            step([grad])
        results.append(variable.numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)
    untouched = [0, 3, 5, 6, 8, 9]
    np.testing.assert_array_equal(results[1][untouched], table[untouched])


@TABLES
def test_sparse_gradient_with_duplicates_is_summed_first(shape):
    # Keras's Adam squares the rows of an IndexedSlices before summing
    # duplicates (sum of g_i**2); ours densifies first, so the second
    # moment sees (sum of g_i)**2: Adam on the true gradient.
    rng = np.random.default_rng(0)
    table = rng.normal(size=shape).astype("float32")
    grad = _indexed_slices([1, 4, 4, 7], rng, shape)
    variable = keras.Variable(table)
    step = _compiled_apply(Adam(0.1), [variable])
    step([grad])
    step([grad])
    dense = tf.convert_to_tensor(grad).numpy()
    reference, state = table.astype("float64"), {}
    for t in (1, 2):
        reference = _numpy_adam(lr=0.1)(reference, dense, state, t)
    np.testing.assert_allclose(
        variable.numpy(), reference, rtol=1e-5, atol=1e-6
    )


@TABLES
def test_repeated_id_first_step_is_lr_not_sqrt2_lr(shape):
    # Row 4 is looked up twice with the same row gradient g, so the true
    # gradient of that row is 2g and Adam's first step is lr * sign(g).
    # Keras's Adam accumulates m and v per IndexedSlices row (m = 0.2 g,
    # v = 0.002 g**2): its step is sqrt(2) * lr. Ours is lr, as for any
    # row looked up once, and as Keras's Adam on the dense gradient.
    values = tf.constant(np.full((3, shape[1]), 0.5, "float32"))
    grad = tf.IndexedSlices(
        values, tf.constant([4, 4, 7]), tf.constant(shape)
    )
    steps = {}
    for name, optimizer in (
        ("keras", keras.optimizers.Adam(0.1)),
        ("ours", Adam(0.1)),
        ("keras dense", keras.optimizers.Adam(0.1)),
    ):
        variable = keras.Variable(np.zeros(shape, "float32"))
        g = tf.convert_to_tensor(grad) if name == "keras dense" else grad
        _compiled_apply(optimizer, [variable])([g])
        steps[name] = -variable.numpy()[[4, 7], 0]
    np.testing.assert_allclose(steps["ours"], [0.1, 0.1], rtol=1e-4)
    np.testing.assert_allclose(steps["keras dense"], steps["ours"], rtol=1e-6)
    np.testing.assert_allclose(
        steps["keras"], [0.1 * np.sqrt(2), 0.1], rtol=1e-4
    )


def test_embedding_model_fit_lowers_loss():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(64, 3)).astype("int32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = _model(embedding=True)
    model.compile(optimizer=Adam(0.05), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(learning_rate="fast"), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(learning_rate=True), "learning_rate"),
        (dict(beta_1=1.0), "beta_1"),
        (dict(beta_1=-0.1), "beta_1"),
        (dict(beta_2=1.5), "beta_2"),
        (dict(beta_2="0.9"), "beta_2"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1e-7), "epsilon"),
        (dict(amsgrad="yes"), "amsgrad"),
        (dict(jit_compile=1), "jit_compile"),
        (dict(fused_kernel="yes"), "fused_kernel"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam(**kwargs)


def test_integer_learning_rate_is_accepted():
    assert Adam(learning_rate=1).get_config()["learning_rate"] == 1.0


def test_config_round_trip():
    optimizer = Adam(
        learning_rate=0.02,
        beta_1=0.8,
        amsgrad=True,
        jit_compile=False,
        weight_decay=0.01,
        clipnorm=1.0,
    )
    config = optimizer.get_config()
    restored = Adam.from_config(config)
    assert restored.get_config() == config
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert isinstance(restored, Adam)
    assert restored.get_config() == config
    assert keras.optimizers.serialize(optimizer)["registered_name"] == (
        "keras_research>Adam"
    )


def test_same_arguments_and_defaults_as_keras_adam():
    import inspect

    ours = inspect.signature(Adam.__init__).parameters
    theirs = inspect.signature(keras.optimizers.Adam.__init__).parameters
    for name, parameter in theirs.items():
        assert name in ours, name
        if name != "name":  # "adam" before Keras 3.15, then None.
            assert ours[name].default == parameter.default, name
    # Both resolve to "adam" (made unique as "adam_1", ... per session).
    default_names = {
        re.sub(r"_\d+$", "", cls().name)
        for cls in (keras.optimizers.Adam, Adam)
    }
    assert default_names == {"adam"}
    keras_config = keras.optimizers.Adam().get_config()
    our_config = Adam().get_config()
    our_config.pop("jit_compile")
    our_config.pop("fused_kernel")
    keras_config.pop("name")
    our_config.pop("name")
    assert our_config == keras_config


# ----------------------------------------------------------------------
# Helpers.


def _compiled_apply(optimizer, variables):
    """A `tf.function` applying gradients (variables captured, not args)."""

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    return step


def _model(embedding=False):
    if not embedding:
        inputs = keras.Input((3,))
        hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    else:
        inputs = keras.Input((3,), dtype="int32")
        hidden = keras.layers.Embedding(20, 4)(inputs)
        hidden = keras.layers.Flatten()(hidden)
        hidden = keras.layers.Dense(8, activation="tanh")(hidden)
    outputs = keras.layers.Dense(1)(hidden)
    return keras.Model(inputs, outputs)


def _fit_pair(
    make_keras, make_ours, compile_kwargs=None, strategy=None, steps=8
):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    models = []
    for make in (make_keras, make_ours):
        keras.utils.set_random_seed(7)
        scope = strategy.scope() if strategy else _null()
        with scope:
            model = _model()
            model.compile(
                optimizer=make(), loss="mse", **(compile_kwargs or {})
            )
        model.fit(
            x,
            y,
            batch_size=32 // (steps // 2),
            epochs=2,
            shuffle=False,
            verbose=0,
        )
        models.append(model)
    return models


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def _assert_weights_close(expected_model, model, rtol=1e-5, atol=1e-6):
    assert model.optimizer.iterations.numpy() > 0
    for i, (a, e) in enumerate(
        zip(model.get_weights(), expected_model.get_weights())
    ):
        np.testing.assert_allclose(
            a, e, rtol=rtol, atol=atol, err_msg=f"weight {i}"
        )
