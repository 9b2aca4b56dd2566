"""Tests for keras_research.callbacks.JacobianRegularizer."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_research.callbacks.jacobian_regularizer import JacobianRegularizer
from keras_research.layers import RaggedEmbeddingBag
from keras_research.optimizers import Adam

PATCHED = ("train_step", "call", "compute_loss", "compute_metrics")


# ---------------------------------------------------------------------------
# Independent references.


def loop_norm(fn, x):
    """Mean over the batch of ||d fn(x)_b / d x_b||_F^2, by a Python loop
    of `tape.gradient` over the outputs (eager, no pfor)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = fn(x)
        y = tf.reshape(y, [x.shape[0], -1])
        columns = [y[:, k] for k in range(y.shape[1])]
    total = 0.0
    for column in columns:
        g = tape.gradient(column, x)
        total += float(tf.reduce_sum(tf.square(g)))
    return total / x.shape[0]


def finite_difference_norm(fn, x, eps=1e-3):
    """Same quantity by central finite differences, one input at a time."""
    x = np.asarray(x, dtype=np.float64)
    batch = x.shape[0]
    flat = x.reshape(batch, -1)
    total = 0.0
    for j in range(flat.shape[1]):
        step = np.zeros_like(flat)
        step[:, j] = eps
        plus = np.asarray(fn((flat + step).reshape(x.shape)), np.float64)
        minus = np.asarray(fn((flat - step).reshape(x.shape)), np.float64)
        derivative = (plus - minus).reshape(batch, -1) / (2 * eps)
        total += np.sum(derivative**2)
    return total / batch


def mlp(num_inputs=6, num_outputs=4, activation="tanh", **compile_kwargs):
    model = keras.Sequential(
        [
            keras.Input((num_inputs,)),
            keras.layers.Dense(16, activation=activation),
            keras.layers.Dense(16, activation=activation),
            keras.layers.Dense(num_outputs),
        ]
    )
    compile_kwargs.setdefault("optimizer", keras.optimizers.SGD(0.0))
    compile_kwargs.setdefault("loss", "mse")
    model.compile(**compile_kwargs)
    return model


def data(n=32, num_inputs=6, num_outputs=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, num_inputs)).astype("float32")
    y = rng.normal(size=(n, num_outputs)).astype("float32")
    return x, y


def logged_norm(model, x, y, **kwargs):
    """`jacobian_norm` logged by one `fit` step over the whole batch
    (`method="exact"` unless given)."""
    kwargs.setdefault("method", "exact")
    history = model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[JacobianRegularizer(1.0, **kwargs)],
    )
    return history.history["jacobian_norm"][0]


def assert_clean(model, layer=None):
    for name in PATCHED:
        assert name not in model.__dict__, name
    if layer is not None:
        assert "call" not in layer.__dict__


# ---------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("per_example", [True, False])
def test_exact_norm_matches_loop_and_finite_differences(per_example):
    model = mlp()
    x, y = data()
    expected = loop_norm(model, x)
    fd = finite_difference_norm(lambda v: model(v.astype("float32")), x)
    got = logged_norm(model, x, y, per_example=per_example)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(got, fd, rtol=2e-3)


def test_exact_norm_conv_net():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, activation="tanh"),
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(8, 3)).astype("float32")
    expected = loop_norm(model, x)
    got = {
        per_example: logged_norm(model, x, y, per_example=per_example)
        for per_example in (True, False)
    }
    fd = finite_difference_norm(lambda v: model(v.astype("float32")), x)
    np.testing.assert_allclose(got[True], expected, rtol=1e-5)
    np.testing.assert_allclose(got[False], expected, rtol=1e-5)
    np.testing.assert_allclose(got[True], fd, rtol=5e-3)


