"""How JacobianRegularizer enters a model: what it overrides, arguments,
custom train steps, loss scaling and XLA compilations (issues 14 and 16)."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_research.callbacks import jacobian_regularizer
from keras_research.callbacks.jacobian_regularizer import JacobianRegularizer
from tests.callbacks.test_jacobian_regularizer import (
    assert_clean,
    data,
    loop_norm,
    mlp,
)

CALLBACKS_DIR = pathlib.Path(jacobian_regularizer.__file__).parent


# ---------------------------------------------------------------------------
# Arguments.


def test_every_documented_keyword_is_accepted():
    callback = JacobianRegularizer(
        weight=0.2,
        method="exact",
        num_projections=3,
        wrt="dense",
        per_example=False,
        log_norm=False,
        seed=7,
    )
    assert callback.get_config() == {
        "weight": 0.2,
        "method": "exact",
        "num_projections": 3,
        "wrt": "dense",
        "per_example": False,
        "log_norm": False,
        "seed": 7,
    }


def test_unknown_keyword_raises_value_error():
    # It used to reach `keras.callbacks.Callback.__init__` (TypeError).
    with pytest.raises(ValueError, match="Unrecognized keyword.*'weigth'"):
        JacobianRegularizer(weigth=0.1)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "1"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="`seed` must be None or an integer"):
        JacobianRegularizer(seed=seed)


def test_default_is_one_random_projection():
    callback = JacobianRegularizer()
    assert (callback.method, callback.num_projections) == ("projection", 1)


def test_seeded_projections_are_reproducible_and_vary_per_step():
    x, y = data()

    def norms(seed):
        model = mlp()  # SGD(0): the same Jacobian at every step.
        history = model.fit(
            np.tile(x, (3, 1)),
            np.tile(y, (3, 1)),
            batch_size=len(x),
            epochs=2,
            verbose=0,
            shuffle=False,
            callbacks=[JacobianRegularizer(1.0, seed=seed)],
        )
        return history.history["jacobian_norm"]

    keras.utils.set_random_seed(1)
    first = norms(3)
    keras.utils.set_random_seed(1)
    np.testing.assert_array_equal(norms(3), first)
    keras.utils.set_random_seed(1)
    assert norms(4) != first
    # Epoch means of different steps' draws differ.
    assert first[0] != first[1]


# ---------------------------------------------------------------------------
# What the callback overrides, and nothing else.


class _Inspect(keras.callbacks.Callback):
    """Records the model's and the layer's instance attributes mid-fit."""

    def __init__(self, layer=None):
        super().__init__()
        self.layer = layer

    def on_train_batch_end(self, batch, logs=None):
        self.model_attributes = {
            name
            for name, value in vars(self.model).items()
            if callable(value) and not isinstance(value, keras.layers.Layer)
        }
        if self.layer is not None:
            self.layer_attributes = set(vars(self.layer)) & {"call"}


def test_overrides_only_train_step_and_compute_loss():
    model = mlp()
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    before = {k for k, v in vars(model).items() if callable(v)}
    inspect = _Inspect(model.layers[0])
    model.fit(
        x, y, epochs=1, verbose=0, callbacks=[JacobianRegularizer(), inspect]
    )
    added = inspect.model_attributes - before
    assert added == {"train_step", "compute_loss"}, added
    assert inspect.layer_attributes == set()
    assert_clean(model)


def test_wrt_also_wraps_the_layer_call():
    model = mlp()
    x, y = data()
    layer = model.layers[0]
    inspect = _Inspect(layer)
    model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[JacobianRegularizer(wrt=layer.name), inspect],
    )
    assert inspect.layer_attributes == {"call"}
    assert_clean(model, layer)


def test_no_frame_walking_and_no_global_patch_registry():
    for path in CALLBACKS_DIR.glob("*.py"):
        source = path.read_text()
        for banned in ("currentframe", "_getframe", "f_back", "f_locals"):
            assert banned not in source, (path.name, banned)
        assert "WeakKeyDictionary" not in source, path.name


def test_penalty_is_scaled_by_keras_loss_reduction(monkeypatch):
    """The penalty goes through Keras's own per-replica loss scaling.

    Keras scales every compiled loss by `1 / num_replicas` in
    `keras.src.losses.loss.scale_loss_for_distribution` (a no-op on one
    replica). Replaced here by a factor of 0.5, the compiled loss and the
    penalty are both halved: the penalty is scaled by Keras, not by a copy
    of its rule.
    """
    from keras.src.losses import loss as keras_loss

    model = mlp()
    x, y = data()
    plain_loss = model.evaluate(x, y, verbose=0, batch_size=len(x))
    monkeypatch.setattr(
        keras_loss, "scale_loss_for_distribution", lambda value: value * 0.5
    )
    history = model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        callbacks=[JacobianRegularizer(0.5, method="exact")],
    )
    norm = history.history["jacobian_norm"][0]
    np.testing.assert_allclose(norm, loop_norm(model, x), rtol=1e-5)
    np.testing.assert_allclose(
        history.history["loss"][0], 0.5 * (plain_loss + 0.5 * norm), rtol=1e-5
    )


# ---------------------------------------------------------------------------
# Interrupted fits and patches left behind.


class _RaiseAtBatchBegin(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        raise RuntimeError("interrupted")


def test_error_between_batch_begin_and_step_leaves_nothing_active():
    # The callback's `on_train_batch_begin` allowed a step, then another
    # callback raised before it ran: the next plain fit must not run it.
    model = mlp()
    x, y = data()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x,
            y,
            verbose=0,
            callbacks=[JacobianRegularizer(1.0), _RaiseAtBatchBegin()],
        )
    plain_loss = model.evaluate(x, y, verbose=0, batch_size=len(x))
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], plain_loss, 1e-6)
    assert "jacobian_norm" not in history.history
    assert_clean(model)


def test_a_later_regularizer_replaces_a_stale_patch():
    model = mlp()
    x, y = data()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x,
            y,
            verbose=0,
            callbacks=[JacobianRegularizer(1.0), _RaiseAtBatchBegin()],
        )
    # No "Only one JacobianRegularizer" error: the first one's fit is over.
    got = model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        callbacks=[JacobianRegularizer(1.0, method="exact")],
    ).history["jacobian_norm"][0]
    np.testing.assert_allclose(got, loop_norm(model, x), rtol=1e-5)
    assert_clean(model)


# ---------------------------------------------------------------------------
# Custom train steps.


class CustomStepModel(keras.Model):
    """A custom `train_step` that calls `compute_loss` (supported)."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return {"loss": loss}


