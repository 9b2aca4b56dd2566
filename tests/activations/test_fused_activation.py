"""Tests for `keras_research.activations.fused` / `FusedActivation`."""

import copy
import pickle
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_research
from keras_research.activations import FusedActivation, fused
from keras_research.testing._utils import mirrored_strategy


def odd_tf(x):
    """The talk's activation written op by op (the unfused reference)."""
    return (
        x * tf.sigmoid(x)
        + 0.1 * tf.math.log1p(tf.exp(-tf.abs(x)))
        - tf.tanh(x) ** 2
    )


odd = fused(odd_tf)


def _sigmoid_np(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def odd_np(x):
    sig = _sigmoid_np(x)
    return x * sig + 0.1 * np.log1p(np.exp(-np.abs(x))) - np.tanh(x) ** 2


def odd_grad_np(x):
    sig = _sigmoid_np(x)
    t = np.tanh(x)
    e = np.exp(-np.abs(x))
    return (
        sig
        + x * sig * (1.0 - sig)
        - 0.1 * np.sign(x) * e / (1.0 + e)
        - 2.0 * t * (1.0 - t * t)
    )


def _wide_inputs(dtype):
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(size=200) * 3.0,
            np.linspace(-30.0, 30.0, 61),
            [-1e4, -80.0, -1e-3, 0.0, 1e-3, 80.0, 1e4],
        ]
    )
    return x.astype(dtype)