@pytest.mark.parametrize(
    "per_example,num_projections", [(True, 1), (True, 3), (False, 2)]
)
def test_projection_estimator_is_unbiased(per_example, num_projections):
    model = mlp(num_outputs=5)
    x, y = data(16, num_outputs=5)
    expected = loop_norm(model, x)
    steps = 150
    # The same batch, `steps` times, with a frozen model: the epoch mean of
    # `jacobian_norm` is the mean of `steps` independent estimates.
    history = model.fit(
        np.tile(x, (steps, 1)),
        np.tile(y, (steps, 1)),
        batch_size=len(x),
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[
            JacobianRegularizer(
                1.0,
                method="projection",
                num_projections=num_projections,
                per_example=per_example,
            )
        ],
    )
    mean = history.history["jacobian_norm"][0]
    # One estimate per example and projection has a relative standard
    # deviation below sqrt(2) (unit vectors in R^5); the mean of
    # 150 * 16 of them (150 with per_example=False, smaller spread over the
    # whole batch) is within 10% with overwhelming probability.
    np.testing.assert_allclose(mean, expected, rtol=0.1)


def test_penalty_gradient_matches_finite_differences():
    # float64 throughout (the Input layer too) so that the finite
    # differences are accurate; the conftest restores the dtype policy.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        model = keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(4, activation="tanh"),
                keras.layers.Dense(2),
            ]
        )
        x, y = data(5, num_inputs=3, num_outputs=2)
        x = x.astype("float64")
        weights = [w.numpy().copy() for w in model.trainable_weights]

        def penalty(values):
            for w, v in zip(model.trainable_weights, values):
                w.assign(v)
            return loop_norm(model, x)

        expected = []
        eps = 1e-5
        for i, w in enumerate(weights):
            grad = np.zeros_like(w)
            for index in np.ndindex(w.shape):
                plus = [v.copy() for v in weights]
                minus = [v.copy() for v in weights]
                plus[i][index] += eps
                minus[i][index] -= eps
                grad[index] = (penalty(plus) - penalty(minus)) / (2 * eps)
            expected.append(grad)
        penalty(weights)

        # Zero data loss and SGD(1): one step moves each weight by minus
        # the gradient of the penalty.
        model.compile(
            optimizer=keras.optimizers.SGD(1.0),
            loss=lambda t, p: 0.0 * keras.ops.mean(p),
        )
        model.fit(
            x,
            y,
            batch_size=len(x),
            epochs=1,
            verbose=0,
            callbacks=[JacobianRegularizer(1.0, method="exact")],
        )
        for before, after, grad in zip(
            weights, model.trainable_weights, expected
        ):
            np.testing.assert_allclose(
                before - after.numpy(), grad, rtol=1e-6, atol=1e-8
            )
    finally:
        keras.config.set_floatx("float32")


def test_regularized_training_lowers_jacobian_norm():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 10)) * 2.0
    labels = rng.integers(0, 3, 600)
    x = (centers[labels] + rng.normal(size=(600, 10))).astype("float32")

    def train(callbacks):
        keras.utils.set_random_seed(7)
        model = mlp(
            num_inputs=10,
            num_outputs=3,
            optimizer=keras.optimizers.Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        history = model.fit(
            x[:500],
            labels[:500],
            batch_size=50,
            epochs=8,
            verbose=0,
            callbacks=callbacks,
        )
        accuracy = model.evaluate(x[500:], labels[500:], verbose=0)[1]
        return history, accuracy, loop_norm(model, x[:200])

    _, plain_accuracy, plain_norm = train([])
    history, accuracy, norm = train([JacobianRegularizer(0.05)])
    assert norm < 0.5 * plain_norm, (norm, plain_norm)
    assert accuracy >= plain_accuracy - 0.05, (accuracy, plain_accuracy)
    assert (
        history.history["jacobian_norm"][-1]
        < (history.history["jacobian_norm"][0])
    )


# ---------------------------------------------------------------------------
# `wrt`: text models with ragged integer input.


def ragged_text_model():
    ids = keras.Input(shape=(None,), dtype="int64", ragged=True)
    bag = RaggedEmbeddingBag(50, 8, name="bag")(ids)
    hidden = keras.layers.Dense(16, activation="tanh", name="hidden")(bag)
    logits = keras.layers.Dense(3, name="logits")(hidden)
    return keras.Model(ids, logits)


def ragged_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, 50, size=rng.integers(1, 8)) for _ in range(n)]
    x = tf.ragged.constant(rows, dtype=tf.int64)
    y = rng.integers(0, 3, n)
    return x, y


