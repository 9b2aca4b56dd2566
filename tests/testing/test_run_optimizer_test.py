"""The optimizer checks pass on Keras's SGD/Adam and fail on broken ones."""

import keras
import numpy as np
import pytest

from keras_research.testing import run_optimizer_test


def sgd_reference(param, grad, state, step):
    return param - 0.1 * grad


def adam_reference(param, grad, state, step, lr=0.01, b1=0.9, b2=0.999,
                   eps=1e-7):
    m = state.get("m", np.zeros_like(param))
    v = state.get("v", np.zeros_like(param))
    m = m + (grad - m) * (1 - b1)
    v = v + (grad * grad - v) * (1 - b2)
    state["m"], state["v"] = m, v
    alpha = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
    return param - alpha * m / (np.sqrt(v) + eps)


def test_sgd_passes():
    run_optimizer_test(lambda: keras.optimizers.SGD(learning_rate=0.1),
                       sgd_reference)


def test_adam_passes():
    # Keras's Adam keeps float32 intermediates (learning rate, step count),
    # so in float64 it meets an exact reference to ~1e-7, not to 1e-12.
    run_optimizer_test(lambda: keras.optimizers.Adam(learning_rate=0.01),
                       adam_reference, num_steps=6, rtol=1e-5, atol=1e-6)


def test_wrong_numerics_fail():
    with pytest.raises(AssertionError, match="NumPy reference"):
        run_optimizer_test(lambda: keras.optimizers.SGD(learning_rate=0.11),
                           sgd_reference, check_saving=False)


@keras.saving.register_keras_serializable(package="keras_research_tests")
class ForgetfulAdam(keras.optimizers.Adam):
    """Broken: reloading restores no slots (they restart at zero)."""

    def load_own_variables(self, store):
        pass


class UnregisteredAdam(keras.optimizers.Adam):
    """Broken: not registered, so `.keras` files cannot name it."""


def test_slots_not_restored_fail():
    with pytest.raises(AssertionError, match="optimizer variable"):
        run_optimizer_test(lambda: ForgetfulAdam(learning_rate=0.01),
                           adam_reference, rtol=1e-5, atol=1e-6)


def test_unregistered_optimizer_fails():
    with pytest.raises(AssertionError, match="registered"):
        run_optimizer_test(lambda: UnregisteredAdam(learning_rate=0.01),
                           adam_reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer_fn": 3, "reference_step": sgd_reference},
         "optimizer_fn"),
        ({"optimizer_fn": lambda: 3, "reference_step": sgd_reference},
         "keras.optimizers.Optimizer"),
        ({"optimizer_fn": keras.optimizers.SGD, "reference_step": None},
         "reference_step"),
        ({"optimizer_fn": keras.optimizers.SGD,
          "reference_step": sgd_reference, "num_steps": 0}, "num_steps"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_optimizer_test(**kwargs)
