"""Tests for keras_research.layers._ragged_ops / _ragged_inputs vs NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from keras_research.layers import _ragged_inputs as inputs
from keras_research.layers import _ragged_ops as ops

COMBINERS = ("sum", "mean", "sqrtn", "max")


def numpy_bags(table, ids, segment_ids, num_bags, combiner, weights=None,
               max_norm=None):
    """Float64 reference: one output row per bag."""
    table = np.asarray(table, np.float64)
    weights = np.ones(len(ids)) if weights is None else np.asarray(
        weights, np.float64)
    out = np.zeros((num_bags, table.shape[1]))
    for b in range(num_bags):
        members = [k for k in range(len(ids)) if segment_ids[k] == b]
        if not members:
            continue
        rows = table[[ids[k] for k in members]]
        if max_norm is not None:
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            rows = np.where(norms > max_norm, rows * max_norm / norms, rows)
        w = weights[members]
        weighted = rows * w[:, None]
        if combiner == "max":
            out[b] = weighted.max(0)
            continue
        total = weighted.sum(0)
        if combiner == "mean":
            total = total / w.sum() if w.sum() else 0.0
        elif combiner == "sqrtn":
            norm = np.sqrt((w**2).sum())
            total = total / norm if norm else 0.0
        out[b] = total
    return out


def make_case(seed, num_bags=9, vocab=11, dim=4):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, num_bags)
    lengths[-1] = 0  # A trailing empty bag: sorted segment ops stop early.
    ids = rng.integers(0, vocab, lengths.sum())
    segment_ids = np.repeat(np.arange(num_bags), lengths)
    weights = rng.uniform(0.2, 2.0, lengths.sum())
    table = rng.normal(size=(vocab, dim)) * 1.5
    return table, ids, segment_ids, weights


def run(fn, mode, *args, **kwargs):
    if mode == "eager":
        return fn(*args, **kwargs)
    return tf.function(lambda *a: fn(*a, **kwargs),
                       jit_compile=mode == "xla")(*args)


@pytest.mark.parametrize("max_norm", (None, 1.3))
@pytest.mark.parametrize("weighted", (False, True), ids=("plain", "weighted"))
@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("mode", ("eager", "graph"))
def test_reduce_bags_matches_numpy(mode, combiner, weighted, max_norm):
    table, ids, segment_ids, weights = make_case(0)
    w = weights if weighted else None
    got = run(ops.reduce_bags, mode, tf.constant(table, tf.float32),
              tf.constant(ids, tf.int64), tf.constant(segment_ids, tf.int64),
              9, combiner=combiner,
              weights=None if w is None else tf.constant(w, tf.float32),
              max_norm=max_norm)
    expected = numpy_bags(table.astype(np.float32), ids, segment_ids, 9,
                          combiner, w, max_norm)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weighted", (False, True), ids=("plain", "weighted"))
@pytest.mark.parametrize("combiner", COMBINERS)
def test_reduce_bags_masked_under_xla_drops_masked_ids(combiner, weighted):
    table, ids, segment_ids, weights = make_case(1)
    keep = np.random.default_rng(2).random(len(ids)) > 0.3
    w = weights if weighted else None
    got = run(ops.reduce_bags_masked, "xla", tf.constant(table, tf.float32),
              tf.constant(ids, tf.int32), tf.constant(segment_ids, tf.int32),
              9, combiner=combiner,
              weights=None if w is None else tf.constant(w, tf.float32),
              keep=tf.constant(keep), max_norm=1.3)
    expected = numpy_bags(table.astype(np.float32), ids[keep],
                          segment_ids[keep], 9, combiner,
                          None if w is None else w[keep], 1.3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def table_gradient(fn, table, *args, **kwargs):
    variable = tf.Variable(table)

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            out = fn(variable, *args, **kwargs)
            loss = tf.reduce_sum(out * tf.range(1.0, 10.0)[:, None])
        return tape.gradient(loss, variable)

    return grad()


@pytest.mark.parametrize("max_norm", (None, 1.3))
@pytest.mark.parametrize("weighted", (False, True), ids=("plain", "weighted"))
@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("num_shards", (1, 3, 8))
def test_gradient_has_one_row_per_distinct_id(num_shards, combiner, weighted,
                                              max_norm):
    table, ids, segment_ids, weights = make_case(3)
    table = table.astype(np.float32)
    args = (tf.constant(ids, tf.int64), tf.constant(segment_ids, tf.int64), 9)
    kwargs = {"combiner": combiner, "max_norm": max_norm,
              "weights": tf.constant(weights, tf.float32) if weighted
              else None}
    g = table_gradient(ops.reduce_bags, table, *args, **kwargs,
                       num_shards=num_shards)
    assert isinstance(g, tf.IndexedSlices)
    indices = g.indices.numpy()
    assert sorted(indices.tolist()) == sorted(set(ids.tolist()))
    # Same values as differentiating the XLA path's plain formulation
    # (a dense gather per id) on a dense table.
    dense = tf.Variable(table)
    with tf.GradientTape() as tape:
        out = ops.reduce_bags_masked(dense.read_value(), *args, **kwargs)
        loss = tf.reduce_sum(out * tf.range(1.0, 10.0)[:, None])
    expected = tf.convert_to_tensor(tape.gradient(loss, dense)).numpy()
    np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), expected,
                               rtol=1e-5, atol=1e-6)


def test_weights_gradient_matches_finite_differences():
    table, ids, segment_ids, weights = make_case(4)
    w = tf.Variable(weights)

    def f(w_value):
        return tf.reduce_sum(ops.reduce_bags(
            tf.constant(table), tf.constant(ids), tf.constant(segment_ids),
            9, "mean", weights=w_value) ** 2)

    with tf.GradientTape() as tape:
        loss = f(w)
    grad = tape.gradient(loss, w).numpy()
    eps = 1e-6
    numeric = []
    for k in range(len(weights)):
        up, down = weights.copy(), weights.copy()
        up[k] += eps
        down[k] -= eps
        numeric.append((f(tf.constant(up)) - f(tf.constant(down))) / 2 / eps)
    np.testing.assert_allclose(grad, np.array(numeric), rtol=1e-5,
                               atol=1e-8)


@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@pytest.mark.parametrize("weighted", (False, True), ids=("plain", "weighted"))
@pytest.mark.parametrize("combiner", ("sum", "mean", "sqrtn"))
def test_low_precision_tables_accumulate_in_float32(combiner, weighted, dtype):
    table, ids, segment_ids, weights = make_case(5)
    table = tf.cast(np.abs(table) + 1.0, dtype)
    w = tf.cast(weights, dtype) if weighted else None
    got = ops.reduce_bags(table, tf.constant(ids), tf.constant(segment_ids),
                          9, combiner, weights=w)
    assert got.dtype == tf.float32
    expected = numpy_bags(tf.cast(table, tf.float64).numpy(), ids,
                          segment_ids, 9, combiner,
                          None if w is None else tf.cast(w, tf.float64))
    # Only the final rounding to the table dtype may differ (half an ulp).
    rounded = tf.cast(tf.cast(got, dtype), tf.float64).numpy()
    ulp = {"float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    np.testing.assert_allclose(rounded, expected, rtol=ulp / 2 + 1e-7,
                               atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_unique_static_matches_numpy_unique(seed):
    ids = np.random.default_rng(seed).integers(0, 7, 15)
    slots, position = tf.function(ops.unique_static, jit_compile=True)(
        tf.constant(ids))
    distinct = np.unique(ids)
    np.testing.assert_array_equal(np.sort(slots.numpy()[:len(distinct)]),
                                  distinct)
    assert not slots.numpy()[len(distinct):].any()
    np.testing.assert_array_equal(tf.gather(slots, position).numpy(), ids)


def test_segment_ids_from_splits_matches_repeat():
    splits = np.array([0, 0, 3, 3, 4, 8, 8])
    got = tf.function(ops.segment_ids_from_splits, jit_compile=True)(
        tf.constant(splits, tf.int32), tf.constant(8))
    np.testing.assert_array_equal(got.numpy(),
                                  np.repeat(np.arange(6), np.diff(splits)))


def test_check_same_raises_value_error_naming_weights_eagerly():
    with pytest.raises(ValueError, match=r"`weights` must have the same "
                       r"indices.*\[\[0 0\]\n? ?\[1 0\]\]"):
        inputs.check_same(tf.constant([[0, 0], [0, 1], [1, 0]], tf.int64),
                       tf.constant([[0, 0], [1, 0]], tf.int64), "indices")
    assert inputs.check_same(tf.constant([0, 2]), tf.constant([0, 2]),
                          "row splits") == []


def test_check_same_in_a_graph_names_weights_not_a_shape_error():
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)] * 2)
    def f(a, b):
        with tf.control_dependencies(inputs.check_same(a, b, "row splits")):
            return tf.identity(a)

    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="`weights` must have the same row splits"):
        f(tf.constant([0, 2, 3], tf.int64), tf.constant([0, 3], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="`weights` must have the same row splits"):
        f(tf.constant([0, 2, 3], tf.int64), tf.constant([0, 1, 3], tf.int64))


@pytest.mark.parametrize("mode", ("eager", "graph"))
def test_check_ids_allows_padding_and_names_the_range(mode):
    ids = tf.constant([3, -1, 4], tf.int64)
    np.testing.assert_array_equal(
        run(inputs.check_ids, mode, ids, 5, padding_id=-1).numpy(), ids.numpy())
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match=r"input_dim=5.*-1"):
        run(inputs.check_ids, mode, ids, 5)


def test_flatten_forms_agree():
    bags = [[1, 2], [], [3, 4, 5]]
    ragged = tf.ragged.constant(bags, dtype=tf.int64)
    flat_r = inputs.flatten_ragged(ragged, None, 2)
    flat_s = inputs.flatten_sparse(ragged.to_sparse(), None, 2)
    flat_d = inputs.flatten_dense(ragged.to_tensor(default_value=-1), None, 2)
    np.testing.assert_array_equal(flat_r.ids.numpy(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(flat_r.row_splits.numpy(), [0, 2, 2, 5])
    np.testing.assert_array_equal(flat_s.segment_ids.numpy(), [0, 0, 2, 2, 2])
    np.testing.assert_array_equal(flat_d.ids.numpy(),
                                  [1, 2, -1, -1, -1, -1, 3, 4, 5])
    np.testing.assert_array_equal(flat_d.segment_ids.numpy(),
                                  [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert int(flat_r.num_bags) == int(flat_s.num_bags) == 3
    assert int(flat_d.num_bags) == 3


def test_read_table_uses_the_no_copy_read_where_tf_has_it():
    # Pins the one TF method beyond the standard ops (docs/INTERNALS.md):
    # resource variables read without a copy, other tables read normally,
    # with equal values either way.
    variable = tf.Variable(np.arange(6.0, dtype="float32").reshape(3, 2))
    assert hasattr(type(variable), "read_value_no_copy")
    np.testing.assert_array_equal(
        ops.read_table(variable), variable.numpy()
    )
    constant = tf.constant(variable.numpy())
    np.testing.assert_array_equal(
        ops.read_table(constant), variable.numpy()
    )


@pytest.mark.parametrize("num_shards", (1, 2, 8))
def test_max_gradient_between_tied_rows_is_a_subgradient(num_shards):
    """Equal rows in one bag (ids 0 and 1 fall in different groups when
    sharded): the gradient is split between them, summing to the upstream
    gradient, as `tf.math.segment_max` splits it within a bag."""
    table = np.ones((4, 3), np.float32)
    g = table_gradient(
        lambda t, *a, **k: tf.pad(ops.reduce_bags(t, *a, **k),
                                  [[0, 8], [0, 0]]),
        table, tf.constant([0, 1, 3], tf.int64),
        tf.constant([0, 0, 0], tf.int64), 1, combiner="max",
        num_shards=num_shards)
    dense = tf.convert_to_tensor(g).numpy()
    # Upstream gradient of bag 0 is 1.0 (tf.range(1.0, 10.0)[0]).
    np.testing.assert_allclose(dense.sum(axis=0), np.ones(3), rtol=1e-6)
    assert (dense >= 0).all() and dense[2].sum() == 0