def test_wrt_embedding_bag_on_ragged_text_model():
    model = ragged_text_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = ragged_data()
    bag = model.get_layer("bag")
    head = keras.Sequential(
        [model.get_layer("hidden"), model.get_layer("logits")]
    )
    expected = loop_norm(head, bag(x))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    history = model.fit(
        dataset,
        epochs=1,
        verbose=0,
        validation_data=dataset,
        callbacks=[JacobianRegularizer(1.0, wrt="bag", method="exact")],
    )
    np.testing.assert_allclose(
        history.history["jacobian_norm"][0], expected, rtol=1e-5
    )
    assert "val_jacobian_norm" not in history.history
    assert_clean(model, bag)


@pytest.mark.parametrize(
    "method", ["exact", pytest.param("projection", marks=pytest.mark.slow)]
)
def test_wrt_trains_text_model_with_keras_research_adam(method):
    model = ragged_text_model()
    model.compile(
        optimizer=Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = ragged_data(64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(
        dataset,
        epochs=3,
        verbose=0,
        callbacks=[JacobianRegularizer(0.1, wrt="bag", method=method)],
    )
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(np.isfinite(history.history["jacobian_norm"]))
    assert_clean(model, model.get_layer("bag"))


def test_wrt_in_sequential_model():
    model = mlp()
    x, y = data()
    first = model.layers[0]
    head = keras.Sequential(model.layers[1:])
    expected = loop_norm(head, first(x))
    got = logged_norm(model, x, y, wrt=first.name)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert_clean(model, first)


# ---------------------------------------------------------------------------
# Training, evaluation and the model afterwards.


def test_penalty_only_in_training_loss():
    model = mlp()
    x, y = data()
    plain_loss = model.evaluate(x, y, verbose=0, batch_size=len(x))
    history = model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        validation_data=(x, y),
        callbacks=[JacobianRegularizer(0.5)],
    )
    logs = history.history
    assert sorted(logs) == ["jacobian_norm", "loss", "val_loss"]
    np.testing.assert_allclose(logs["val_loss"][0], plain_loss, rtol=1e-6)
    np.testing.assert_allclose(
        logs["loss"][0], plain_loss + 0.5 * logs["jacobian_norm"][0], rtol=1e-5
    )


def test_model_is_left_as_found(tmp_path):
    model = mlp()
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    train_function = model.train_function
    model.fit(x, y, epochs=1, verbose=0, callbacks=[JacobianRegularizer(1.0)])
    assert_clean(model)
    assert model.train_function is train_function
    # A later fit without the callback has no penalty.
    plain_loss = model.evaluate(x, y, verbose=0, batch_size=len(x))
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], plain_loss, 1e-6)
    assert "jacobian_norm" not in history.history
    # And it saves and reloads without the callback.
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


