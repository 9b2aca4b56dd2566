"""Shared checks over every optimizer keras_research ships."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_research
from keras_research.optimizers import Adam, Adan, CustomOptimizer, PowerMomentum

OPTIMIZERS = {
    "Adam": lambda: Adam(learning_rate=0.05),
    "Adan": lambda: Adan(learning_rate=0.05),
    "PowerMomentum": lambda: PowerMomentum(learning_rate=0.2, power=1.5),
}


def test_every_shipped_optimizer_is_covered():
    shipped = {
        name
        for name in keras_research.optimizers.__all__
        if name != "CustomOptimizer"
    }
    assert shipped == set(OPTIMIZERS)
    for name in shipped:
        cls = getattr(keras_research.optimizers, name)
        assert issubclass(cls, CustomOptimizer)
        assert keras.saving.get_registered_name(cls) == (
            f"keras_research>{name}"
        )


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype("float32")
    w = rng.normal(size=(4, 1)).astype("float32")
    return x, x @ w + 0.5


def _model():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


def _fit_lowers_loss(make_optimizer, strategy=None, **compile_kwargs):
    x, y = _data()
    scope = strategy.scope() if strategy else tf.init_scope()
    with scope:
        model = _model()
        model.compile(optimizer=make_optimizer(), loss="mse", **compile_kwargs)
    history = model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.5 * losses[0], losses
    return model


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_jit_compile", [False, True])
def test_fit_lowers_loss(name, model_jit_compile):
    _fit_lowers_loss(OPTIMIZERS[name], jit_compile=model_jit_compile)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_lowers_loss_mixed_float16(name):
    keras.config.set_dtype_policy("mixed_float16")
    model = _fit_lowers_loss(OPTIMIZERS[name])
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.layers[0].kernel.dtype == "float32"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_lowers_loss_mirrored_strategy(name):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    model = _fit_lowers_loss(OPTIMIZERS[name], strategy=strategy)
    # Both replicas' copies of each weight stayed in sync.
    for weight in model.trainable_weights:
        copies = [v.numpy() for v in weight.value.values]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