def _grad(fn, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y, tape.gradient(y, x)


def _second(fn, x):
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = fn(x)
        g = inner.gradient(y, x)
    return g, outer.gradient(g, x)


# --- construction -----------------------------------------------------------


def test_fused_returns_one_instance_per_function():
    assert isinstance(odd, FusedActivation)
    assert fused(odd_tf) is odd
    assert fused(odd) is odd
    assert odd.function is odd_tf
    assert odd.__name__ == "odd_tf"
    assert "odd_tf" in repr(odd)


@pytest.mark.parametrize("bad", [3, "gelu", None, [tf.tanh]])
def test_non_callable_is_refused(bad):
    with pytest.raises(ValueError, match=r"`function` must be a callable"):
        fused(bad)


# --- values and gradients ---------------------------------------------------


@pytest.mark.parametrize(
    "dtype,rtol,atol",
    [("float32", 2e-5, 2e-5), ("float64", 1e-12, 1e-12)],
)
def test_forward_and_gradient_match_unfused_and_numpy(dtype, rtol, atol):
    x = tf.constant(_wide_inputs(dtype))
    y, g = _grad(odd, x)
    y0, g0 = _grad(odd_tf, x)
    assert y.dtype == x.dtype and g.dtype == x.dtype
    np.testing.assert_allclose(y, y0, rtol=rtol, atol=atol)
    np.testing.assert_allclose(g, g0, rtol=rtol, atol=atol)
    x64 = _wide_inputs("float64")
    np.testing.assert_allclose(y, odd_np(x64), rtol=rtol, atol=atol)
    np.testing.assert_allclose(g, odd_grad_np(x64), rtol=rtol, atol=atol)


def test_gradient_and_second_derivative_match_finite_differences():
    x = _wide_inputs("float64")
    x = x[np.abs(x) < 50]
    x = x[np.abs(x) > 1e-2]  # |x| has a kink at 0
    h = 1e-5
    _, g = _grad(odd, tf.constant(x))
    fd = (odd_np(x + h) - odd_np(x - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    _, g2 = _second(odd, tf.constant(x))
    fd2 = (odd_grad_np(x + h) - odd_grad_np(x - h)) / (2 * h)
    np.testing.assert_allclose(g2, fd2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_second_and_third_derivatives_match_unfused(dtype):
    x = tf.constant(_wide_inputs(dtype)[:260])
    tol = 1e-5 if dtype == "float32" else 1e-11
    g, h = _second(odd, x)
    g0, h0 = _second(odd_tf, x)
    np.testing.assert_allclose(g, g0, rtol=tol, atol=tol)
    np.testing.assert_allclose(h, h0, rtol=tol, atol=tol)


def test_third_derivative_differentiates_the_fused_second():
    x = tf.constant(_wide_inputs("float64")[:260])

    def third(fn):
        with tf.GradientTape() as t3:
            t3.watch(x)
            _, second = _second(fn, x)
        return t3.gradient(second, x)

    np.testing.assert_allclose(
        third(odd), third(odd_tf), rtol=1e-11, atol=1e-11
    )


def test_mixed_derivative_of_the_backward_pass():
    # d/d(dy) of the backward pass is used when a loss depends on a
    # gradient that itself depends on upstream values (double backprop).
    x = tf.constant(np.linspace(-3, 3, 7), tf.float64)
    w = tf.Variable(np.linspace(0.5, 2.0, 7))

    def penalty(fn):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(w * fn(x))
            g = inner.gradient(y, x)
            loss = tf.reduce_sum(g**2)
        return outer.gradient(loss, w)

    np.testing.assert_allclose(penalty(odd), penalty(odd_tf), rtol=1e-12)


def centered_tanh(x):
    return tf.tanh(x - tf.reduce_mean(x, axis=-1, keepdims=True))


def test_non_elementwise_function_with_elementwise_false():
    activation = fused(centered_tanh, elementwise=False)
    assert not activation.elementwise
    assert fused(centered_tanh, elementwise=False) is activation
    assert fused(centered_tanh) is not activation
    x = tf.constant(np.random.default_rng(1).normal(size=(3, 5)))
    y, g = _grad(activation, x)
    y0, g0 = _grad(centered_tanh, x)
    np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, g0, rtol=1e-12, atol=1e-12)
    g, h = _second(activation, x)
    g0, h0 = _second(centered_tanh, x)
    np.testing.assert_allclose(h, h0, rtol=1e-10, atol=1e-12)
    # The element-wise default would treat the gradient of sum(y) as a
    # diagonal derivative: wrong here for any upstream gradient other than
    # ones, which is why the flag exists.
    w = tf.constant(np.random.default_rng(2).normal(size=(3, 5)))

    def weighted(fn):
        return _grad(lambda t: w * fn(t), x)[1]

    np.testing.assert_allclose(
        weighted(activation), weighted(centered_tanh), rtol=1e-12, atol=1e-12
    )
    wrong = weighted(fused(centered_tanh))
    assert np.max(np.abs(wrong - weighted(centered_tanh))) > 1e-3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise_false_matches_default_on_elementwise_function(dtype):
    x = tf.constant(_wide_inputs(dtype)[:200])
    recompute = fused(odd_tf, elementwise=False)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for a, b in zip(_second(recompute, x), _second(odd, x)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_bad_elementwise_flag_is_refused():
    with pytest.raises(ValueError, match=r"`elementwise` must be a bool"):
        fused(odd_tf, elementwise="yes")


# --- Jacobians (pfor), as used by the JacobianRegularizer ------------------


@pytest.mark.parametrize("compiled", [False, True])
def test_jacobian_and_batch_jacobian_match_unfused(compiled):
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 3)))

    def jacobians(fn):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = fn(x)
        return tape.jacobian(y, x), tape.batch_jacobian(y, x)

    run = tf.function(jacobians) if compiled else jacobians
    j, bj = run(odd)
    j0, bj0 = run(odd_tf)
    np.testing.assert_allclose(j, j0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bj, bj0, rtol=1e-12, atol=1e-14)


def test_gradient_of_batch_jacobian_penalty_matches_unfused():
    # The JacobianRegularizer's computation: weights' gradient of the
    # squared Frobenius norm of d(model)/d(input), Jacobian via pfor.
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(6, 4)), tf.float32)
    w1 = tf.Variable(rng.normal(size=(4, 5)).astype("float32"))
    w2 = tf.Variable(rng.normal(size=(5, 3)).astype("float32"))

    @tf.function
    def penalty_grads(fn):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.matmul(fn(tf.matmul(x, w1)), w2)
            jac = tape.batch_jacobian(y, x)
            penalty = tf.reduce_sum(jac**2)
        return outer.gradient(penalty, [w1, w2])

    for got, want in zip(penalty_grads(odd), penalty_grads(odd_tf)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- the backward really is fused ------------------------------------------

_ELEMENTWISE = {
    "Sigmoid", "SigmoidGrad", "Tanh", "TanhGrad", "Exp", "Log1p", "Abs",
    "Mul", "AddV2", "Sub", "Neg", "Sign", "Pow", "Square", "Reciprocal",
    "RealDiv",
}  # fmt: skip


# The optimized-HLO structure asserted below is that of TF 2.21's XLA. Older
# XLA (TF <= 2.20; checked on 2.16) compiles the same programs with the same
# results but a different structure: it emits `tanh` as an instruction of its
# own next to the loop fusions, and wraps a fusion in a `call` to a
# `parallel_fusion` computation (its CPU parallel-task assignment). The
# graph-level checks (one XLA call, one multiply outside it) hold everywhere.
_TF_VERSION = tuple(int(v) for v in tf.__version__.split(".")[:2])
_needs_tf_2_21_xla = pytest.mark.skipif(
    _TF_VERSION < (2, 21),
    reason="HLO structure of TF 2.21's XLA; older XLA emits tanh outside "
    "the fusion or a call (results are the same)",
)


def _entry_instructions(hlo):
    entry = hlo[hlo.index("\nENTRY") :]
    body = entry[entry.index("{") + 1 : entry.index("\n}")]
    ops = []
    for line in body.strip().splitlines():
        match = re.search(r"= \S+ (\w[\w-]*)\(", line)
        if match:
            ops.append(match.group(1))
    return ops


def _graph_ops(fn, spec):
    graph = tf.function(fn).get_concrete_function(spec).graph
    return graph.get_operations()


def _value_and_grad(activation):
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = activation(x)
        return y, tape.gradient(y, x)

    return run


def test_backward_pass_is_one_multiply_after_one_fused_kernel():
    # Element-wise (default): the forward kernel also emits f'(x); the
    # backward pass is the one `Mul` dy * f'(x). Nothing else element-wise
    # runs outside XLA.
    ops = _graph_ops(
        _value_and_grad(odd), tf.TensorSpec([None, 64], tf.float32)
    )
    types_ = [op.type for op in ops]
    elementwise = [t for t in types_ if t in _ELEMENTWISE]
    assert elementwise == ["Mul"], types_
    calls = [
        op
        for op in ops
        if op.type in ("PartitionedCall", "StatefulPartitionedCall")
    ]
    assert len(calls) == 1, types_
    assert calls[0].get_attr("_XlaMustCompile") is True


@_needs_tf_2_21_xla
def test_forward_kernel_is_a_few_loop_fusions():
    x = tf.random.normal([128, 64])
    ir = odd._value_and_derivative.experimental_get_compiler_ir(x)
    unfused_ops = _entry_instructions(ir(stage="hlo"))
    fused_ops = _entry_instructions(ir(stage="optimized_hlo"))
    # ~40 element-wise ops for y and f'(x) become a few loop fusions (XLA's
    # CPU backend emits the intermediates both outputs share, exp, sigmoid
    # and tanh, as fusions of their own); nothing runs outside fusions.
    assert len(unfused_ops) > 30, unfused_ops
    assert set(fused_ops) <= {"parameter", "fusion", "tuple"}, fused_ops
    assert 1 <= fused_ops.count("fusion") <= 6, fused_ops


def test_recomputing_backward_pass_is_one_xla_call_of_one_fusion():
    # elementwise=False: the backward pass is a compiled VJP.
    activation = fused(odd_tf, elementwise=False)
    ops = _graph_ops(
        _value_and_grad(activation), tf.TensorSpec([None, 64], tf.float32)
    )
    types_ = [op.type for op in ops]
    assert not _ELEMENTWISE.intersection(types_), types_
    calls = [
        op
        for op in ops
        if op.type in ("PartitionedCall", "StatefulPartitionedCall")
    ]
    assert len(calls) == 2  # one forward, one backward
    for op in calls:
        assert op.get_attr("_XlaMustCompile") is True


@_needs_tf_2_21_xla
def test_recomputing_passes_are_one_fusion_each():
    activation = fused(odd_tf, elementwise=False)
    x = tf.random.normal([128, 64])
    for compiled, args in [
        (activation._backward, (x, x)),
        (activation._forward, (x,)),
    ]:
        hlo = compiled.experimental_get_compiler_ir(*args)(
            stage="optimized_hlo"
        )
        ops = [o for o in _entry_instructions(hlo) if o != "parameter"]
        assert ops == ["fusion"], ops


def test_second_derivative_is_one_xla_call():
    ops = _graph_ops(
        lambda x: _second(odd, x)[1], tf.TensorSpec([None], tf.float32)
    )
    types_ = [op.type for op in ops]
    # The first derivative's one multiply; the second is compiled.
    assert [t for t in types_ if t in _ELEMENTWISE] == ["Mul"], types_
    calls = [
        op
        for op in ops
        if op.type in ("PartitionedCall", "StatefulPartitionedCall")
    ]
    assert calls and all(
        op.get_attr("_XlaMustCompile") is True for op in calls
    ), types_


@_needs_tf_2_21_xla
def test_second_derivative_kernel_is_a_few_loop_fusions():
    x = tf.random.normal([256])
    ir = odd._backward_of_backward.experimental_get_compiler_ir(x, x, x)
    unfused_ops = _entry_instructions(ir(stage="hlo"))
    fused_ops = _entry_instructions(ir(stage="optimized_hlo"))
    # Two outputs (d/dx, d/d(dy)) of ~100 element-wise ops become a few
    # loop fusions; nothing else runs outside them.
    assert len(unfused_ops) > 50
    assert set(fused_ops) <= {"parameter", "fusion", "tuple"}, fused_ops
    assert 1 <= fused_ops.count("fusion") <= 8, fused_ops


# --- dtypes and numerics ----------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_computes_in_input_dtype(dtype):
    x32 = _wide_inputs("float32")
    x32 = x32[np.abs(x32) < 100]
    x = tf.constant(x32, dtype)
    y, g = _grad(odd, x)
    assert y.dtype == x.dtype and g.dtype == x.dtype
    xr = tf.cast(x, "float64").numpy()
    tol = 1e-2 if dtype == "float16" else 4e-2
    np.testing.assert_allclose(
        tf.cast(y, "float64"), odd_np(xr), rtol=tol, atol=tol
    )
    np.testing.assert_allclose(
        tf.cast(g, "float64"), odd_grad_np(xr), rtol=tol, atol=tol
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_large_inputs_stay_finite(dtype):
    x = tf.constant([-1e4, -1e3, 1e3, 1e4], dtype)
    g, h = _second(odd, x)
    y = odd(x)
    for value in (y, g, h):
        assert np.all(np.isfinite(tf.cast(value, "float64"))), value
    np.testing.assert_allclose(
        tf.cast(y, "float64"), [-1.0, -1.0, 999.0, 9999.0], rtol=1e-2
    )


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_nan_and_inf_propagate_like_tensorflow(dtype):
    x = tf.constant([np.nan, np.inf, -np.inf, 1.0], dtype)
    y, g = _grad(odd, x)
    y0, g0 = _grad(odd_tf, x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y0))
    np.testing.assert_array_equal(np.isnan(g), np.isnan(g0))
    finite = np.isfinite(y0)
    np.testing.assert_array_equal(
        np.asarray(y)[~finite], np.asarray(y0)[~finite]
    )
    assert np.isnan(y[0]) and np.isnan(g[0])
    assert y[1] == np.inf


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "complex64"])
def test_non_float_input_is_refused(dtype):
    with pytest.raises(ValueError, match=rf"floating-point.*{dtype}"):
        odd(tf.zeros([2], dtype))


