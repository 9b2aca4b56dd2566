"""Tests of the `CustomOptimizer` template: compilation, slots, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_research.optimizers import Adam, CustomOptimizer
from tests.optimizers._momentum_sgd import MomentumSGD


class HostCallbackSGD(CustomOptimizer):
    """Uses `tf.numpy_function`, which XLA cannot compile."""

    def update_step(self, gradient, variable, learning_rate):
        doubled = tf.numpy_function(lambda g: 2 * g, [gradient], tf.float32)
        doubled.set_shape(gradient.shape)
        self.assign_sub(variable, ops.cast(learning_rate, "float32") * doubled)


def _apply_fn(optimizer, variables):
    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    return step


@pytest.mark.parametrize("jit_compile", [True, False])
def test_subclass_matches_numpy(jit_compile):
    rng = np.random.default_rng(0)
    init = rng.normal(size=(3, 2)).astype("float32")
    grads = rng.normal(size=(4, 3, 2)).astype("float32")
    variable = keras.Variable(init)
    step = _apply_fn(
        MomentumSGD(0.1, momentum=0.5, jit_compile=jit_compile), [variable]
    )
    expected, velocity = init.copy(), np.zeros_like(init)
    for g in grads:
        step([tf.constant(g)])
        velocity = 0.5 * velocity + g
        expected = expected - 0.1 * velocity
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)


def test_update_is_one_xla_call_in_the_step_graph():
    variables = [
        keras.Variable(np.ones(s, "float32"))
        for s in [(3, 4), (4,), (4, 2), (2,)]
    ]
    step = _apply_fn(Adam(), variables)
    graph = step.get_concrete_function(
        [tf.TensorSpec(v.shape) for v in variables]
    ).graph
    compiled = [
        op for op in graph.get_operations() if _attr(op, "_XlaMustCompile")
    ]
    assert len(compiled) == 1, [op.type for op in compiled]
    # The update math lives in the compiled function, not in the step.
    outer = {op.type for op in graph.get_operations()}
    assert not outer & {"Sqrt", "Pow", "RealDiv", "AssignSubVariableOp"}
    library = {
        f.signature.name: f for f in graph.as_graph_def().library.function
    }
    inner = library[compiled[0].get_attr("f").name]
    assert inner.attr["_XlaMustCompile"].b
    assert sum(n.op == "AssignSubVariableOp" for n in inner.node_def) == 4
    assert sum(n.op == "Sqrt" for n in inner.node_def) >= 4


def test_uncompiled_rule_has_no_xla_call():
    variables = [keras.Variable(np.ones((3,), "float32"))]
    step = _apply_fn(Adam(jit_compile=False), variables)
    graph = step.get_concrete_function([tf.TensorSpec((3,))]).graph
    assert not [
        op for op in graph.get_operations() if _attr(op, "_XlaMustCompile")
    ]
    assert "Sqrt" in {op.type for op in graph.get_operations()}


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
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)]
    )
    optimizer = Adam(0.01)
    model.compile(
        optimizer=optimizer, loss="mse", jit_compile=model_jit_compile
    )
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    traces = optimizer._fused.trace_count
    assert traces == 1
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert int(optimizer.iterations) == 48
    assert optimizer._fused.trace_count == traces


def test_eager_apply_compiles_once():
    variables = [keras.Variable(np.ones((3,), "float32"))]
    optimizer = Adam()
    for _ in range(5):
        optimizer.apply([tf.ones((3,))], variables)
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
    # CustomOptimizer overrides or calls these private methods of the
    # TensorFlow-backend Keras optimizer; fail loudly if Keras renames them.
    base = keras.optimizers.Optimizer
    for name in (
        "_backend_update_step",
        "_apply_weight_decay",
        "_all_reduce_sum_gradients",
        "_var_key",
        "_use_weight_decay",
        "_get_variable_index",
        "_backend_apply_gradients",
    ):
        assert callable(getattr(base, name, None)), name
    assert hasattr(Adam(), "_distribution_strategy")
