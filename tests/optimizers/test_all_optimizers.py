"""Shared checks over every optimizer keras_research ships."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_research
from keras_research.optimizers import Adam, Adan, CustomOptimizer, PowerMomentum
from tests.optimizers._momentum_sgd import MomentumSGD

OPTIMIZERS = {
    "Adam": lambda: Adam(learning_rate=0.05),
    "Adam(fused_kernel=True)": lambda: Adam(
        learning_rate=0.05, fused_kernel=True
    ),
    "Adan": lambda: Adan(learning_rate=0.05),
    "PowerMomentum": lambda: PowerMomentum(learning_rate=0.2, power=1.5),
}


def test_every_shipped_optimizer_is_covered():
    shipped = {
        name
        for name in keras_research.optimizers.__all__
        if name != "CustomOptimizer"
    }
    assert shipped == {type(make()).__name__ for make in OPTIMIZERS.values()}
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


# Every shipped optimizer plus a user-written rule on the template.
WITH_USER_RULE = {**OPTIMIZERS, "MomentumSGD": lambda: MomentumSGD(0.05)}
LR, WD = 0.05, 0.5


def _decayed_only(init, steps):
    """Keras's decoupled decay alone, in float32, `steps` times."""
    w = init.copy()
    for _ in range(steps):
        w = w - w * np.float32(WD) * np.float32(LR)
    return w


def _with_weight_decay(name):
    optimizer = WITH_USER_RULE[name]()
    config = optimizer.get_config()
    config.update(learning_rate=LR, weight_decay=WD)
    return type(optimizer).from_config(config)


@pytest.mark.parametrize("name", sorted(WITH_USER_RULE))
@pytest.mark.parametrize(
    "mode", ["eager", "tf.function", "xla_step", "uncompiled_rule"]
)
def test_weight_decay_is_applied_exactly_once_per_step(name, mode):
    # With zero gradients every rule here leaves the variables alone, so
    # after 3 steps they must have decayed exactly 3 times: a decay that is
    # skipped (0 times) or applied by both Keras and the rule (6 times)
    # fails. A 128 x 128 kernel takes the compiled path, its bias runs op
    # by op.
    rng = np.random.default_rng(0)
    inits = [rng.normal(size=s).astype("float32") for s in [(128, 128), (128,)]]
    variables = [keras.Variable(w) for w in inits]
    optimizer = _with_weight_decay(name)
    if mode == "uncompiled_rule":
        optimizer.jit_compile = False
    grads = [tf.zeros(w.shape) for w in inits]

    def apply(grads):  # Variables captured, not passed.
        optimizer.apply(grads, variables)

    step = {
        "eager": apply,
        "tf.function": tf.function(apply),
        "xla_step": tf.function(apply, jit_compile=True),
        "uncompiled_rule": tf.function(apply),
    }[mode]
    for _ in range(3):
        step(grads)
    for variable, init in zip(variables, inits):
        np.testing.assert_allclose(
            variable.numpy(), _decayed_only(init, 3), rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize("name", sorted(WITH_USER_RULE))
@pytest.mark.parametrize("model_jit_compile", [False, True])
def test_weight_decay_is_applied_exactly_once_per_fit_step(
    name, model_jit_compile
):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((128,)), keras.layers.Dense(128), keras.layers.Dense(1)]
    )
    inits = [w.copy() for w in model.get_weights()]
    model.compile(
        optimizer=_with_weight_decay(name),
        loss=lambda y, p: 0.0 * keras.ops.sum(p),  # Zero gradients.
        jit_compile=model_jit_compile,
    )
    x = np.ones((8, 128), "float32")
    model.fit(x, np.ones((8, 1)), batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 2
    for weight, init in zip(model.get_weights(), inits):
        np.testing.assert_allclose(
            weight, _decayed_only(init, 2), rtol=1e-6, atol=1e-7
        )