def test_shape_changing_function_is_refused_at_first_call():
    @fused
    def row_sums(x):
        return tf.reduce_sum(x, axis=-1)

    with pytest.raises(ValueError, match=r"row_sums.*same shape|shape=\(2,\)"):
        row_sums(tf.zeros([2, 3]))


def test_dtype_changing_and_non_tensor_functions_are_refused():
    @fused
    def to_double(x):
        return tf.cast(x, tf.float64)

    with pytest.raises(ValueError, match=r"output shape=\(3,\) dtype=float64"):
        to_double(tf.zeros([3]))

    @fused
    def returns_none(x):
        return None

    with pytest.raises(ValueError, match=r"Received: a return value of type"):
        returns_none(tf.zeros([3]))


def test_symbolic_and_ragged_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match=r"keras.layers.Activation"):
        odd(keras.Input((3,)))
    ragged = tf.ragged.constant([[1.0], [2.0, 3.0]])
    with pytest.raises(ValueError, match=r"map_flat_values"):
        odd(ragged)
    y = tf.ragged.map_flat_values(odd, ragged)
    np.testing.assert_allclose(
        y.flat_values, odd_tf(ragged.flat_values), rtol=1e-6
    )


# --- Keras integration ------------------------------------------------------


def _mlp(activation, seed=7):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation=activation),
            keras.layers.Dense(16),
            keras.layers.Activation(activation),
            keras.layers.Dense(1),
        ]
    )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_matches_unfused_and_lowers_the_loss(jit_compile):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    weights, losses = [], []
    for activation in (odd, odd_tf):
        model = _mlp(activation)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss="mse",
            jit_compile=jit_compile,
        )
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
        losses.append(history.history["loss"])
        weights.append(model.get_weights())
    assert losses[0][-1] < losses[0][0]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    for got, want in zip(*weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fit_under_mirrored_strategy_matches_one_device():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    # One MirroredStrategy per process (TF collective instance keys are
    # process-wide): share the one keras_research.testing uses.
    strategy = mirrored_strategy()
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = _mlp(odd)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    reference = _mlp(odd)
    reference.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    expected = reference.fit(x, y, batch_size=16, epochs=2, verbose=0)
    np.testing.assert_allclose(
        history.history["loss"], expected.history["loss"], rtol=1e-5
    )
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mixed_precision_policy_keeps_half_outputs():
    keras.config.set_dtype_policy("mixed_float16")
    layer = keras.layers.Dense(4, activation=keras_research.activations.mish)
    out = layer(np.ones((2, 3), "float32"))
    assert out.dtype == tf.float16
    assert layer.kernel.dtype == "float32"


@pytest.mark.parametrize(
    "layer_cls,kwargs",
    [
        pytest.param(keras.layers.Dense, {"units": 3}, marks=pytest.mark.slow),
        (keras.layers.Activation, {}),
    ],
)
def test_keras_layer_conformance(layer_cls, kwargs):
    activation = keras_research.activations.silu_softplus_tanh_squared
    key = "activation"
    init_kwargs = {**kwargs, key: activation}
    keras_research.testing.run_layer_test(
        layer_cls,
        init_kwargs,
        np.random.default_rng(6).normal(size=(4, 5)).astype("float32"),
        atol=1e-5,
        rtol=1e-5,
    )


# --- serialization ----------------------------------------------------------


@keras.saving.register_keras_serializable(package="test_fused")
@fused
def registered_on_top(x):
    return x * tf.sigmoid(2.0 * x)


@fused
@keras.saving.register_keras_serializable(package="test_fused")
def registered_below(x):
    return tf.tanh(x) + 0.1 * x


def unregistered(x):
    return tf.tanh(x)


@pytest.mark.parametrize(
    "activation,config",
    [
        (registered_on_top, {"activation": "test_fused>registered_on_top"}),
        (
            keras_research.activations.mish,
            {"activation": "keras_research>mish"},
        ),
        (registered_below, None),
        (fused(keras.activations.silu), None),
        (fused(keras.activations.silu, elementwise=False), None),
    ],
)
def test_config_round_trip(activation, config):
    if config is not None:
        assert activation.get_config() == config
    serialized = keras.activations.serialize(activation)
    assert serialized["registered_name"] == "keras_research>FusedActivation"
    assert keras.activations.deserialize(serialized) is activation
    layer = keras.layers.Dense(2, activation=activation)
    clone = keras.layers.Dense.from_config(layer.get_config())
    assert clone.activation is activation


def test_save_and_load_keras_file_safe_mode(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(
                4, activation=keras_research.activations.gelu_tanh
            ),
            keras.layers.Dense(4, activation=registered_below),
            keras.layers.Activation(registered_on_top),
            keras.layers.Dense(2, activation=fused(keras.activations.silu)),
        ]
    )
    x = np.random.default_rng(7).normal(size=(3, 5)).astype("float32")
    keras_research.testing.run_model_saving_test(model, x)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.layers[0].activation is keras_research.activations.gelu_tanh
    np.testing.assert_array_equal(loaded(x), model(x))


