"""Tests of the `CustomOptimizer` template: compilation, slots, errors."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_research.optimizers import Adam, CustomOptimizer
from tests.optimizers._momentum_sgd import MomentumSGD
from tests.optimizers.conftest import SHIPPED_THRESHOLD


class HostCallbackSGD(CustomOptimizer):
    """Uses `tf.numpy_function`, which XLA cannot compile."""

    _op_by_op_below = 0  # Compile even the tiny test variable.

    def update_step(self, gradient, variable, learning_rate):
        doubled = tf.numpy_function(lambda g: 2 * g, [gradient], tf.float32)
        doubled.set_shape(gradient.shape)
        self.assign_sub(variable, ops.cast(learning_rate, "float32") * doubled)


def _apply_fn(optimizer, variables):
    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    return step


@pytest.mark.parametrize("shape", [(3, 2), (130, 128)], ids=["small", "large"])
@pytest.mark.parametrize("jit_compile", [True, False])
def test_subclass_matches_numpy(jit_compile, shape):
    rng = np.random.default_rng(0)
    init = rng.normal(size=shape).astype("float32")
    grads = rng.normal(size=(4, *shape)).astype("float32")
    variable = keras.Variable(init)
    step = _apply_fn(
        MomentumSGD(0.1, momentum=0.5, jit_compile=jit_compile), [variable]
    )
    expected, velocity = init.copy(), np.zeros_like(init)
    for g in grads:
        step([tf.constant(g)])
        velocity = 0.5 * velocity + g
        expected = expected - 0.1 * velocity
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, atol=1e-6)


# 128 x 128 = 16,384 elements: the smallest variable that is compiled.
LARGE, SMALL = (128, 128), (128,)


def _xla_calls(optimizer, shapes):
    """The compiled calls in the graph of one `apply` and their bodies."""
    variables = [keras.Variable(np.ones(s, "float32")) for s in shapes]
    step = _apply_fn(optimizer, variables)
    graph = step.get_concrete_function(
        [tf.TensorSpec(v.shape) for v in variables]
    ).graph
    compiled = [
        op for op in graph.get_operations() if _attr(op, "_XlaMustCompile")
    ]
    library = {
        f.signature.name: f for f in graph.as_graph_def().library.function
    }
    bodies = [library[op.get_attr("f").name] for op in compiled]
    assert all(body.attr["_XlaMustCompile"].b for body in bodies)
    outer = [op.type for op in graph.get_operations()]
    return bodies, outer


def _assign_subs(body):
    return sum(n.op == "AssignSubVariableOp" for n in body.node_def)


def test_large_variables_in_one_xla_call_small_ones_op_by_op():
    bodies, outer = _xla_calls(Adam(), [LARGE, SMALL, LARGE, SMALL])
    assert len(bodies) == 1
    # The update math of both large variables lives in the compiled call.
    assert _assign_subs(bodies[0]) == 2
    assert sum(n.op == "Sqrt" for n in bodies[0].node_def) >= 2
    # The two biases run op by op in the step itself, as in Keras.
    assert outer.count("AssignSubVariableOp") == 2
    assert outer.count("Sqrt") >= 2


def test_buckets_split_large_variables_from_the_last_backwards():
    optimizer = Adam()
    optimizer._bucket_elements = 2 * 128 * 128
    bodies, _ = _xla_calls(optimizer, [LARGE, LARGE, LARGE])
    # Three large variables, two per bucket: the last two, then the first.
    assert sorted(_assign_subs(b) for b in bodies) == [1, 2]


def test_default_threshold_compiles_variables_of_131072_elements():
    # What the docstrings and the README state; measured in
    # benchmarks/RESULTS.md ("Optimizers in `fit`").
    assert SHIPPED_THRESHOLD == 2**17
    assert CustomOptimizer._bucket_elements == 2**22
    assert "131,072" in " ".join(CustomOptimizer.__doc__.split())
    optimizer = Adam()
    optimizer._op_by_op_below = SHIPPED_THRESHOLD
    shapes = [(200000, 16), (512, 512), (256, 512), (255, 512), (512,),
              (1024, 2048)]
    plan = optimizer._plan([types.SimpleNamespace(shape=s) for s in shapes])
    # Large ones from the last variable backwards, in buckets of >= 4 M.
    assert plan == [(False, [3, 4]), (True, [5, 2, 1, 0])]


@pytest.mark.parametrize("jit_compile", (True, False))
def test_terms_shared_by_all_variables_are_computed_once_per_step(
        jit_compile):
    # Adam's bias corrections: one pair of `Pow` ops per dtype and step, not
    # one per variable (Keras's Adam: 2 per variable).
    shapes = [(3, 4), (4,), (4, 2), (2,)]
    variables = [keras.Variable(np.ones(s, "float32")) for s in shapes]
    optimizer = Adam(jit_compile=jit_compile)
    optimizer.build(variables)
    step = tf.function(lambda grads: optimizer.apply(grads, variables))
    graph = step.get_concrete_function(
        [tf.TensorSpec(s) for s in shapes]).graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("Pow") == 2
    keras_adam = keras.optimizers.Adam()
    keras_adam.build(variables)
    keras_step = tf.function(lambda grads: keras_adam.apply(grads, variables))
    keras_graph = keras_step.get_concrete_function(
        [tf.TensorSpec(s) for s in shapes]).graph
    assert [op.type for op in keras_graph.get_operations()].count("Pow") == 8


def test_small_variables_alone_make_no_xla_call():
    bodies, outer = _xla_calls(Adam(), [(3, 4), (4,), (4, 2), (2,)])
    assert not bodies
    assert outer.count("AssignSubVariableOp") == 4


def test_inside_an_xla_compiled_step_the_rule_is_inlined():
    variables = [keras.Variable(np.ones(LARGE, "float32"))]
    optimizer = Adam()

    @tf.function(jit_compile=True)
    def step(grads):
        optimizer.apply(grads, variables)

    step([tf.ones(LARGE)])
    step([tf.ones(LARGE)])
    assert optimizer._fused.trace_count == 0  # No separately compiled call.
    assert int(optimizer.iterations) == 2


def test_uncompiled_rule_has_no_xla_call():
    bodies, outer = _xla_calls(Adam(jit_compile=False), [LARGE, SMALL])
    assert not bodies
    assert outer.count("AssignSubVariableOp") == 2
    assert "Sqrt" in outer


def test_compiled_path_really_runs_through_xla():
    # XLA has no kernel for a host callback: the compiled update fails,
    # the same rule uncompiled runs.
    variable = keras.Variable([1.0, 2.0])
    HostCallbackSGD(0.5, jit_compile=False).apply(
        [tf.constant([1.0, 1.0])], [variable]
    )
    np.testing.assert_allclose(variable.numpy(), [0.0, 1.0])
    with pytest.raises(tf.errors.OpError, match="(?i)xla|compil|PyFunc"):
        HostCallbackSGD(0.5).apply([tf.constant([1.0, 1.0])], [variable])


@pytest.mark.parametrize("model_jit_compile", [False, True])
def test_long_fit_traces_the_update_once(model_jit_compile):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 128)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((128,)), keras.layers.Dense(128), keras.layers.Dense(1)]
    )
    optimizer = Adam(0.01)
    model.compile(
        optimizer=optimizer, loss="mse", jit_compile=model_jit_compile
    )
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    traces = optimizer._fused.trace_count
    # One compiled call for the 128 x 128 kernel; none inside a step that
    # XLA compiles as a whole (the rule is inlined there).
    assert traces == (0 if model_jit_compile else 1)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert int(optimizer.iterations) == 48
    assert optimizer._fused.trace_count == traces


def test_eager_apply_compiles_once():
    variables = [keras.Variable(np.ones(LARGE, "float32"))]
    optimizer = Adam()
    for _ in range(5):
        optimizer.apply([tf.ones(LARGE)], variables)
    assert optimizer._fused.trace_count == 1
    assert int(optimizer.iterations) == 5


def test_missing_update_step_is_reported():
    class NoRule(CustomOptimizer):
        pass

    with pytest.raises(TypeError, match="update_step"):
        NoRule()


def test_slot_errors():
    known = keras.Variable([1.0], name="known")
    stranger = keras.Variable([1.0], name="stranger")
    optimizer = MomentumSGD()
    with pytest.raises(ValueError, match="built"):
        optimizer.add_slot(known, "velocity")
    optimizer.build([known])
    assert optimizer.get_slot(known, "velocity").shape == (1,)
    with pytest.raises(ValueError, match="Unknown variable.*stranger"):
        optimizer.get_slot(stranger, "velocity")
    with pytest.raises(ValueError, match="Unknown variable.*stranger"):
        optimizer.add_slot(stranger, "velocity")
    with pytest.raises(ValueError, match="No slot named 'speed'"):
        optimizer.get_slot(known, "speed")
    with pytest.raises(ValueError, match="already exists"):
        optimizer.add_slot(known, "velocity")
    with pytest.raises(ValueError, match="name"):
        optimizer.add_slot(known, "")


def test_slots_are_saved_in_creation_order():
    variables = [keras.Variable([1.0, 2.0]), keras.Variable([3.0])]
    optimizer = MomentumSGD(0.1)
    optimizer.apply([tf.constant([1.0, 1.0]), tf.constant([2.0])], variables)
    names = [v.name for v in optimizer.variables]
    assert names[:2] == ["iteration", "learning_rate"]
    assert len(names) == 4 and all("velocity" in n for n in names[2:])


def test_some_gradients_missing():
    variables = [keras.Variable([1.0]), keras.Variable([2.0])]
    optimizer = MomentumSGD(0.1)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        optimizer.apply([tf.constant([1.0]), None], variables)
    np.testing.assert_allclose(variables[0].numpy(), [0.9])
    np.testing.assert_allclose(variables[1].numpy(), [2.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(learning_rate=-1e-3), "learning_rate"),
        (dict(learning_rate="0.1"), "learning_rate"),
        (dict(learning_rate=float("inf")), "learning_rate"),
        (dict(jit_compile="yes"), "jit_compile"),
        (dict(weight_decay="0.1"), "weight_decay"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MomentumSGD(**kwargs)


def test_callable_learning_rate():
    variable = keras.Variable([1.0])
    MomentumSGD(lambda: 0.25).apply([tf.constant([2.0])], [variable])
    np.testing.assert_allclose(variable.numpy(), [0.5])


def _attr(op, name):
    try:
        return op.get_attr(name)
    except (ValueError, TypeError):
        return False


def test_keras_internals_the_template_relies_on_exist():
    # CustomOptimizer overrides `_backend_update_step` and calls the others
    # (private methods of the TensorFlow-backend Keras optimizer): fail
    # loudly if Keras renames them.
    base = keras.optimizers.Optimizer
    for name in (
        "_backend_update_step",
        "_all_reduce_sum_gradients",
        "_var_key",
        "_get_variable_index",
    ):
        assert callable(getattr(base, name, None)), name
    assert hasattr(Adam(), "_distribution_strategy")
    # The only private method overridden; Keras's weight decay, clipping,
    # accumulation and EMA are inherited untouched.
    overridden = {
        name
        for name, value in vars(CustomOptimizer).items()
        if name.startswith("_")
        and not name.startswith("__")
        and callable(value)
        and hasattr(base, name)
    }
    assert overridden == {"_backend_update_step"}, overridden


@pytest.mark.parametrize("jit_compile", [True, False])
def test_apply_reaches_backend_update_step_once_per_step(jit_compile):
    # `apply` must still end in `_backend_update_step`, once per step, with
    # every variable: if Keras stops calling it, no variable would move.
    variables = [
        keras.Variable(np.ones(LARGE, "float32")),
        keras.Variable(np.ones(SMALL, "float32")),
    ]
    optimizer = MomentumSGD(0.1, jit_compile=jit_compile)
    calls = []
    original = optimizer._backend_update_step

    def spy(grads, trainable_variables, learning_rate):
        calls.append(len(grads))
        return original(grads, trainable_variables, learning_rate)

    optimizer._backend_update_step = spy
    for _ in range(3):
        optimizer.apply([tf.ones(LARGE), tf.ones(SMALL)], variables)
    assert calls == [2, 2, 2]
    # Velocity 1, 1.9, 2.71: the variables moved by 0.1 * 5.61.
    np.testing.assert_allclose(variables[0].numpy()[0, 0], 1 - 0.561, 1e-6)
    np.testing.assert_allclose(variables[1].numpy()[0], 1 - 0.561, 1e-6)
