"""Tests of `keras_research.optimizers.PowerMomentum`."""

import keras
import numpy as np
import pytest

from keras_research.optimizers import PowerMomentum
from keras_research.testing import run_optimizer_test


def _numpy_power_momentum(lr, power, momentum):
    def step(param, grad, state, t):
        average = state.get("a", np.zeros_like(param))
        powered = np.sign(grad) * np.abs(grad) ** power
        average = momentum * average + (1 - momentum) * powered
        state["a"] = average
        return param - lr * average

    return step


@pytest.mark.parametrize(
    "power, jit_compile",
    [(2.0, True), (3.0, True), (1.5, True), (1.5, False)],
)
def test_conformance(power, jit_compile):
    run_optimizer_test(
        lambda: PowerMomentum(
            learning_rate=0.1,
            power=power,
            momentum=0.8,
            jit_compile=jit_compile,
        ),
        _numpy_power_momentum(0.1, power, 0.8),
        num_steps=5,
        check_saving=power == 1.5 and jit_compile,
    )


def test_one_step_by_hand():
    variable = keras.Variable([1.0, 1.0, 1.0])
    optimizer = PowerMomentum(learning_rate=0.5, power=3.0, momentum=0.5)
    optimizer.apply([keras.ops.convert_to_tensor([2.0, -1.0, 0.0])], [variable])
    # a = 0.5 * g**3 = [4, -0.5, 0]; variable -= 0.5 * a.
    np.testing.assert_allclose(variable.numpy(), [-1.0, 1.25, 1.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(power=0.0), "power"),
        (dict(power=-2.0), "power"),
        (dict(power="2"), "power"),
        (dict(power=float("inf")), "power"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.5), "momentum"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(learning_rate=None), "learning_rate"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PowerMomentum(**kwargs)


def test_config_round_trip():
    optimizer = PowerMomentum(
        learning_rate=0.2, power=1.5, momentum=0.7, clipvalue=1.0
    )
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert isinstance(restored, PowerMomentum)
    assert restored.get_config() == optimizer.get_config()