def test_lambda_is_refused_at_save_time(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, activation=fused(lambda x: x)),
        ]
    )
    with pytest.raises(ValueError, match=r"lambda cannot be saved"):
        model.save(str(tmp_path / "model.keras"))


def test_unregistered_function_is_refused_at_save_time(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, activation=fused(unregistered)),
        ]
    )
    with pytest.raises(ValueError, match=r"`unregistered` cannot be saved"):
        model.save(str(tmp_path / "model.keras"))


def test_from_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"registered as 'nope>missing'"):
        FusedActivation.from_config({"activation": "nope>missing"})
    with pytest.raises(ValueError, match=r"'activation' or 'function'"):
        FusedActivation.from_config({})


def test_copy_deepcopy_and_pickle_keep_the_instance():
    activation = keras_research.activations.snake
    assert copy.copy(activation) is activation
    assert copy.deepcopy(activation) is activation
    assert pickle.loads(pickle.dumps(activation)) is activation
    layer = keras.layers.Dense(2, activation=activation)
    assert copy.deepcopy(layer).activation is activation


def test_several_activations_do_not_warn_about_retracing(caplog):
    # TensorFlow keys its retracing warning by code object; all fused
    # activations share their closures' code, so without care a model with
    # a few fused activations would be told it "retraces" excessively.
    def make(k):
        def scaled_tanh(x):
            return tf.tanh(x) * float(k)

        return fused(scaled_tanh)

    x = tf.ones([3])
    for activation in [make(k) for k in range(7)]:
        _grad(activation, x)
    assert "retracing" not in caplog.text


@pytest.mark.parametrize("jit_compile", [False, True])
def test_trains_under_jacobian_regularizer_like_unfused(jit_compile):
    # The regularizer differentiates a (pfor or unrolled) Jacobian: this
    # needs the fused backward pass to be differentiable itself.
    rng = np.random.default_rng(8)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    runs = []
    for activation in (odd, odd_tf):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, activation=activation),
                keras.layers.Dense(3),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss="mse",
            jit_compile=jit_compile,
        )
        regularizer = keras_research.callbacks.JacobianRegularizer(weight=0.1)
        history = model.fit(
            x, y, epochs=2, batch_size=16, verbose=0, callbacks=[regularizer]
        )
        runs.append((history.history, model.get_weights()))
    (fused_history, fused_weights), (history, weights) = runs
    assert fused_history["jacobian_norm"][0] > 0
    np.testing.assert_allclose(
        fused_history["jacobian_norm"], history["jacobian_norm"], rtol=1e-5
    )
    for got, want in zip(fused_weights, weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
