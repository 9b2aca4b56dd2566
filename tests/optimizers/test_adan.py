"""Tests of `keras_research.optimizers.Adan` against the paper's equations."""

import keras
import numpy as np
import pytest

from keras_research.optimizers import Adan
from keras_research.testing import run_optimizer_test


def _numpy_adan(
    lr=0.01,
    beta_1=0.98,
    beta_2=0.92,
    beta_3=0.99,
    epsilon=1e-8,
    weight_decay=0.0,
):
    """Adan, Algorithm 1 of Xie et al. 2022 as in the authors' code.

    In the paper's notation (their beta_i = 1 - ours):
    m_k = (1 - b1) m_{k-1} + b1 g_k
    v_k = (1 - b2) v_{k-1} + b2 (g_k - g_{k-1})
    n_k = (1 - b3) n_{k-1} + b3 [g_k + (1 - b2)(g_k - g_{k-1})]^2
    theta_{k+1} = theta_k - eta / (sqrt(n_k) + eps) * (m_k + (1 - b2) v_k)
    with the bias corrections of the reference implementation
    (sail-sg/Adan, `no_prox=True`: decoupled decay before the step).
    """

    def step(param, grad, state, t):
        zeros = np.zeros_like(param)
        m, v, n = (state.get(k, zeros) for k in ("m", "v", "n"))
        diff = grad - state["g"] if t > 1 else zeros
        m = beta_1 * m + (1 - beta_1) * grad
        v = beta_2 * v + (1 - beta_2) * diff
        n = beta_3 * n + (1 - beta_3) * (grad + beta_2 * diff) ** 2
        state.update(m=m, v=v, n=n, g=grad)
        m_hat = m / (1 - beta_1**t)
        v_hat = v / (1 - beta_2**t)
        n_hat = n / (1 - beta_3**t)
        param = param * (1 - lr * weight_decay)
        return param - lr * (m_hat + beta_2 * v_hat) / (
            np.sqrt(n_hat) + epsilon
        )

    return step


@pytest.mark.parametrize("jit_compile", [True, False])
def test_conformance(jit_compile):
    run_optimizer_test(
        lambda: Adan(learning_rate=0.01, jit_compile=jit_compile),
        _numpy_adan(lr=0.01),
        num_steps=6,
        check_saving=jit_compile,
    )


def test_conformance_with_weight_decay_and_other_betas():
    run_optimizer_test(
        lambda: Adan(
            learning_rate=0.05,
            beta_1=0.9,
            beta_2=0.5,
            beta_3=0.9,
            epsilon=1e-3,
            weight_decay=0.1,
        ),
        _numpy_adan(
            lr=0.05,
            beta_1=0.9,
            beta_2=0.5,
            beta_3=0.9,
            epsilon=1e-3,
            weight_decay=0.1,
        ),
        num_steps=5,
        check_saving=False,
    )


def test_first_step_is_sign_like():
    # At t=1: d = 0, m_hat = g, n_hat = g**2, so the step is
    # lr * g / (|g| + eps): the sign of g scaled by lr.
    variable = keras.Variable([1.0, 1.0])
    Adan(learning_rate=0.1, epsilon=1e-12).apply(
        [keras.ops.convert_to_tensor([3.0, -0.5])], [variable]
    )
    np.testing.assert_allclose(variable.numpy(), [0.9, 1.1], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta_1=1.0), "beta_1"),
        (dict(beta_2=-0.1), "beta_2"),
        (dict(beta_3=2.0), "beta_3"),
        (dict(beta_3=None), "beta_3"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(learning_rate=-0.01), "learning_rate"),
        (dict(learning_rate="0.01"), "learning_rate"),
        (dict(weight_decay=-1.0), "weight_decay"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adan(**kwargs)


def test_config_round_trip():
    optimizer = Adan(learning_rate=0.002, beta_3=0.95, weight_decay=0.02)
    config = optimizer.get_config()
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert isinstance(restored, Adan)
    assert restored.get_config() == config
