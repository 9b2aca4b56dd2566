"""Small shared helpers of the integration tests."""

import keras
import numpy as np

import keras_research


def factorized(model):
    """The paths of the model's weights stored as two factors.

    Paths are relative to the model (a Sequential model's name, which
    Keras puts in front of its weights' paths, is removed).
    """
    suffix, prefix = "_left", f"{model.name}/"
    paths = [
        v.path[: -len(suffix)] for v in model.weights if v.path.endswith(suffix)
    ]
    return sorted(
        p[len(prefix) :] if p.startswith(prefix) else p for p in paths
    )


def compile_and_fit(model, x, y, loss, callbacks=(), steps=2, batch_size=8):
    """Trains a few steps with keras_research's Adam; returns the History."""
    model.compile(optimizer=keras_research.optimizers.Adam(1e-3), loss=loss)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=1,
        steps_per_epoch=steps,
        callbacks=list(callbacks),
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"])), history.history
    after = [np.array(w) for w in model.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    return history


def set_seed():
    keras.utils.set_random_seed(0)