# ---------------------------------------------------------------------------
# Argument checking.


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"weight": -0.1}, "`weight` must be a finite float >= 0"),
        ({"weight": float("nan")}, "`weight` must be a finite float >= 0"),
        ({"weight": "big"}, "`weight` must be a float >= 0"),
        ({"weight": True}, "`weight` must be a float >= 0"),
        ({"method": "fd"}, "`method` must be one of"),
        ({"num_projections": 0}, "`num_projections` must be an integer >= 1"),
        ({"num_projections": 1.5}, "`num_projections` must be an integer"),
        ({"wrt": ""}, "`wrt` must be None or the name of a layer"),
        ({"wrt": 3}, "`wrt` must be None or the name of a layer"),
        ({"per_example": 1}, "`per_example` must be a bool"),
        ({"log_norm": None}, "`log_norm` must be a bool"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JacobianRegularizer(**kwargs)


def test_integer_input_without_wrt_says_to_pass_wrt():
    ids = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(10, 4, name="embedding")(ids)
    model = keras.Model(ids, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((4, 5), "int32")
    with pytest.raises(ValueError, match="pass `wrt=<layer name>`"):
        model.fit(
            x, np.zeros((4, 2)), verbose=0, callbacks=[JacobianRegularizer()]
        )
    assert_clean(model)
    model.fit(
        x,
        np.zeros((4, 2)),
        verbose=0,
        callbacks=[JacobianRegularizer(wrt="embedding")],
    )


def test_ragged_input_without_wrt_says_to_pass_wrt():
    model = ragged_text_model()
    model.compile(optimizer="sgd", loss="mse")
    x, y = ragged_data(8)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with pytest.raises(ValueError, match="ragged.*pass `wrt=<layer name>`"):
        model.fit(dataset, verbose=0, callbacks=[JacobianRegularizer()])


def test_unknown_layer_name():
    model = mlp()
    x, y = data(4)
    with pytest.raises(ValueError, match="Received: wrt='nope'"):
        model.fit(x, y, verbose=0, callbacks=[JacobianRegularizer(wrt="nope")])
    assert_clean(model)


def test_multi_input_model_without_wrt():
    a = keras.Input((3,))
    b = keras.Input((2,))
    out = keras.layers.Dense(2)(keras.layers.Concatenate(name="cat")([a, b]))
    model = keras.Model([a, b], out)
    model.compile(optimizer="sgd", loss="mse")
    x = [np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32")]
    with pytest.raises(ValueError, match="single input.*has 2"):
        model.fit(
            x, np.zeros((4, 2)), verbose=0, callbacks=[JacobianRegularizer()]
        )
    model.fit(
        x,
        np.zeros((4, 2)),
        verbose=0,
        callbacks=[JacobianRegularizer(wrt="cat")],
    )


def test_model_not_compiled():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    callback = JacobianRegularizer()
    callback.set_model(model)
    with pytest.raises(ValueError, match="needs a compiled model"):
        callback.on_train_begin()
    assert_clean(model)


# ---------------------------------------------------------------------------
# Interrupted fits.


class _Boom(keras.layers.Layer):
    """Identity that raises while the train step is traced, when armed."""

    armed = False

    def call(self, x, training=False):
        if training and _Boom.armed:
            raise RuntimeError("boom")
        return x


class _RaiseAt(keras.callbacks.Callback):
    def __init__(self, hook, error=RuntimeError):
        super().__init__()
        self.hook = hook
        self.error = error

    def _maybe_raise(self, hook):
        if hook == self.hook:
            raise self.error("interrupted")

    def on_train_batch_end(self, batch, logs=None):
        self._maybe_raise("batch_end")

    def on_epoch_end(self, epoch, logs=None):
        self._maybe_raise("epoch_end")


def test_restored_when_the_train_step_raises():
    model = keras.Sequential(
        [keras.Input((6,)), _Boom(), keras.layers.Dense(4)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    _Boom.armed = True
    try:
        with pytest.raises(RuntimeError, match="boom"):
            model.fit(x, y, verbose=0, callbacks=[JacobianRegularizer(1.0)])
    finally:
        _Boom.armed = False
    assert_clean(model)
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert "jacobian_norm" not in history.history


@pytest.mark.parametrize(
    "hook,error",
    [("batch_end", RuntimeError), ("epoch_end", KeyboardInterrupt)],
)
def test_patch_left_by_an_interrupted_fit_is_inert_then_removed(hook, error):
    model = mlp()
    x, y = data()
    with pytest.raises(error, match="interrupted"):
        model.fit(
            x,
            y,
            batch_size=len(x),
            epochs=2,
            verbose=0,
            callbacks=[JacobianRegularizer(1.0), _RaiseAt(hook, error)],
        )
    # Nothing of the penalty reaches evaluate or a later fit, and that fit
    # removes the leftover patch.
    plain_loss = model.evaluate(x, y, verbose=0, batch_size=len(x))
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], plain_loss, 1e-6)
    assert "jacobian_norm" not in history.history
    assert_clean(model)


def test_restored_when_the_weight_schedule_raises():
    model = mlp()
    x, y = data()

    def weight(epoch, step):
        raise ArithmeticError("bad schedule")

    with pytest.raises(ArithmeticError, match="bad schedule"):
        model.fit(x, y, verbose=0, callbacks=[JacobianRegularizer(weight)])
    assert_clean(model)


def test_two_regularizers_in_one_fit():
    model = mlp()
    x, y = data(4)
    with pytest.raises(ValueError, match="Only one JacobianRegularizer"):
        model.fit(
            x,
            y,
            verbose=0,
            callbacks=[JacobianRegularizer(), JacobianRegularizer()],
        )
    assert_clean(model)
    model.fit(x, y, verbose=0, callbacks=[JacobianRegularizer()])
    assert_clean(model)


# ---------------------------------------------------------------------------
# Weight schedules and logging.


def test_weight_callable_of_epoch_and_step():
    model = mlp()
    x, y = data()
    plain_loss = model.evaluate(x, y, verbose=0, batch_size=len(x))
    seen = []

    def weight(epoch, step):
        seen.append((epoch, step))
        return 0.0 if epoch == 0 else 2.0

    history = model.fit(
        np.concatenate([x, x]),
        np.concatenate([y, y]),
        batch_size=len(x),
        epochs=2,
        verbose=0,
        shuffle=False,
        callbacks=[JacobianRegularizer(weight)],
    )
    assert seen == [(0, 0), (0, 1), (1, 2), (1, 3)]
    loss, norm = history.history["loss"], history.history["jacobian_norm"]
    np.testing.assert_allclose(loss[0], plain_loss, rtol=1e-6)
    np.testing.assert_allclose(loss[1], plain_loss + 2.0 * norm[1], 1e-5)


def test_weight_learning_rate_schedule():
    model = mlp()
    x, y = data()
    plain_loss = model.evaluate(x, y, verbose=0, batch_size=len(x))
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [0], [0.0, 1.0]
    )
    history = model.fit(
        np.concatenate([x, x]),
        np.concatenate([y, y]),
        batch_size=len(x),
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[JacobianRegularizer(schedule, method="exact")],
    )
    # Step 0 has weight 0, step 1 weight 1: the epoch's mean loss is the
    # plain loss plus half the norm.
    np.testing.assert_allclose(
        history.history["loss"][0],
        plain_loss + 0.5 * history.history["jacobian_norm"][0],
        rtol=1e-5,
    )


def test_csv_logger_and_log_norm_false(tmp_path):
    model = mlp()
    x, y = data()
    path = tmp_path / "log.csv"
    model.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[JacobianRegularizer(), keras.callbacks.CSVLogger(path)],
    )
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[1]["jacobian_norm"]) > 0
    history = model.fit(
        x, y, verbose=0, callbacks=[JacobianRegularizer(log_norm=False)]
    )
    assert "jacobian_norm" not in history.history


