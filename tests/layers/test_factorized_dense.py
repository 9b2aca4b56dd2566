"""Tests of keras_research.layers.FactorizedDense."""

import keras
import numpy as np
import pytest

from keras_research.layers import FactorizedDense
from keras_research.testing import run_layer_test


def _x(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_layer_conformance_2d():
    run_layer_test(
        FactorizedDense,
        {"units": 8, "rank": 3, "activation": "relu"},
        _x(4, 6),
        expected_output_shape=(4, 8),
        expected_output_dtype="float32",
        expected_num_trainable_weights=3,
        expected_num_non_trainable_weights=0,
    )


def test_layer_conformance_3d_without_bias():
    run_layer_test(
        FactorizedDense,
        {"units": 5, "rank": 0.5, "use_bias": False},
        _x(4, 3, 6),
        expected_output_shape=(4, 3, 5),
        expected_num_trainable_weights=2,
        run_jit_compile_check=False,
        run_distribution_check=False,
    )


def test_exact_values_against_numpy():
    layer = FactorizedDense(7, rank=2, activation="tanh")
    x = _x(5, 4, 6)
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    left, right, bias = (
        rng.normal(size=(6, 2)),
        rng.normal(size=(2, 7)),
        rng.normal(size=(7,)),
    )
    layer.set_weights([left, right, bias])
    expected = np.tanh(x @ left @ right + bias)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        layer.kernel, left @ right, rtol=1e-6, atol=1e-6
    )
    assert [tuple(w.shape) for w in layer.weights] == [(6, 2), (2, 7), (7,)]
    assert layer.count_params() == 6 * 2 + 2 * 7 + 7


def test_kernel_is_read_only_and_needs_build():
    layer = FactorizedDense(3, rank=1)
    with pytest.raises(AttributeError, match="build"):
        layer.kernel
    layer.build((None, 4))
    with pytest.raises(AttributeError):
        layer.kernel = np.zeros((4, 3))


def test_fraction_rank_resolves_against_full_rank():
    layer = FactorizedDense(10, rank=0.25)
    layer.build((None, 40))
    assert tuple(layer.left.shape) == (40, 3)  # 0.25 * 10 rounds half up
    layer = FactorizedDense(10, rank=0.01)
    layer.build((None, 40))
    assert tuple(layer.left.shape) == (40, 1)


def test_default_initializers_keep_activation_scale():
    # (x @ left) @ right with lecun-uniform factors preserves variance.
    layer = FactorizedDense(512, rank=64)
    x = _x(256, 512)
    y = keras.ops.convert_to_numpy(layer(x))
    assert 0.6 < y.std() / x.std() < 1.4


def test_from_dense_full_rank_reproduces_outputs():
    dense = keras.layers.Dense(6, activation="relu")
    x = _x(8, 5)
    dense.build(x.shape)
    dense.bias.assign(_x(6, seed=3))
    expected = dense(x)
    layer = FactorizedDense.from_dense(dense, rank=5)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.activation is dense.activation
    assert layer.built


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_from_dense_matches_truncated_svd(rank):
    dense = keras.layers.Dense(7)
    dense.build((None, 9))
    kernel = keras.ops.convert_to_numpy(dense.kernel).astype("float64")
    layer = FactorizedDense.from_dense(dense, rank=rank)
    u, s, vt = np.linalg.svd(kernel, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]
    np.testing.assert_allclose(layer.kernel, best, atol=1e-5)
    error = np.linalg.norm(kernel - layer.kernel) / np.linalg.norm(kernel)
    expected_error = np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2))
    np.testing.assert_allclose(error, expected_error, rtol=1e-4)
    # The singular values are split evenly between the factors.
    left = keras.ops.convert_to_numpy(layer.left)
    right = keras.ops.convert_to_numpy(layer.right)
    np.testing.assert_allclose(left.T @ left, np.diag(s[:rank]), atol=1e-5)
    np.testing.assert_allclose(right @ right.T, np.diag(s[:rank]), atol=1e-5)


def test_from_dense_warns_about_dropped_kernel_settings():
    dense = keras.layers.Dense(
        4, kernel_constraint="non_neg", kernel_regularizer="l2"
    )
    dense.build((None, 3))
    with pytest.warns(UserWarning, match="kernel constraint"):
        with pytest.warns(UserWarning, match="kernel regularizer"):
            FactorizedDense.from_dense(dense, rank=2)


def test_from_dense_saves_and_loads(tmp_path):
    dense = keras.layers.Dense(4)
    inputs = keras.Input((6,))
    dense(inputs)
    layer = FactorizedDense.from_dense(dense, rank=2, name="small")
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = _x(3, 6)
    np.testing.assert_array_equal(loaded(x), model(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"units": 0, "rank": 1}, "units"),
        ({"units": -3, "rank": 1}, "units"),
        ({"units": 2.5, "rank": 1}, "units"),
        ({"units": True, "rank": 1}, "units"),
        ({"units": 4, "rank": 0}, "rank"),
        ({"units": 4, "rank": -2}, "rank"),
        ({"units": 4, "rank": 1.5}, "rank"),
        ({"units": 4, "rank": 0.0}, "rank"),
        ({"units": 4, "rank": "3"}, "rank"),
        ({"units": 4, "rank": None}, "rank"),
        ({"units": 4, "rank": True}, "rank"),
        ({"units": 4, "rank": 2, "left_initializer": "nope"},
         "left_initializer"),
        ({"units": 4, "rank": 2, "right_initializer": "nope"},
         "right_initializer"),
        ({"units": 4, "rank": 2, "bias_regularizer": "nope"},
         "bias_regularizer"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FactorizedDense(**kwargs)


def test_rank_larger_than_full_rank_fails_at_build():
    layer = FactorizedDense(4, rank=5)
    with pytest.raises(ValueError, match=r"rank=5.*|min\(3, 4\) = 3"):
        layer.build((None, 3))


def test_from_dense_bad_inputs():
    dense = keras.layers.Dense(4)
    with pytest.raises(ValueError, match="must be built"):
        FactorizedDense.from_dense(dense, rank=2)
    dense.build((None, 3))
    with pytest.raises(ValueError, match="rank=4"):
        FactorizedDense.from_dense(dense, rank=4)
    with pytest.raises(ValueError, match="rank=0"):
        FactorizedDense.from_dense(dense, rank=0)
    conv = keras.layers.Conv1D(2, 3)
    conv.build((None, 5, 2))
    with pytest.raises(ValueError, match="keras.layers.Dense"):
        FactorizedDense.from_dense(conv, rank=1)
