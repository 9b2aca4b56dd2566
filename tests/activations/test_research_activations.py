"""Tests for the ready fused research activations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_research
from keras_research import activations as A
from keras_research.activations import (
    fused_activation,
    research_activations,
)


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def gelu_tanh_np(x):
    c = np.sqrt(2.0 / np.pi)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))


def gelu_tanh_grad_np(x):
    c = np.sqrt(2.0 / np.pi)
    t = np.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (
        1 + 3 * 0.044715 * x * x
    )


def mish_np(x):
    return x * np.tanh(_softplus(x))


def mish_grad_np(x):
    t = np.tanh(_softplus(x))
    return t + x * (1 - t * t) * _sigmoid(x)


def silu_grad_np(x):
    s = _sigmoid(x)
    return s + x * s * (1 - s)


def odd_np(x):
    return (
        x * _sigmoid(x) + 0.1 * np.log1p(np.exp(-np.abs(x))) - np.tanh(x) ** 2
    )


def odd_grad_np(x):
    e = np.exp(-np.abs(x))
    t = np.tanh(x)
    return (
        silu_grad_np(x) - 0.1 * np.sign(x) * e / (1 + e) - 2 * t * (1 - t * t)
    )


CASES = {
    "gelu_tanh": (A.gelu_tanh, gelu_tanh_np, gelu_tanh_grad_np),
    "mish": (A.mish, mish_np, mish_grad_np),
    "silu": (A.silu, lambda x: x * _sigmoid(x), silu_grad_np),
    "snake": (
        A.snake,
        lambda x: x + np.sin(x) ** 2,
        lambda x: 1 + np.sin(2 * x),
    ),
    "silu_softplus_tanh_squared": (
        A.silu_softplus_tanh_squared,
        odd_np,
        odd_grad_np,
    ),
}

# One shape for all tests, so that each activation compiles few programs.
X64 = np.concatenate(
    [
        np.linspace(-12.0, 12.0, 97),
        [-1e4, -60.0, -0.01, 0.01, 60.0, 1e4],
        np.random.default_rng(0).normal(size=25) * 2,
    ]
)
X64 = X64[np.abs(X64) > 1e-9]  # |x| and the kink tests avoid exactly 0


def _value_grad_second(fn, x):
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = fn(x)
        g = inner.gradient(y, x)
    return y, g, outer.gradient(g, x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_is_registered_fused_activation(name):
    activation = CASES[name][0]
    assert isinstance(activation, A.FusedActivation)
    assert activation.__name__ == name
    assert keras.saving.get_registered_name(activation) == (
        f"keras_research>{name}"
    )
    assert keras.saving.get_registered_object(f"keras_research>{name}") is (
        activation
    )
    assert activation.__doc__ and "Example" in activation.__doc__


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype,tol", [("float32", 3e-5), ("float64", 1e-11)])
def test_values_and_gradients_match_numpy(name, dtype, tol):
    activation, reference, reference_grad = CASES[name]
    x = tf.constant(X64, dtype)
    y, g, h = _value_grad_second(activation, x)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, reference(X64), rtol=tol, atol=tol)
    np.testing.assert_allclose(g, reference_grad(X64), rtol=tol, atol=tol)
    # Fused equals the op-by-op function it wraps, derivatives included.
    y0, g0, h0 = _value_grad_second(activation.function, x)
    np.testing.assert_allclose(y, y0, rtol=tol, atol=tol)
    np.testing.assert_allclose(g, g0, rtol=tol, atol=tol)
    np.testing.assert_allclose(h, h0, rtol=tol, atol=tol)


def _slow_unless(keep, names):
    return [
        n if n in keep else pytest.param(n, marks=pytest.mark.slow)
        for n in names
    ]


# gelu_tanh's clipping is the case to watch in the fast run; the others are
# checked in the slow run (the fused odd activation also in
# test_fused_activation.py).
@pytest.mark.parametrize("name", _slow_unless({"gelu_tanh"}, sorted(CASES)))
def test_second_derivative_matches_finite_differences(name):
    activation, _, reference_grad = CASES[name]
    x = X64[np.abs(X64) < 30]
    _, _, h = _value_grad_second(activation, tf.constant(x))
    step = 1e-6
    fd = (reference_grad(x + step) - reference_grad(x - step)) / (2 * step)
    np.testing.assert_allclose(h, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name,keras_fn",
    [
        ("gelu_tanh", lambda x: keras.activations.gelu(x, approximate=True)),
        ("mish", keras.activations.mish),
        ("silu", keras.activations.silu),
    ],
)
def test_matches_keras_builtin(name, keras_fn):
    x = tf.constant(X64[np.abs(X64) < 100], "float32")
    np.testing.assert_allclose(
        CASES[name][0](x), keras_fn(x), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", _slow_unless({"gelu_tanh"}, sorted(CASES)))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_finite_and_close(name, dtype):
    activation, reference, reference_grad = CASES[name]
    x = tf.constant(X64, dtype)
    y, g, h = _value_grad_second(activation, x)
    assert y.dtype == x.dtype and g.dtype == x.dtype and h.dtype == x.dtype
    for value in (y, g, h):
        assert np.all(np.isfinite(tf.cast(value, "float64"))), (name, value)
    xr = tf.cast(x, "float64").numpy()
    # Snake's sin(x) at |x| = 1e4 is not meaningful in half precision
    # (the spacing of representable x there exceeds 2 pi).
    near = np.abs(xr) < 100
    tol = 2e-2 if dtype == "float16" else 8e-2
    np.testing.assert_allclose(
        tf.cast(y, "float64")[near], reference(xr)[near], rtol=tol, atol=tol
    )
    np.testing.assert_allclose(
        tf.cast(g, "float64")[near],
        reference_grad(xr)[near],
        rtol=tol,
        atol=tol,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_nan_propagates_and_inf_matches_tensorflow(name):
    activation = CASES[name][0]
    x = tf.constant([np.nan, np.inf, -np.inf, 0.5], "float32")
    y, g, _ = _value_grad_second(activation, x)
    y0, g0, _ = _value_grad_second(activation.function, x)
    assert np.isnan(y[0]) and np.isnan(g[0])
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y0))
    np.testing.assert_array_equal(np.isnan(g), np.isnan(g0))
    # Non-finite entries equal exactly (NaN == NaN here); finite ones close.
    np.testing.assert_allclose(y, y0, rtol=1e-6, equal_nan=True)


def test_gelu_tanh_nan_gradient_does_not_depend_on_clamp(monkeypatch):
    # XLA before TF 2.21 compiles `tf.clip_by_value` to a `clamp` that maps
    # NaN to a finite value, which made the fused gradient at NaN 0.0. Any
    # clip written with `tf.clip_by_value` behaves so here too, on every TF.
    def old_xla_clip(t, lo, hi, name=None):
        clipped = tf.minimum(tf.maximum(t, lo), hi)
        return tf.where(tf.math.is_nan(t), tf.cast(lo, t.dtype), clipped)

    monkeypatch.setattr(tf, "clip_by_value", old_xla_clip)
    # A fresh instance traces `gelu_tanh`'s function under the patch.
    activation = A.FusedActivation(A.gelu_tanh.function)
    x = tf.constant([np.nan, 0.5, -20.0, 20.0], "float32")
    y, g, h = _value_grad_second(activation, x)
    assert np.isnan(y[0]) and np.isnan(g[0]) and np.isnan(h[0])
    np.testing.assert_allclose(y[1:], gelu_tanh_np(X_FINITE), rtol=1e-6)
    np.testing.assert_allclose(
        g[1:], gelu_tanh_grad_np(X_FINITE), rtol=1e-5, atol=1e-7
    )


X_FINITE = np.array([0.5, -20.0, 20.0])


def test_models_with_every_activation_save_and_load(tmp_path):
    inputs = keras.Input((6,))
    h = inputs
    for name in sorted(CASES):
        h = keras.layers.Dense(6, activation=CASES[name][0], name=name)(h)
    model = keras.Model(inputs, h)
    x = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    path = str(tmp_path / "all.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for name in sorted(CASES):
        assert loaded.get_layer(name).activation is CASES[name][0]
    np.testing.assert_array_equal(loaded(x), model(x))


def test_exported_from_package():
    assert keras_research.activations.gelu_tanh is A.gelu_tanh
    defined = {
        name
        for name, value in vars(research_activations).items()
        if isinstance(value, fused_activation.FusedActivation)
    }
    # Every ready activation is tested here (CASES) and exported, and the
    # package exports nothing else but the decorator and its class.
    assert defined == set(CASES)
    assert set(A.__all__) == defined | {"FusedActivation", "fused"}
    assert A.fused is fused_activation.fused
    assert A.FusedActivation is fused_activation.FusedActivation
    for name in defined:
        assert getattr(A, name) is getattr(research_activations, name)