def test_progress_bar_shows_jacobian_norm(capsys):
    model = mlp()
    x, y = data()
    model.fit(x, y, epochs=1, verbose=1, callbacks=[JacobianRegularizer()])
    assert "jacobian_norm:" in capsys.readouterr().out


def test_config_round_trip():
    callback = JacobianRegularizer(
        0.3, method="projection", num_projections=2, wrt="dense"
    )
    config = callback.get_config()
    assert config == {
        "weight": 0.3,
        "method": "projection",
        "num_projections": 2,
        "wrt": "dense",
        "per_example": True,
        "log_norm": True,
        "seed": None,
    }
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(callback)
    )
    assert isinstance(restored, JacobianRegularizer)
    assert restored.get_config() == config
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    restored = JacobianRegularizer.from_config(
        JacobianRegularizer(schedule).get_config()
    )
    assert restored.weight.get_config() == schedule.get_config()


# ---------------------------------------------------------------------------
# Models, compilation, precision and distribution.


class SubclassedMLP(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))


def test_subclassed_model():
    model = SubclassedMLP()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x, y = data(num_outputs=3)
    model(x)
    got = logged_norm(model, x, y)
    np.testing.assert_allclose(got, loop_norm(model, x), rtol=1e-5)
    assert_clean(model)


@pytest.mark.parametrize(
    "method", ["exact", pytest.param("projection", marks=pytest.mark.slow)]
)
def test_jit_compile_matches_graph(method):
    x, y = data()
    norms = []
    for jit in (False, True):
        keras.utils.set_random_seed(3)
        model = mlp(jit_compile=jit)
        # 3 projections: a while_loop of products under XLA, pfor without.
        n = 3 if method == "projection" else 1
        norms.append(logged_norm(model, x, y, method=method, num_projections=n))
        assert_clean(model)
    # Exact: same value; projection: the same estimator, other draws.
    rtol = 1e-5 if method == "exact" else 0.5
    np.testing.assert_allclose(norms[1], norms[0], rtol=rtol)
    if method == "exact":
        keras.utils.set_random_seed(3)
        expected = loop_norm(mlp(), x)
        np.testing.assert_allclose(norms[1], expected, rtol=1e-5)


