"""Tests of keras_research.factorized_scope on Keras layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_research
from keras_research.scopes._factorized_weight import FactorizedVariable
from tests.scopes._helpers import (
    assert_factorized_like,
    factorized_weights,
    fit_lowers_loss,
    load_merged,
    random_like,
)

RANK = 4


@keras.saving.register_keras_serializable(package="keras_research_tests")
class TwoMatrices(keras.layers.Layer):
    """A custom layer written here: two weights, one of them 3-D."""

    def __init__(self, units=12, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape[-1], self.units), name="w"
        )
        self.v = self.add_weight(
            shape=(self.units, 2, self.units), name="v"
        )

    def call(self, x):
        h = ops_relu(keras.ops.matmul(x, self.w))
        return keras.ops.einsum("bi,ijk->bk", h, self.v)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def ops_relu(x):
    return keras.ops.maximum(x, 0.0)


def _x(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


LAYERS = {
    "dense": (lambda: keras.layers.Dense(32, name="layer"), _x(8, 16)),
    "einsum_dense": (
        lambda: keras.layers.EinsumDense(
            "ab,bc->ac", output_shape=24, bias_axes="c", name="layer"
        ),
        _x(8, 16),
    ),
    "conv1d": (lambda: keras.layers.Conv1D(16, 3, name="layer"), _x(4, 10, 8)),
    "conv2d": (
        lambda: keras.layers.Conv2D(16, 3, name="layer"),
        _x(2, 8, 8, 4),
    ),
    "embedding": (
        lambda: keras.layers.Embedding(50, 16, name="layer"),
        np.random.default_rng(0).integers(0, 50, (4, 5)),
    ),
    "multi_head_attention": (
        lambda: keras.layers.MultiHeadAttention(2, 8, name="layer"),
        _x(2, 5, 16),
    ),
    "custom": (lambda: TwoMatrices(12, name="layer"), _x(8, 16)),
}


def _model(factory, x):
    inputs = keras.Input(x.shape[1:], dtype=x.dtype)
    layer = factory()
    if isinstance(layer, keras.layers.MultiHeadAttention):
        outputs = layer(inputs, inputs)
    else:
        outputs = layer(inputs)
    return keras.Model(inputs, outputs)


def _expected_rank(rank):
    def rank_of(path, shape):
        if len(shape) < 2:
            return None
        m, n = int(np.prod(shape[:-1])), shape[-1]
        return rank if rank * (m + n) < m * n and min(m, n) > 1 else None

    return rank_of


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_under_scope(kind):
    factory, x = LAYERS[kind]
    with keras_research.factorized_scope(rank=RANK, min_size=0):
        model = _model(factory, x)
    plain = _model(factory, x)
    # The trainable weights are the factors; no full-size variable exists.
    assert_factorized_like(model, plain, _expected_rank(RANK))
    # The forward pass equals the plain layer with kernel = left @ right.
    load_merged(model, plain)
    np.testing.assert_allclose(model(x), plain(x), rtol=1e-5, atol=1e-5)
    # `fit` trains the factors.
    before = {w.path: w.numpy() for w in model.trainable_weights}
    fit_lowers_loss(model, x, random_like(model(x)))
    for w in model.trainable_weights:
        assert not np.array_equal(before[w.path], w.numpy()), w.path


@pytest.mark.parametrize(
    "factory, input_shape, matrix",
    [
        (lambda: keras.layers.Dense(64), (8, 64), (64, 64)),
        (lambda: keras.layers.Conv2D(24, 3), (2, 8, 8, 16), (144, 24)),
        (
            lambda: keras.layers.Conv2D(24, 3, data_format="channels_first"),
            (2, 16, 8, 8),
            (144, 24),
        ),
        (lambda: keras.layers.Conv3D(24, 2), (2, 4, 4, 4, 8), (64, 24)),
    ],
)
def test_no_full_kernel_is_materialized(factory, input_shape, matrix):
    with keras_research.factorized_scope(rank=2, min_size=0):
        layer = factory()
        layer.build(input_shape)
    channels_first = getattr(layer, "data_format", None) == "channels_first"
    plain = factory()
    if channels_first:
        # TF's CPU kernels have no channels_first convolution: the
        # reference runs channels_last on transposed inputs.
        config = dict(plain.get_config(), data_format="channels_last")
        plain = type(plain).from_config(config)
        plain.build((input_shape[0],) + input_shape[2:] + input_shape[1:2])
    else:
        plain.build(input_shape)
    plain.kernel.assign(factorized_weights_of(layer)["kernel"].numpy())
    if plain.use_bias:
        plain.bias.assign(layer.bias)

    @tf.function
    def forward(x):
        return layer(x)

    x = tf.random.normal(input_shape)
    graph = forward.get_concrete_function(x).graph
    shapes = [
        tuple(op.outputs[0].shape.as_list())
        for op in graph.get_operations()
        if op.outputs
    ]
    assert matrix not in shapes
    assert tuple(layer.kernel.shape) not in shapes
    if channels_first:
        expected = tf.transpose(
            plain(tf.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2)
        )
        # Keras runs an NCHW Conv2D through TF's CPU kernels, which have
        # none: compile it (XLA has one), as Keras does for Conv3D.
        actual = tf.function(layer, jit_compile=True)(x)
    else:
        expected = plain(x)
        actual = forward(x)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_embedding_gathers_rows_of_the_left_factor():
    with keras_research.factorized_scope(rank=3, min_size=0):
        layer = keras.layers.Embedding(40, 8)
        layer.build((None,))
    ids = np.array([[1, 5], [7, 1]])
    with tf.GradientTape() as tape:
        out = layer(ids)
    grads = tape.gradient(out, layer.trainable_weights)
    assert isinstance(grads[0], tf.IndexedSlices)  # Only the rows used.
    table = factorized_weights_of(layer)["embeddings"].numpy()
    np.testing.assert_allclose(out, table[ids], rtol=1e-6, atol=1e-6)


def factorized_weights_of(layer):
    return layer.__dict__["_kr_factorized"]


def test_fraction_rank_min_size_and_savings_rule():
    with keras_research.factorized_scope(rank=0.5, min_size=200):
        a = keras.layers.Dense(32)
        a.build((None, 16))  # 512 elements: rank 0.5 * 16 = 8.
        b = keras.layers.Dense(8)
        b.build((None, 16))  # 128 elements < min_size.
        c = keras.layers.Dense(16)
        c.build((None, 16))  # rank 8: 8 * 32 = 256 >= 256, no saving.
    assert [tuple(w.shape) for w in a.weights] == [(16, 8), (8, 32), (32,)]
    assert [tuple(w.shape) for w in b.weights] == [(16, 8), (8,)]
    assert [tuple(w.shape) for w in c.weights] == [(16, 16), (16,)]


def test_filter_decides():
    calls = []

    def only_a(layer, name, shape):
        calls.append((layer.name, name, shape))
        return layer.name == "a"

    with keras_research.factorized_scope(rank=2, filter=only_a):
        a = keras.layers.Dense(4, name="a")
        a.build((None, 3))  # Small, and rank 2 saves nothing: still done.
        b = keras.layers.Dense(400, name="b")
        b.build((None, 300))
    assert ("a", "kernel", (3, 4)) in calls
    assert [tuple(w.shape) for w in a.weights] == [(3, 2), (2, 4), (4,)]
    assert [tuple(w.shape) for w in b.weights] == [(300, 400), (400,)]


def test_constrained_non_trainable_and_int_weights_are_left_alone():
    class Odd(keras.layers.Layer):
        def build(self, input_shape):
            self.frozen = self.add_weight(
                shape=(64, 64), trainable=False, name="frozen"
            )
            self.counts = self.add_weight(
                shape=(64, 64), dtype="int32", name="counts"
            )

    with keras_research.factorized_scope(rank=2, min_size=0):
        constrained = keras.layers.Dense(64, kernel_constraint="non_neg")
        constrained.build((None, 64))
        odd = Odd()
        odd.build(None)
    assert tuple(constrained.kernel.shape) == (64, 64)
    assert [tuple(w.shape) for w in odd.weights] == [(64, 64), (64, 64)]


def test_regularizer_applies_to_the_product():
    with keras_research.factorized_scope(rank=2, min_size=0):
        layer = keras.layers.Dense(
            8, kernel_regularizer=keras.regularizers.L2(0.1)
        )
        layer.build((None, 6))
    product = factorized_weights_of(layer)["kernel"].numpy()
    (loss,) = layer.losses
    np.testing.assert_allclose(loss, 0.1 * np.sum(product**2), rtol=1e-5)


def test_already_factorized_layers_are_left_alone():
    with keras_research.factorized_scope(rank=2, min_size=0):
        layer = keras_research.layers.FactorizedDense(64, rank=16)
        layer.build((None, 64))
    assert [tuple(w.shape) for w in layer.weights] == [
        (64, 16),
        (16, 64),
        (64,),
    ]


def test_nested_scopes_do_not_factorize_factors():
    with keras_research.factorized_scope(rank=2, min_size=0):
        with keras_research.factorized_scope(rank=16, min_size=0):
            inner = keras.layers.Dense(64)
            inner.build((None, 64))
        outer = keras.layers.Dense(64)
        outer.build((None, 64))
    assert [tuple(w.shape) for w in inner.weights] == [
        (64, 16),
        (16, 64),
        (64,),
    ]
    assert [tuple(w.shape) for w in outer.weights] == [
        (64, 2),
        (2, 64),
        (64,),
    ]


def test_nothing_is_factorized_outside_the_scope():
    with keras_research.factorized_scope(rank=2, min_size=0):
        layer = keras.layers.Dense(16)  # Created but not built inside.
    layer.build((None, 16))
    assert tuple(layer.kernel.shape) == (16, 16)
    assert type(layer) is keras.layers.Dense


def test_spectral_initialization_is_the_truncated_initial_kernel():
    initial = _x(20, 12, seed=5)

    def init(shape, dtype=None):
        return tf.constant(initial, dtype=dtype)

    with keras_research.factorized_scope(rank=3, min_size=0):
        layer = keras.layers.Dense(12, kernel_initializer=init)
        layer.build((None, 20))
    u, s, vt = np.linalg.svd(initial.astype("float64"), full_matrices=False)
    expected = (u[:, :3] * s[:3]) @ vt[:3]
    product = factorized_weights_of(layer)["kernel"].numpy()
    np.testing.assert_allclose(product, expected, atol=1e-5)


def test_zeros_initializer_still_trains():
    with keras_research.factorized_scope(rank=2, min_size=0):
        layer = keras.layers.Dense(8, kernel_initializer="zeros")
        layer.build((None, 8))
    kernel = factorized_weights_of(layer)["kernel"]
    np.testing.assert_array_equal(kernel.numpy(), np.zeros((8, 8)))
    x = _x(4, 8)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2 - layer(x))
    grads = tape.gradient(loss, [kernel.left, kernel.right])
    assert np.any(grads[1].numpy() != 0)


def test_raw_tf_variables_of_a_tf_module():
    initial = _x(64, 32, seed=2)

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(initial, name="w")
            self.b = tf.Variable(tf.zeros([32]), name="b")

        def __call__(self, x):
            return x @ self.w + self.b

    with keras_research.factorized_scope(rank=4, min_size=0):
        module = Linear()
    assert isinstance(module.w, FactorizedVariable)
    assert sorted(
        tuple(v.shape) for v in module.trainable_variables
    ) == sorted([(64, 4), (4, 32), (32,)])
    u, s, vt = np.linalg.svd(initial.astype("float64"), full_matrices=False)
    np.testing.assert_allclose(
        tf.convert_to_tensor(module.w), (u[:, :4] * s[:4]) @ vt[:4], atol=1e-5
    )
    x = _x(3, 64)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(module(x))
    grads = tape.gradient(y, [module.w.left, module.w.right])
    assert all(g is not None for g in grads)
    # Outside the scope, tf.Variable is a tf.Variable again.
    assert isinstance(Linear().w, tf.Variable)


def test_keras_variables_outside_add_weight_are_left_alone():
    with keras_research.factorized_scope(rank=2, min_size=0):
        variable = keras.Variable(np.ones((64, 64), "float32"))
        optimizer = keras.optimizers.Adam()
        optimizer.build([variable])
    assert tuple(variable.shape) == (64, 64)
    full_rank = _x(64, 64, seed=4)
    variable.assign(full_rank)  # A factorized inner variable would truncate.
    np.testing.assert_array_equal(variable.numpy(), full_rank)
    assert all(
        isinstance(v, keras.Variable) and len(v.shape) in (0, 2)
        for v in optimizer.variables
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    x = _x(8, 16)
    with keras_research.factorized_scope(rank=RANK, min_size=0):
        model = _model(LAYERS["dense"][0], x)
    assert all(w.dtype == "float32" for w in model.weights)
    assert keras.backend.standardize_dtype(model(x).dtype) == policy[6:]
    fit_lowers_loss(model, x, random_like(model(x)))
    keras.config.set_dtype_policy("float32")
    plain = _model(LAYERS["dense"][0], x)
    load_merged(model, plain)
    np.testing.assert_allclose(
        np.asarray(model(x), "float32"), plain(x), rtol=0.05, atol=0.05
    )


def test_mirrored_strategy_matches_one_device():
    x, y = _x(8, 16), _x(8, 32, seed=1)

    def build():
        with keras_research.factorized_scope(rank=RANK, min_size=0):
            model = _model(LAYERS["dense"][0], x)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    single = build()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build()
    mirrored.set_weights(single.get_weights())
    np.testing.assert_allclose(mirrored(x), single(x), rtol=1e-6, atol=1e-6)
    single.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    mirrored.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank"),
        ({"rank": -1}, "rank"),
        ({"rank": 1.5}, "rank"),
        ({"rank": 0.0}, "rank"),
        ({"rank": float("nan")}, "rank"),
        ({"rank": "4"}, "rank"),
        ({"rank": None}, "rank"),
        ({"rank": True}, "rank"),
        ({"rank": 2, "min_size": -1}, "min_size"),
        ({"rank": 2, "min_size": 2.5}, "min_size"),
        ({"rank": 2, "filter": 3}, "filter"),
        ({"rank": 2, "filter": "dense"}, "filter"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_research.factorized_scope(**kwargs)


def test_factorized_weight_interface():
    with keras_research.factorized_scope(rank=2, min_size=0):
        layer = keras.layers.Dense(6)
        layer.build((None, 5))
    kernel = layer.kernel
    assert kernel.shape == (5, 6) and kernel.rank == 2
    assert kernel.dtype == "float32" and kernel.trainable
    assert "kernel" in repr(kernel)
    product = kernel.left.numpy() @ kernel.right.numpy()
    np.testing.assert_allclose(
        np.asarray(kernel), product, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(kernel + 1.0, product + 1.0, rtol=1e-6)
    np.testing.assert_allclose(_x(2, 5) @ kernel, _x(2, 5) @ product,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        kernel.assign(np.zeros((6, 5)))
    assert factorized_weights(keras.Sequential([layer]))
