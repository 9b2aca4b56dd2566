"""keras-io `mnist_convnet`, small (random 28x28 images), with the swaps."""

import keras
import numpy as np
from keras import layers

import keras_research
from keras_research.callbacks import JacobianRegularizer
from tests.integration._helpers import compile_and_fit, factorized

NUM_CLASSES = 10
INPUT_SHAPE = (28, 28, 1)


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.random((n, *INPUT_SHAPE)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, NUM_CLASSES, n))
    return x, y


def convnet(activation="relu"):
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation=activation),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(NUM_CLASSES, activation="softmax", name="head"),
        ]
    )


def test_convnet_with_adam_activation_jacobian_and_factorize(
    save_and_reload,
):
    x, y = _data()
    model = convnet(activation=keras_research.activations.mish)
    history = compile_and_fit(
        model,
        x,
        y,
        "categorical_crossentropy",
        callbacks=[JacobianRegularizer(0.01, method="projection")],
    )
    assert np.all(np.isfinite(history.history["jacobian_norm"]))
    save_and_reload(model, x[:8], "convnet")

    compressed, report = keras_research.factorize(model, energy=0.9)
    assert factorized(compressed), str(report)
    save_and_reload(compressed, x[:8], "convnet_factorized")


def test_convnet_under_factorized_scope(save_and_reload):
    x, y = _data()
    with keras_research.factorized_scope(rank=0.25):
        model = convnet()
    assert "conv2d_1/kernel" in factorized(model), factorized(model)
    compile_and_fit(model, x, y, "categorical_crossentropy")
    save_and_reload(model, x[:8], "convnet_scope")


def test_factorized_scope_keeps_the_thin_head_at_full_rank():
    # The 1600 x 10 head would become rank 2: a low-rank version of a
    # weight whose small side is 10 saves little and loses much.
    with keras_research.factorized_scope(rank=0.25):
        model = convnet()
    assert "head/kernel" not in factorized(model), factorized(model)


def test_default_jacobian_regularizer_is_not_the_exact_jacobian():
    # With 10 outputs the exact Jacobian costs ~18x a plain step; the
    # default is the reference's one random projection (or a per-model
    # choice), which costs a few backward passes.
    assert JacobianRegularizer(0.01).method != "exact"