def test_exact_full_jacobian_under_jit_is_refused():
    model = mlp(jit_compile=True)
    x, y = data(4)
    with pytest.raises(ValueError, match="per_example=False"):
        model.fit(
            x,
            y,
            verbose=0,
            callbacks=[JacobianRegularizer(method="exact", per_example=False)],
        )
    assert_clean(model)


def test_jit_compile_many_outputs_and_penalty_gradient():
    """XLA path (a while_loop of vector-Jacobian products) vs pfor: the
    same norm and the same weight update."""
    x, y = data(num_outputs=40)
    models, norms = [], []
    for jit in (False, True):
        keras.utils.set_random_seed(4)
        model = mlp(
            num_outputs=40,
            jit_compile=jit,
            optimizer=keras.optimizers.SGD(0.1),
            loss=lambda t, p: 0.0 * keras.ops.mean(p),
        )
        norms.append(logged_norm(model, x, y))
        models.append(model)
    np.testing.assert_allclose(norms[1], norms[0], rtol=1e-5)
    keras.utils.set_random_seed(4)
    initial = mlp(num_outputs=40).get_weights()
    for a, b, w in zip(
        models[0].get_weights(), models[1].get_weights(), initial
    ):
        if a.ndim == 2:  # The penalty moved the kernels.
            assert np.abs(a - w).max() > 1e-4
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    x, y = data()
    keras.utils.set_random_seed(5)
    expected = loop_norm(mlp(), x)
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(5)
    model = mlp()
    got = logged_norm(model, x, y)
    rtol = 2e-2 if policy == "mixed_bfloat16" else 5e-3
    np.testing.assert_allclose(got, expected, rtol=rtol)
    model.optimizer = None
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(
        x, y, epochs=2, verbose=0, callbacks=[JacobianRegularizer(0.1)]
    )
    assert all(np.isfinite(history.history["loss"]))
    assert_clean(model)


def test_mirrored_strategy():
    x, y = data()
    keras.utils.set_random_seed(9)
    reference = mlp()
    expected = loop_norm(reference, x)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = mlp()
        model.set_weights(reference.get_weights())
    plain_loss = model.evaluate(x, y, verbose=0, batch_size=len(x))
    history = model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        callbacks=[JacobianRegularizer(0.5, method="exact")],
    )
    norm = history.history["jacobian_norm"][0]
    np.testing.assert_allclose(norm, expected, rtol=1e-5)
    np.testing.assert_allclose(
        history.history["loss"][0], plain_loss + 0.5 * norm, rtol=1e-5
    )
    assert_clean(model)