class VAELikeModel(CustomStepModel):
    """Computes its loss without `compute_loss`, like keras-io's VAE."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = keras.ops.mean((self(x, training=True) - y) ** 2)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return {"loss": loss}


def test_custom_train_step_calling_compute_loss():
    model = CustomStepModel()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x, y = data(num_outputs=3)
    model(x)
    history = model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        callbacks=[JacobianRegularizer(1.0, method="exact")],
    )
    np.testing.assert_allclose(
        history.history["jacobian_norm"][0], loop_norm(model, x), rtol=1e-5
    )
    assert_clean(model)


def test_custom_train_step_without_compute_loss_is_refused():
    model = VAELikeModel()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y = data(num_outputs=3)
    model(x)
    with pytest.raises(
        ValueError,
        match="adds its penalty in `model.compute_loss`, but the train step "
        "of model .* did not call it",
    ):
        model.fit(x, y, verbose=0, callbacks=[JacobianRegularizer()])
    assert_clean(model)
    model.fit(x, y, verbose=0)  # And it trains without the callback.


# ---------------------------------------------------------------------------
# XLA: the compiled train step is compiled once.


def test_compiled_step_is_compiled_once(tmp_path):
    """A pfor Jacobian in an XLA step makes XLA take the weights as
    constants and recompile at every step (seconds each). Counted from
    XLA's own dump of the modules it compiles, for 8 steps per method."""
    script = pathlib.Path(__file__).with_name("_xla_compile_count.py")
    root = str(pathlib.Path(__file__).parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, env.get("PYTHONPATH")) if p
    )
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "exact", "projection"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts == {"exact": 1, "projection": 1}, counts