@pytest.mark.slow
def test_mirrored_strategy_gradient_matches_single_device():
    x, y = data()
    keras.utils.set_random_seed(9)
    single = mlp(optimizer=keras.optimizers.SGD(0.1))
    weights = single.get_weights()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = mlp(optimizer=keras.optimizers.SGD(0.1))
        mirrored.set_weights(weights)
    for model in (single, mirrored):
        model.fit(
            x,
            y,
            batch_size=len(x),
            epochs=1,
            verbose=0,
            shuffle=False,
            callbacks=[JacobianRegularizer(0.5, method="exact")],
        )
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_exact_with_many_outputs_warns():
    model = mlp(num_outputs=101)
    x, y = data(4, num_outputs=101)
    with pytest.warns(UserWarning, match="method='projection'"):
        model.fit(
            x, y, verbose=0, callbacks=[JacobianRegularizer(method="exact")]
        )


def test_steps_per_execution():
    model = mlp(steps_per_execution=2)
    x, y = data()
    expected = loop_norm(model, x)
    history = model.fit(
        np.tile(x, (4, 1)),
        np.tile(y, (4, 1)),
        batch_size=len(x),
        epochs=1,
        verbose=0,
        callbacks=[JacobianRegularizer(1.0, method="exact")],
    )
    np.testing.assert_allclose(
        history.history["jacobian_norm"][0], expected, rtol=1e-5
    )
    assert_clean(model)


def test_run_eagerly():
    model = mlp(run_eagerly=True)
    x, y = data()
    got = logged_norm(model, x, y)
    np.testing.assert_allclose(got, loop_norm(model, x), rtol=1e-5)
    assert_clean(model)


def test_wrt_text_model_under_mirrored_strategy():
    x, y = ragged_data(32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = ragged_text_model()
        model.compile(
            optimizer=Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    history = model.fit(
        dataset,
        epochs=2,
        verbose=0,
        callbacks=[JacobianRegularizer(0.1, wrt="bag")],
    )
    assert all(np.isfinite(history.history["jacobian_norm"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert_clean(model, model.get_layer("bag"))


def test_model_checkpoint_during_fit(tmp_path):
    model = mlp(optimizer="adam")
    x, y = data()
    path = str(tmp_path / "checkpoint.keras")
    model.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[
            JacobianRegularizer(0.1),
            keras.callbacks.ModelCheckpoint(path),
        ],
    )
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    for name in PATCHED:
        assert name not in loaded.__dict__


def test_docstring_example_runs():
    import doctest

    import keras_research
    from keras_research.callbacks import jacobian_regularizer

    globs = {"keras": keras, "keras_research": keras_research}
    tests = doctest.DocTestFinder().find(
        jacobian_regularizer.JacobianRegularizer, globs=globs
    )
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    assert sum(len(t.examples) for t in tests) >= 5
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


def test_string_input_without_wrt_says_to_pass_wrt():
    words = keras.Input((3,), dtype="string")
    ids = keras.layers.StringLookup(vocabulary=["a", "b", "c"])(words)
    h = keras.layers.Embedding(5, 4, name="embedding")(ids)
    model = keras.Model(words, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    model.compile(optimizer="sgd", loss="mse")
    x = tf.constant([["a", "b", "c"], ["c", "a", "x"]])
    dataset = tf.data.Dataset.from_tensor_slices((x, tf.zeros((2, 2))))
    dataset = dataset.batch(2)
    with pytest.raises(ValueError, match="string.*pass `wrt=<layer name>`"):
        model.fit(dataset, verbose=0, callbacks=[JacobianRegularizer()])
    history = model.fit(
        dataset, verbose=0, callbacks=[JacobianRegularizer(wrt="embedding")]
    )
    assert np.isfinite(history.history["jacobian_norm"][0])


def test_tensorboard_gets_jacobian_norm(tmp_path):
    from tensorflow.core.util import event_pb2

    model = mlp()
    x, y = data()
    model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[
            JacobianRegularizer(),
            keras.callbacks.TensorBoard(str(tmp_path)),
        ],
    )
    tags = set()
    for path in tmp_path.rglob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    assert "epoch_jacobian_norm" in tags, tags
