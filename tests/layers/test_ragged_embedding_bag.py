"""Tests for keras_research.layers.RaggedEmbeddingBag."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_research.layers import RaggedEmbeddingBag
from keras_research.testing import run_layer_test

COMBINERS = ("sum", "mean", "sqrtn", "max")


def reference_bags(table, bags, combiner, weights=None, padding_id=None,
                   drop_invalid=False, max_norm=None):
    """NumPy reference: one output row per bag (list of ids)."""
    out = np.zeros((len(bags), table.shape[1]), np.float64)
    for b, bag in enumerate(bags):
        w_bag = [1.0] * len(bag) if weights is None else weights[b]
        rows, ws = [], []
        for i, w in zip(bag, w_bag):
            if padding_id is not None and i == padding_id:
                continue
            if drop_invalid and not 0 <= i < table.shape[0]:
                continue
            row = table[i].astype(np.float64)
            if max_norm is not None:
                norm = np.linalg.norm(row)
                if norm > max_norm:
                    row = row * max_norm / norm
            rows.append(row)
            ws.append(w)
        if not rows:
            continue
        rows, ws = np.stack(rows), np.asarray(ws, np.float64)
        weighted = rows * ws[:, None]
        if combiner == "sum":
            out[b] = weighted.sum(0)
        elif combiner == "mean":
            out[b] = weighted.sum(0) / ws.sum() if ws.sum() else 0.0
        elif combiner == "sqrtn":
            denom = np.sqrt((ws**2).sum())
            out[b] = weighted.sum(0) / denom if denom else 0.0
        else:
            out[b] = weighted.max(0)
    return out


def random_bags(rng, num_bags, vocab, max_len=7, empty_fraction=0.2):
    lengths = rng.integers(1, max_len + 1, num_bags)
    lengths[rng.random(num_bags) < empty_fraction] = 0
    return [list(rng.integers(0, vocab, n)) for n in lengths]


def table_of(layer):
    return keras.ops.convert_to_numpy(layer.embeddings)


# ----------------------------------------------------------------------------
# Conformance (config, symbolic, fit, XLA fit, mixed precision, saving,
# MirroredStrategy) for each input form.


@pytest.mark.parametrize(
    "combiner",
    ("mean", "max", pytest.param("sum", marks=pytest.mark.slow),
     pytest.param("sqrtn", marks=pytest.mark.slow)),
)
def test_layer_conformance_ragged(combiner):
    ids = tf.ragged.constant([[1, 2, 3], [], [4, 4], [0, 9, 8, 7]],
                             dtype=tf.int64)
    run_layer_test(
        RaggedEmbeddingBag,
        {"input_dim": 10, "output_dim": 3, "combiner": combiner},
        ids,
        expected_output_shape=(4, 3),
        expected_output_dtype="float32",
        expected_num_trainable_weights=1,
        expected_num_non_trainable_weights=0,
        run_mixed_precision_check=combiner == "mean",
        run_jit_compile_check=combiner in ("mean", "max"),
        run_distribution_check=combiner in ("mean", "max"),
    )


@pytest.mark.parametrize(
    "combiner", ("mean", pytest.param("max", marks=pytest.mark.slow))
)
def test_layer_conformance_dense_padded(combiner):
    ids = np.array([[1, 2, 3, 0], [0, 0, 0, 0], [4, 4, 0, 0], [9, 8, 7, 6]])
    run_layer_test(
        RaggedEmbeddingBag,
        {"input_dim": 10, "output_dim": 3, "combiner": combiner,
         "padding_id": 0},
        ids,
        expected_output_shape=(4, 3),
        expected_num_trainable_weights=1,
        run_mixed_precision_check=False,
    )


# ----------------------------------------------------------------------------
# Numerics against the NumPy reference, in every execution mode.


def run_in_mode(layer, mode, *args, **kwargs):
    if mode == "eager":
        return layer(*args, **kwargs)
    fn = tf.function(lambda *a, **k: layer(*a, **k),
                     jit_compile=mode == "xla")
    return fn(*args, **kwargs)


MODES = ("eager", "graph", "xla")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weighted", (False, True), ids=("plain", "weighted"))
@pytest.mark.parametrize("combiner", COMBINERS)
def test_numerics_ragged_vs_numpy(combiner, weighted, mode):
    rng = np.random.default_rng(hash((combiner, weighted, mode)) % 2**32)
    vocab = 13
    bags = random_bags(rng, 17, vocab)
    bags[-1] = []  # A trailing empty bag: sorted segment ops stop early.
    bags[3] = [5, 0, 0]  # Only padding left after removing ids 0... below.
    weights = [list(rng.uniform(0.1, 2.0, len(b))) for b in bags]
    layer = RaggedEmbeddingBag(vocab, 5, combiner,
                               embeddings_initializer="normal", padding_id=0)
    ids = tf.ragged.constant(bags, dtype=tf.int64, row_splits_dtype=tf.int64)
    w = tf.ragged.constant(weights, dtype=tf.float32) if weighted else None
    # tf.ragged.constant gives float64 for Python floats: make it float32.
    got = run_in_mode(layer, mode, ids, weights=w)
    expected = reference_bags(table_of(layer), bags, combiner,
                              weights if weighted else None, padding_id=0)
    assert got.shape == (17, 5)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_batch_of_only_empty_bags_gives_zeros(combiner, mode):
    layer = RaggedEmbeddingBag(7, 3, combiner, padding_id=6)
    ids = tf.RaggedTensor.from_row_lengths(
        tf.constant([6, 6], tf.int64), tf.constant([0, 2, 0], tf.int64)
    )
    got = run_in_mode(layer, mode, ids)
    np.testing.assert_array_equal(got.numpy(), np.zeros((3, 3)))
    empty = tf.RaggedTensor.from_row_lengths(
        tf.zeros([0], tf.int64), tf.zeros([4], tf.int64)
    )
    got = run_in_mode(layer, mode, empty)
    np.testing.assert_array_equal(got.numpy(), np.zeros((4, 3)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("combiner", ("mean", "sqrtn"))
def test_zero_weight_bag_gives_zeros_not_nan(combiner, mode):
    layer = RaggedEmbeddingBag(7, 3, combiner)
    ids = tf.ragged.constant([[1, 2], [3]], dtype=tf.int64)
    w = tf.ragged.constant([[0.0, 0.0], [2.0]], dtype=tf.float32)
    got = run_in_mode(layer, mode, ids, weights=w).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[0], np.zeros(3))


@pytest.mark.parametrize("mode", MODES)
def test_max_norm_renormalizes_looked_up_rows(mode):
    layer = RaggedEmbeddingBag(
        9, 4, "sum", max_norm=1.3,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
    )
    bags = [[1, 2, 3], [4], [], [8, 8]]
    got = run_in_mode(layer, mode, tf.ragged.constant(bags))
    table = table_of(layer)
    norms = np.linalg.norm(table, axis=1)
    assert norms.max() > 1.3 > norms.min()  # Rows to clip and to keep.
    expected = reference_bags(table, bags, "sum", max_norm=1.3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The stored table itself is left alone.
    np.testing.assert_array_equal(table_of(layer), table)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_invalid_ids_ignore_drops_them(combiner, mode):
    layer = RaggedEmbeddingBag(6, 3, combiner, invalid_ids="ignore",
                               embeddings_initializer="normal")
    bags = [[1, 6, 2], [-1, -5], [7, 5, 9], []]
    got = run_in_mode(layer, mode, tf.ragged.constant(bags))
    expected = reference_bags(table_of(layer), bags, combiner,
                              drop_invalid=True)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Input forms.


@pytest.mark.parametrize("mode", MODES)
def test_ragged_fields_uniform_gives_dense_per_field(mode):
    rng = np.random.default_rng(3)
    bags = random_bags(rng, 12, 11)  # 4 examples x 3 fields.
    flat = tf.ragged.constant(bags, dtype=tf.int64)
    ids = tf.RaggedTensor.from_uniform_row_length(flat, 3)
    assert ids.shape.as_list() == [4, 3, None]
    layer = RaggedEmbeddingBag(11, 2, "mean")
    got = run_in_mode(layer, mode, ids)
    assert isinstance(got, tf.Tensor) and got.shape == (4, 3, 2)
    expected = reference_bags(table_of(layer), bags, "mean").reshape(4, 3, 2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    spec = layer.compute_output_spec(
        keras.KerasTensor((None, 3, None), "int64", ragged=True)
    )
    assert spec.shape == (None, 3, 2) and not spec.ragged


@pytest.mark.parametrize("mode", ("eager", "graph"))
def test_ragged_fields_varying_gives_ragged_output(mode):
    nested = [[[1, 2], [3]], [], [[4], [], [5, 6, 7]]]
    ids = tf.ragged.constant(nested, dtype=tf.int64)
    layer = RaggedEmbeddingBag(8, 2, "sum")
    got = run_in_mode(layer, mode, ids)
    assert isinstance(got, tf.RaggedTensor)
    assert got.row_lengths().numpy().tolist() == [2, 0, 3]
    bags = [bag for example in nested for bag in example]
    expected = reference_bags(table_of(layer), bags, "sum")
    np.testing.assert_allclose(got.values.numpy(), expected, rtol=1e-6)
    spec = layer.compute_output_spec(
        keras.KerasTensor((None, None, None), "int64", ragged=True)
    )
    assert spec.shape == (None, None, 2) and spec.ragged


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_sparse_input_with_weights(combiner, mode):
    rng = np.random.default_rng(5)
    bags = random_bags(rng, 6, 9, max_len=4)
    weights = [list(rng.uniform(0.5, 1.5, len(b))) for b in bags]
    ids = tf.ragged.constant(bags, dtype=tf.int64).to_sparse()
    w = tf.ragged.constant(weights, dtype=tf.float32).to_sparse()
    layer = RaggedEmbeddingBag(9, 3, combiner)
    got = run_in_mode(layer, mode, ids, weights=w)
    expected = reference_bags(table_of(layer), bags, combiner, weights)
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_sparse_rank3_gives_one_vector_per_field(mode):
    bags = [[1], [2, 3], [], [4, 5, 6], [7], []]  # 3 examples x 2 fields.
    rt = tf.ragged.constant(bags, dtype=tf.int64)
    ids = tf.sparse.reshape(rt.to_sparse(), [3, 2, 3])
    layer = RaggedEmbeddingBag(8, 2, "sqrtn")
    got = run_in_mode(layer, mode, ids)
    expected = reference_bags(table_of(layer), bags, "sqrtn").reshape(3, 2, 2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_dense_padded_input_with_weights(combiner, mode):
    bags = [[1, 2, -1, -1], [-1, -1, -1, -1], [3, 3, 4, -1],
            [5, 6, 7, 8]]
    weights = np.random.default_rng(0).uniform(0.5, 2, (4, 4))
    layer = RaggedEmbeddingBag(9, 3, combiner, padding_id=-1)
    got = run_in_mode(layer, mode, tf.constant(bags),
                      weights=tf.constant(weights, tf.float32))
    expected = reference_bags(table_of(layer), bags, combiner,
                              weights.tolist(), padding_id=-1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_dense_rank3_input():
    ids = np.array([[[1, 0], [2, 3]], [[0, 0], [4, 0]]])
    layer = RaggedEmbeddingBag(5, 2, "sum", padding_id=0)
    got = layer(ids)
    assert got.shape == (2, 2, 2)
    bags = ids.reshape(4, 2).tolist()
    expected = reference_bags(table_of(layer), bags, "sum", padding_id=0)
    np.testing.assert_allclose(got.numpy().reshape(4, 2), expected,
                               rtol=1e-6)
    assert layer.compute_output_shape((None, 2, 2)) == (None, 2, 2)


# ----------------------------------------------------------------------------
# Equivalence with what users would otherwise write.


def test_matches_padded_embedding_mask_zero_average_pooling():
    rng = np.random.default_rng(1)
    bags = random_bags(rng, 8, 20, empty_fraction=0.0)
    bags = [[i + 1 for i in b] for b in bags]  # 0 is the padding id.
    padded = tf.ragged.constant(bags).to_tensor()
    inputs = keras.Input(shape=(None,), dtype="int32")
    embedded = keras.layers.Embedding(21, 4, mask_zero=True)(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    reference = keras.Model(inputs, pooled)
    layer = RaggedEmbeddingBag(21, 4, "mean", padding_id=0)
    layer.build()
    layer.embeddings.assign(reference.layers[1].embeddings)
    expected = reference(padded).numpy()
    np.testing.assert_allclose(layer(padded).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(layer(tf.ragged.constant(bags)).numpy(),
                               expected, rtol=1e-6)


@pytest.mark.parametrize("combiner", ("sum", "mean", "sqrtn"))
def test_matches_safe_embedding_lookup_sparse(combiner):
    rng = np.random.default_rng(2)
    bags = random_bags(rng, 10, 15)
    weights = [list(rng.uniform(0.1, 3.0, len(b))) for b in bags]
    sp_ids = tf.ragged.constant(bags, dtype=tf.int64).to_sparse()
    sp_w = tf.ragged.constant(weights, dtype=tf.float32).to_sparse()
    layer = RaggedEmbeddingBag(15, 6, combiner)
    layer.build()
    table = layer.embeddings.value
    for w in (None, sp_w):
        expected = tf.nn.safe_embedding_lookup_sparse(
            table, sp_ids, w, combiner=combiner
        )
        np.testing.assert_allclose(layer(sp_ids, weights=w).numpy(),
                                   expected.numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Gradients, precision.


@pytest.mark.parametrize("mode", ("eager", "graph"))
@pytest.mark.parametrize("combiner", COMBINERS)
def test_table_gradient_is_indexed_slices(combiner, mode):
    layer = RaggedEmbeddingBag(1000, 4, combiner, padding_id=0)
    ids = tf.ragged.constant([[5, 7, 0], [], [7, 999]], dtype=tf.int64)
    layer(ids)

    def grad():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids) ** 2)
        return tape.gradient(loss, layer.embeddings.value)

    g = grad() if mode == "eager" else tf.function(grad)()
    assert isinstance(g, tf.IndexedSlices)
    # One row per distinct looked-up (non-padding) id, never the 1000-row
    # table, and no repeated index (Keras's Adam squares rows one by one).
    assert sorted(g.indices.numpy().tolist()) == [5, 7, 999]
    assert g.values.shape[0] == 3
    # Same values as differentiating a per-bag reference on a dense table.
    table = tf.convert_to_tensor(layer.embeddings.value)
    reduce = {"sum": tf.reduce_sum, "mean": tf.reduce_mean,
              "max": tf.reduce_max,
              "sqrtn": lambda x, axis: tf.reduce_sum(x, axis) / tf.sqrt(
                  tf.cast(tf.shape(x)[0], x.dtype))}[combiner]
    with tf.GradientTape() as tape:
        tape.watch(table)
        loss = 0.0
        for bag in ([5, 7], [7, 999]):
            loss += tf.reduce_sum(reduce(tf.gather(table, bag), axis=0) ** 2)
    np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(),
                               tf.convert_to_tensor(
                                   tape.gradient(loss, table)).numpy(),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ("eager", "xla"))
@pytest.mark.parametrize("combiner", ("mean", "max"))
@pytest.mark.parametrize("weighted", (False, True), ids=("plain", "weighted"))
def test_adam_step_matches_dense_gradient_reference(weighted, combiner, mode):
    """Repeated ids: Adam on our sparse gradient == Adam on a dense one."""
    ids = tf.ragged.constant([[1, 1, 2], [2, 2, 2, 3]], dtype=tf.int64)
    w = tf.ragged.constant([[1.0, 0.5, 2.0], [1.0, 1.0, 3.0, 1.0]]) \
        if weighted else None
    layer = RaggedEmbeddingBag(5, 2, combiner,
                               embeddings_initializer="normal")
    layer(ids)
    dense = keras.Variable(table_of(layer))
    opt_sparse = keras.optimizers.Adam(0.1)
    opt_dense = keras.optimizers.Adam(0.1)
    target = tf.constant([[0.0, 3.0], [1.0, -2.0]])

    def grad():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((layer(ids, weights=w) - target) ** 2)
        g = tape.gradient(loss, layer.embeddings.value)
        assert isinstance(g, tf.IndexedSlices)
        return g.values, g.indices

    if mode == "xla":
        grad = tf.function(grad, jit_compile=True)
    for _ in range(3):
        values, indices = grad()
        g = tf.IndexedSlices(values, indices, tf.constant([5, 2]))
        opt_sparse.apply([g], [layer.embeddings])
        opt_dense.apply([tf.convert_to_tensor(g)], [dense])
    np.testing.assert_allclose(table_of(layer), dense.numpy(), rtol=1e-6)


@pytest.mark.parametrize("policy", ("mixed_float16", "mixed_bfloat16"))
def test_mixed_precision_keeps_table_float32(policy):
    ids = tf.ragged.constant([[1, 2, 3] * 50, [], [4]], dtype=tf.int64)
    reference = RaggedEmbeddingBag(10, 3, "sum")
    expected = reference(ids).numpy()
    keras.config.set_dtype_policy(policy)
    layer = RaggedEmbeddingBag(10, 3, "sum")
    layer.build()
    layer.embeddings.assign(reference.embeddings)
    got = layer(ids)
    assert layer.embeddings.dtype == "float32"
    assert got.dtype == keras.config.dtype_policy().compute_dtype
    # Reduced in float32: only the final cast rounds (150 ids summed).
    np.testing.assert_allclose(got.numpy().astype("float32"), expected,
                               rtol=1e-2 if policy == "mixed_bfloat16"
                               else 1e-3)


# ----------------------------------------------------------------------------
# Models, fit on ragged tf.data, retracing, saving.


def bag_dataset(num_examples=64, batch_size=16, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    bags = random_bags(rng, num_examples, vocab, max_len=12)
    labels = np.array([float(sum(b) % 2) for b in bags], "float32")
    ids = tf.ragged.constant(bags, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices((ids, labels)).ragged_batch(
        batch_size
    )


class BagClassifier(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bag = RaggedEmbeddingBag(50, 8, "sqrtn")
        self.head = keras.layers.Dense(1)

    def call(self, ids):
        return self.head(self.bag(ids))


def functional_model():
    inputs = keras.Input(shape=(None,), dtype="int64", ragged=True)
    x = RaggedEmbeddingBag(50, 8)(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def sequential_model():
    return keras.Sequential([
        keras.Input(shape=(None,), dtype="int64", ragged=True),
        RaggedEmbeddingBag(50, 8, "max"),
        keras.layers.Dense(1),
    ])


@pytest.mark.parametrize(
    "make", (functional_model, sequential_model, BagClassifier),
    ids=("functional", "sequential", "subclassed"),
)
def test_models_fit_on_ragged_batches_and_save(make, tmp_path):
    data = bag_dataset()
    model = make()
    model.compile(keras.optimizers.Adam(0.05), "mse")
    before = model.evaluate(data, verbose=0)
    model.fit(data, epochs=3, verbose=0)
    after = model.evaluate(data, verbose=0)
    assert after < before
    if make is BagClassifier:
        return  # Subclassed models without get_config do not reload.
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    ids = next(iter(data))[0]
    np.testing.assert_array_equal(loaded(ids).numpy(), model(ids).numpy())


@pytest.mark.parametrize(
    "jit_compile",
    # XLA compiles one program per distinct number of ids (slow, see the
    # layer docstring); the function itself is traced a bounded number of
    # times in both modes.
    (False, pytest.param(True, marks=pytest.mark.slow)),
    ids=("graph", "xla"),
)
def test_fit_over_varying_bag_lengths_traces_a_bounded_number_of_times(
    jit_compile,
):
    traces = []

    class CountingBag(RaggedEmbeddingBag):
        def call(self, inputs, weights=None):
            traces.append(1)
            return super().call(inputs, weights)

    inputs = keras.Input(shape=(None,), dtype="int64", ragged=True)
    outputs = keras.layers.Dense(1)(CountingBag(50, 4)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse", jit_compile=jit_compile)
    traces.clear()
    # 10 batches, every one with a different number of ids; last one short.
    data = bag_dataset(num_examples=76, batch_size=8, seed=4)
    sizes = {int(tf.size(x.values)) for x, _ in data}
    assert len(sizes) >= 8
    model.fit(data, epochs=2, verbose=0)
    assert len(traces) <= 3, f"train function traced {len(traces)} times"


def test_weights_as_second_ragged_input_fit_and_save(tmp_path):
    ids_in = keras.Input(shape=(None,), dtype="int64", ragged=True)
    w_in = keras.Input(shape=(None,), dtype="float32", ragged=True)
    bag = RaggedEmbeddingBag(20, 4, "mean")(ids_in, weights=w_in)
    model = keras.Model([ids_in, w_in], keras.layers.Dense(1)(bag))
    rng = np.random.default_rng(0)
    bags = random_bags(rng, 32, 20)
    ids = tf.ragged.constant(bags, dtype=tf.int64)
    w = tf.ragged.constant([list(rng.uniform(0.1, 1, len(b))) for b in bags],
                           dtype=tf.float32)
    y = rng.normal(size=(32, 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(((ids, w), y)).ragged_batch(8)
    model.compile(keras.optimizers.Adam(0.05), "mse")
    before = model.evaluate(data, verbose=0)
    model.fit(data, epochs=3, verbose=0)
    assert model.evaluate(data, verbose=0) < before
    path = str(tmp_path / "weighted.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded([ids, w]).numpy(),
                                  model([ids, w]).numpy())


def test_export_saved_model_with_ragged_serving_signature(tmp_path):
    model = functional_model()
    ids = tf.ragged.constant([[1, 2, 3], [], [4]], dtype=tf.int64)
    expected = model(ids).numpy()

    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[
        tf.RaggedTensorSpec([None, None], tf.int64, ragged_rank=1)
    ])
    def serve(ids):
        return model(ids)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.int64, name="values"),
        tf.TensorSpec([None], tf.int64, name="row_splits"),
    ])
    def serve_flat(values, row_splits):
        return model(tf.RaggedTensor.from_row_splits(values, row_splits))

    archive.add_endpoint("serve", serve)
    archive.add_endpoint("serve_flat", serve_flat)
    path = str(tmp_path / "exported")
    archive.write_out(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    np.testing.assert_allclose(reloaded.serve(ids).numpy(), expected,
                               rtol=1e-6)
    flat = reloaded.signatures["serve_flat"](values=ids.values,
                                             row_splits=ids.row_splits)
    np.testing.assert_allclose(next(iter(flat.values())).numpy(), expected,
                               rtol=1e-6)
    other = tf.ragged.constant([[5] * 40, [6, 7]], dtype=tf.int64)
    np.testing.assert_allclose(reloaded.serve(other).numpy(),
                               model(other).numpy(), rtol=1e-6)


def test_model_export_default_dense_signature_with_padding_id(tmp_path):
    inputs = keras.Input(shape=(None,), dtype="int64")
    x = RaggedEmbeddingBag(30, 4, "mean", padding_id=0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    padded = tf.constant([[3, 4, 0, 0], [0, 0, 0, 0], [5, 6, 7, 8]],
                         tf.int64)
    np.testing.assert_allclose(reloaded.serve(padded).numpy(),
                               model(padded).numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------
# MirroredStrategy with ragged ids in a custom loop (fit: the conformance
# tests above).


def test_mirrored_strategy_ragged_custom_loop():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    bags = [[1, 2, 3], [], [4, 4], [5, 6, 7, 8, 9], [2], [3, 1]]
    ids = tf.ragged.constant(bags, dtype=tf.int64)
    y = np.random.default_rng(0).normal(size=(6, 2)).astype("float32")

    def make():
        layer = RaggedEmbeddingBag(10, 2, "mean",
                                   embeddings_initializer="ones")
        layer.build()
        return layer

    def step(layer, x, target, scale):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((layer(x) - target) ** 2) / scale
        grad = tape.gradient(loss, layer.embeddings.value)
        return grad

    single = make()
    expected = tf.convert_to_tensor(step(single, ids, y, 6.0)).numpy()

    with strategy.scope():
        layer = make()
    data = tf.data.Dataset.from_tensor_slices((ids, y)).ragged_batch(6)
    dist = strategy.experimental_distribute_dataset(data)

    @tf.function
    def replica_step(x, target):
        grad = step(layer, x, target, 6.0)
        return tf.convert_to_tensor(grad)

    x, target = next(iter(dist))
    per_replica = strategy.run(replica_step, args=(x, target))
    total = strategy.reduce("SUM", per_replica, axis=None)
    np.testing.assert_allclose(total.numpy(), expected, rtol=1e-5,
                               atol=1e-6)
    outputs = strategy.experimental_local_results(
        strategy.run(tf.function(layer), args=(x,))
    )
    assert [int(o.shape[0]) for o in outputs] == [3, 3]
    np.testing.assert_allclose(tf.concat(outputs, 0).numpy(),
                               single(ids).numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"combiner": "median"}, "combiner.*median"),
        ({"input_dim": 0}, "input_dim.*0"),
        ({"input_dim": -3}, "input_dim.*-3"),
        ({"input_dim": 2.5}, "input_dim.*2.5"),
        ({"output_dim": 0}, "output_dim.*0"),
        ({"output_dim": True}, "output_dim.*True"),
        ({"max_norm": 0}, "max_norm.*0"),
        ({"max_norm": -1.0}, "max_norm.*-1.0"),
        ({"padding_id": 1.5}, "padding_id.*1.5"),
        ({"invalid_ids": "clip"}, "invalid_ids.*clip"),
        ({"nonpositive_weights": "drop"}, "nonpositive_weights.*drop"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"input_dim": 10, "output_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        RaggedEmbeddingBag(**args)


@pytest.mark.parametrize(
    "ids", [tf.ragged.constant([[1.0, 2.0]]), tf.constant([[1.0, 2.0]]),
            tf.ragged.constant([[1.0]]).to_sparse()],
    ids=("ragged", "dense", "sparse"),
)
def test_float_ids_raise(ids):
    with pytest.raises(ValueError, match="integer ids.*float32"):
        RaggedEmbeddingBag(10, 2)(ids)
    with pytest.raises(ValueError, match="integer ids.*float32"):
        RaggedEmbeddingBag(10, 2)(
            keras.Input(shape=(None,), dtype="float32", ragged=True)
        )


@pytest.mark.parametrize("mode", ("eager", "graph"))
@pytest.mark.parametrize("bad", (10, 12345, -1))
def test_invalid_ids_error_names_the_value(bad, mode):
    layer = RaggedEmbeddingBag(10, 2)
    ids = tf.ragged.constant([[1, 2], [bad, 3]], dtype=tf.int64)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match=rf"input_dim=10.*(?<![0-9]){bad}(?![0-9])"):
        run_in_mode(layer, mode, ids)


def test_padding_id_outside_vocabulary_is_not_an_error():
    layer = RaggedEmbeddingBag(10, 2, padding_id=-1)
    got = layer(tf.constant([[-1, -1], [3, -1]]))
    np.testing.assert_array_equal(got.numpy()[0], [0.0, 0.0])


def test_invalid_ids_under_xla_poison_only_their_bag():
    layer = RaggedEmbeddingBag(10, 2)
    ids = tf.ragged.constant([[1, 2], [10, 3], []], dtype=tf.int64)
    got = tf.function(layer, jit_compile=True)(ids).numpy()
    assert np.all(np.isnan(got[1]))
    assert np.all(np.isfinite(got[[0, 2]]))


@pytest.mark.parametrize("mode", ("eager", "graph"))
def test_weights_with_other_row_splits_raise(mode):
    layer = RaggedEmbeddingBag(10, 2)
    ids = tf.ragged.constant([[1, 2], [3]], dtype=tf.int64)
    weights = tf.ragged.constant([[1.0], [2.0, 3.0]])
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match="same row splits"):
        run_in_mode(layer, mode, ids, weights=weights)


@pytest.mark.parametrize(
    "weights, match",
    [
        (tf.constant([[1.0, 2.0], [3.0, 4.0]]), "tf.RaggedTensor"),
        (tf.ragged.constant([[[1.0]], [[2.0]]]), "ragged_rank=1"),
    ],
)
def test_weights_of_the_wrong_structure_raise(weights, match):
    layer = RaggedEmbeddingBag(10, 2)
    with pytest.raises(ValueError, match=match):
        layer(tf.ragged.constant([[1, 2], [3]]), weights=weights)


def test_dense_weights_of_other_shape_raise():
    layer = RaggedEmbeddingBag(10, 2)
    with pytest.raises(ValueError, match=r"weights.shape=\(2, 3\)"):
        layer(tf.constant([[1, 2], [3, 4]]), weights=tf.ones([2, 3]))


def test_unsupported_inputs_raise():
    layer = RaggedEmbeddingBag(10, 2)
    with pytest.raises(ValueError, match="rank >= 2"):
        layer(tf.constant([1, 2, 3]))
    with pytest.raises(ValueError, match="rank >= 2"):
        layer.compute_output_shape((None,))
    with pytest.raises(ValueError, match="flat_values"):
        layer(tf.RaggedTensor.from_row_lengths(tf.ones([3, 2], tf.int64),
                                               [1, 2]))
    with pytest.raises(ValueError, match="one tensor of ids"):
        layer.call([tf.constant([[1]]), tf.constant([[2]])])


# ----------------------------------------------------------------------------
# Output specs of every input form, docstring, property test.


@pytest.mark.parametrize(
    "shape, kind, expected_shape, expected_ragged",
    [
        ((None, None), "ragged", (None, 4), False),
        ((None, 3, None), "ragged", (None, 3, 4), False),
        ((None, None, None), "ragged", (None, None, 4), True),
        ((None, 7), "dense", (None, 4), False),
        ((8, 2, 7), "dense", (8, 2, 4), False),
        ((None, 2, 7), "sparse", (None, 2, 4), False),
    ],
)
def test_compute_output_spec_for_every_input_form(
    shape, kind, expected_shape, expected_ragged
):
    layer = RaggedEmbeddingBag(10, 4)
    inputs = keras.KerasTensor(shape, "int32", ragged=kind == "ragged",
                               sparse=kind == "sparse")
    spec = layer.compute_output_spec(inputs)
    assert spec.shape == expected_shape
    assert spec.ragged == expected_ragged
    assert spec.dtype == "float32"
    assert layer.compute_output_shape(shape) == expected_shape
    keras.config.set_dtype_policy("mixed_float16")
    assert RaggedEmbeddingBag(10, 4).compute_output_spec(inputs).dtype == (
        "float16"
    )


def test_sparse_keras_input_in_a_functional_model():
    inputs = keras.Input(shape=(None,), dtype="int64", sparse=True)
    model = keras.Model(inputs, RaggedEmbeddingBag(10, 3, "sum")(inputs))
    ids = tf.ragged.constant([[1, 2], [], [3]], dtype=tf.int64)
    np.testing.assert_allclose(model(ids.to_sparse()).numpy(),
                               model.layers[-1](ids).numpy(), rtol=1e-6)


def test_docstring_examples_run():
    import doctest

    import keras_research
    from keras_research.layers import ragged_embedding_bag

    globs = {"keras": keras, "tf": tf, "np": np,
             "keras_research": keras_research}
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(ragged_embedding_bag.RaggedEmbeddingBag,
                        globs=globs)
    assert sum(len(t.examples) for t in tests) >= 5
    for test in tests:
        runner.run(test)
    assert runner.failures == 0


def test_property_random_bags_match_numpy_reference():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    layer_cache = {}

    @hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
    @hypothesis.given(
        bags=st.lists(st.lists(st.integers(0, 9), max_size=6), min_size=1,
                      max_size=8),
        combiner=st.sampled_from(COMBINERS),
        weighted=st.booleans(),
        padding=st.sampled_from([None, 0]),
        data=st.data(),
    )
    def check(bags, combiner, weighted, padding, data):
        key = (combiner, padding)
        if key not in layer_cache:
            layer_cache[key] = RaggedEmbeddingBag(
                10, 3, combiner, padding_id=padding,
                embeddings_initializer="normal",
            )
        layer = layer_cache[key]
        weights = [
            data.draw(st.lists(st.floats(0.0, 4.0), min_size=len(b),
                               max_size=len(b)))
            for b in bags
        ] if weighted else None
        ids = tf.ragged.constant(bags, dtype=tf.int64, ragged_rank=1,
                                 inner_shape=())
        w = None
        if weighted:
            w = tf.RaggedTensor.from_row_splits(
                tf.constant([x for ws in weights for x in ws], tf.float32),
                ids.row_splits,
            )
        got = layer(ids, weights=w).numpy()
        expected = reference_bags(table_of(layer), bags, combiner, weights,
                                  padding_id=padding)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    check()


# ----------------------------------------------------------------------------
# Ported from upstream tests: TensorFlow's embedding_ops_test.py
# (EmbeddingLookupSparseTest, SafeEmbeddingLookupSparseTest) and PyTorch's
# test/nn/test_embedding.py (EmbeddingBag), run against the layer.


def tf_random_ids_and_weights(rng, batch_size=10, vocab_size=13):
    """TF's `_RandomIdsAndWeights`: 1-5 ids per bag, weights in [1, 2)."""
    lengths = rng.integers(1, 6, size=batch_size)
    ids = rng.integers(vocab_size, size=lengths.sum())
    weights = 1 + rng.random(lengths.sum())
    return lengths, ids, weights


@pytest.mark.parametrize("dtype", ("float16", "bfloat16", "float32"))
@pytest.mark.parametrize("weighted", (False, True), ids=("plain", "weighted"))
@pytest.mark.parametrize("combiner", ("sum", "mean", "sqrtn"))
def test_tf_embedding_lookup_sparse_precision(combiner, weighted, dtype):
    """TF's testEmbeddingLookupSparse: params in [1, 2), 2x5 rows.

    Its tolerances: rtol = atol = 1e-3 for float16, 1e-2 for bfloat16.
    The reduction accumulates in float32 and divides (it used to multiply
    by a reciprocal rounded to float16: rel. error up to 1.8e-3).
    """
    tol = {"float16": 1e-3, "bfloat16": 1e-2, "float32": 1e-6}[dtype]
    layer = RaggedEmbeddingBag(13, 10, combiner, dtype=dtype)
    layer.build()
    for seed in range(20):  # TF draws new ids, weights and params per case.
        rng = np.random.default_rng(seed)
        lengths, ids, weights = tf_random_ids_and_weights(rng)
        layer.embeddings.assign(rng.random((13, 10)) + 1)
        table = tf.cast(layer.embeddings.value, tf.float64).numpy()
        rt = tf.RaggedTensor.from_row_lengths(tf.constant(ids), lengths)
        w = rt.with_values(tf.constant(weights, dtype)) if weighted else None
        got = tf.cast(layer(rt, weights=w), tf.float64).numpy()
        bags = np.split(ids, np.cumsum(lengths)[:-1])
        ws = (np.split(tf.cast(w.values, tf.float64).numpy(),
                       np.cumsum(lengths)[:-1]) if weighted else None)
        expected = reference_bags(table, bags, combiner, ws)
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol,
                                   err_msg=f"seed {seed}")


def torch_known_example(dtype, combiner="sum"):
    """PyTorch's `_test_EmbeddingBag` example: 5 bags, 3 of them empty."""
    layer = RaggedEmbeddingBag(5, 2, combiner, dtype=dtype)
    layer.build()
    layer.embeddings.assign(np.arange(1, 11).reshape(5, 2))
    ids = tf.RaggedTensor.from_row_splits(
        tf.constant([3, 1, 1, 1, 4, 0], tf.int64), [0, 0, 3, 3, 6, 6])
    return layer, ids


@pytest.mark.parametrize("dtype", ("float16", "bfloat16", "float32"))
def test_torch_per_sample_weights_and_offsets(dtype):
    """torch's test_EmbeddingBag_per_sample_weights_and_offsets ("sum").

    Its tolerance `dtype2prec_DONTUSE`: atol 1e-2 for float16, 1e-1 for
    bfloat16 (rtol 0): rounding every product and partial sum to the table
    dtype, as the layer used to, misses it (25.625 instead of 25.5).
    """
    atol = {"float16": 1e-2, "bfloat16": 1e-1, "float32": 1e-5}[dtype]
    layer, ids = torch_known_example(dtype)
    table = np.arange(1, 11).reshape(5, 2).astype(np.float64)
    for seed in range(30):
        w = tf.cast(np.random.default_rng(seed).normal(size=6), dtype)
        got = layer(ids, weights=ids.with_values(w))
        w64 = tf.cast(w, tf.float64).numpy()
        expected = np.zeros((5, 2))
        expected[1] = (table[[3, 1, 1]] * w64[:3, None]).sum(0)
        expected[3] = (table[[1, 4, 0]] * w64[3:, None]).sum(0)
        np.testing.assert_allclose(tf.cast(got, tf.float64).numpy(),
                                   expected, atol=atol, rtol=0,
                                   err_msg=f"seed {seed}")


@pytest.mark.parametrize("mode", ("eager", "graph"))
@pytest.mark.parametrize("combiner", ("sum", "mean", "max"))
def test_torch_known_example_values_and_gradient(combiner, mode):
    """torch's `_test_EmbeddingBag`: outputs and the table gradient."""
    layer, ids = torch_known_example("float64", combiner)
    grad_output = tf.constant(
        [[99, 99], [1, 2], [99, 99], [3, 4], [99, 99]], tf.float64)

    def grad():
        with tf.GradientTape() as tape:
            out = layer(ids)
            loss = tf.reduce_sum(out * grad_output)
        return out, tf.convert_to_tensor(
            tape.gradient(loss, layer.embeddings.value))

    out, g = grad() if mode == "eager" else tf.function(grad)()
    denominator = 3 if combiner == "mean" else 1
    if combiner == "max":
        expected = [[0, 0], [7, 8], [0, 0], [9, 10], [0, 0]]
        expected_grad = [[0, 0], [0, 0], [0, 0], [1, 2], [3, 4]]
    else:
        expected = np.array([[0, 0], [13, 16], [0, 0], [13, 16], [0, 0]])
        expected = expected / denominator
        expected_grad = np.array(
            [[3, 4], [5, 8], [0, 0], [1, 2], [3, 4]]) / denominator
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), expected_grad, rtol=1e-12)


def tf_safe_lookup_ids_and_weights(rank):
    """TF's `_ids_and_weights_2d` / `_3d`: one test case per bag.

    2d rows (3d: indices (0,0), (0,1), (0,2), (1,0), (1,1), (1,2)): several
    valid ids and one invalid id; only invalid ids; no ids; one id; only
    ids with weights <= 0 (3d adds a last bag with no ids).
    """
    ids = [0, 1, -1, -1, 2, 0, 1]
    weights = [1.0, 2.0, 1.0, 1.0, 3.0, 0.0, -0.5]
    if rank == 2:
        indices = [[0, 0], [0, 1], [0, 2], [1, 0], [3, 0], [4, 0], [4, 1]]
        shape = [5, 4]
    else:
        indices = [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [1, 0, 0],
                   [1, 1, 0], [1, 1, 1]]
        shape = [2, 3, 4]
    sparse_ids = tf.SparseTensor(indices, tf.constant(ids, tf.int64), shape)
    sparse_weights = tf.SparseTensor(indices, weights, shape)
    return sparse_ids, sparse_weights


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rank", (2, 3))
def test_tf_safe_embedding_lookup_sparse_return_zero_vector(rank, mode):
    """TF's test_safe_embedding_lookup_sparse_return_zero_vector (+ 3d)."""
    layer = RaggedEmbeddingBag(4, 4, "mean", invalid_ids="ignore",
                               nonpositive_weights="ignore",
                               embeddings_initializer="normal")
    sparse_ids, sparse_weights = tf_safe_lookup_ids_and_weights(rank)
    got = run_in_mode(layer, mode, sparse_ids, weights=sparse_weights)
    e = table_of(layer)
    zero = np.zeros(4)
    expected = [(1.0 * e[0] + 2.0 * e[1]) / 3.0, zero, zero, e[2], zero]
    if rank == 3:
        expected = np.reshape(expected + [zero], (2, 3, 4))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    # It is what TF's op gives on the same inputs.
    if rank == 2:
        np.testing.assert_allclose(
            got.numpy(),
            tf.nn.safe_embedding_lookup_sparse(
                layer.embeddings.value, sparse_ids, sparse_weights).numpy(),
            rtol=1e-6, atol=1e-7)


def test_nonpositive_weights_are_kept_by_default():
    layer = RaggedEmbeddingBag(3, 2, "mean", embeddings_initializer="normal")
    ids = tf.ragged.constant([[0, 1]], dtype=tf.int64)
    got = layer(ids, weights=tf.ragged.constant([[0.0, -0.5]]))
    np.testing.assert_allclose(got.numpy()[0], table_of(layer)[1], rtol=1e-6)


@pytest.mark.parametrize("mode", ("eager", "graph"))
def test_tf_incompatible_shapes_raise_naming_weights(mode):
    """TF's testIncompatibleShapes (EmbeddingLookupSparseTest).

    Ids at 3 sparse indices, weights at 2: TF raises ValueError. The layer
    used to fail with `Incompatible shapes: [3,2] vs. [2,2] [Op:Equal]`.
    """
    sp_ids = tf.SparseTensor([[0, 0], [0, 1], [1, 0]],
                             tf.constant([0, 1, 2], tf.int64), [2, 2])
    sp_weights = tf.SparseTensor([[0, 0], [0, 1]], [12.0, 5.0], [1, 2])
    layer = RaggedEmbeddingBag(10, 2, "mean")
    error = ValueError if mode == "eager" else (
        ValueError, tf.errors.InvalidArgumentError)
    with pytest.raises(error, match="`weights` must have the same indices"):
        run_in_mode(layer, mode, sp_ids, weights=sp_weights)


@pytest.mark.parametrize("mode", ("eager", "graph"))
def test_ragged_weights_with_other_number_of_bags_raise_naming_weights(mode):
    layer = RaggedEmbeddingBag(10, 2)
    ids = tf.ragged.constant([[1, 2], [3], []], dtype=tf.int64)
    weights = tf.ragged.constant([[1.0, 2.0], [3.0]])
    error = ValueError if mode == "eager" else (
        ValueError, tf.errors.InvalidArgumentError)
    with pytest.raises(error, match="`weights` must have the same row splits"):
        run_in_mode(layer, mode, ids, weights=weights)


def renormalized_sum_gradient(table, ids, max_norm):
    """NumPy: d/dtable of sum(clip_by_norm(table[ids])), the chain rule."""
    grad = np.zeros_like(table, dtype=np.float64)
    for i in ids:
        x = table[i].astype(np.float64)
        norm = np.linalg.norm(x)
        if norm <= max_norm:
            grad[i] += 1.0
        else:
            # d(c x / |x|)/dx = c/|x| (I - x x^T / |x|^2), applied to ones.
            grad[i] += max_norm / norm * (1.0 - x * x.sum() / norm**2)
    return grad


@pytest.mark.parametrize("mode", ("eager", "graph", "xla"))
def test_max_norm_gradient_goes_through_the_renormalization(mode):
    """torch's test_embedding_max_norm_backward, with the layer's semantics.

    torch renormalizes the stored rows in place and gets the gradient of an
    un-renormalized lookup: one per occurrence, [1, 1, 2, 0] per row. The
    layer leaves the table alone and differentiates what it computes (as
    `tf.nn.embedding_lookup(max_norm=...)`); checked against the analytic
    Jacobian and against TF's op.
    """
    rng = np.random.default_rng(0)
    table = (rng.normal(size=(4, 4)) * 2).astype("float32")
    table[3] = [0.1, 0.2, 0.0, 0.1]  # One row under max_norm.
    layer = RaggedEmbeddingBag(4, 4, "sum", max_norm=1.0)
    layer.build()
    layer.embeddings.assign(table)
    ids = tf.ragged.constant([[0, 1], [2, 2, 3]], dtype=tf.int64)

    def grad():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids))
        return tf.convert_to_tensor(
            tape.gradient(loss, layer.embeddings.value))

    g = grad() if mode == "eager" else tf.function(
        grad, jit_compile=mode == "xla")()
    expected = renormalized_sum_gradient(table, [0, 1, 2, 2, 3], 1.0)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-5, atol=1e-6)
    torch_like = np.array([1.0, 1.0, 2.0, 1.0])[:, None] * np.ones(4)
    assert not np.allclose(g.numpy()[:3], torch_like[:3])
    constant = tf.constant(table)
    with tf.GradientTape() as tape:
        tape.watch(constant)
        loss = tf.reduce_sum(tf.nn.embedding_lookup(
            constant, [0, 1, 2, 2, 3], max_norm=1.0))
    np.testing.assert_allclose(
        g.numpy(), tf.convert_to_tensor(tape.gradient(loss, constant)),
        rtol=1e-5, atol=1e-6)


def test_issue_example_max_norm_gradient():
    layer = RaggedEmbeddingBag(1, 2, "sum", max_norm=3.0)
    layer.build()
    layer.embeddings.assign([[3.0, 4.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.ragged.constant([[0]])))
    g = tf.convert_to_tensor(tape.gradient(loss, layer.embeddings.value))
    np.testing.assert_allclose(g.numpy(), [[0.096, -0.072]], rtol=1e-5)


def test_symbolic_call_without_keras_tensor_ragged_rank(monkeypatch):
    """Keras < 3.11: `KerasTensor` has `ragged=` but no `ragged_rank=`."""
    from keras_research.layers import ragged_embedding_bag as module

    real = keras.KerasTensor

    def keras_tensor_3_10(shape, dtype="float32", sparse=False,
                          ragged=False, **kwargs):
        if "ragged_rank" in kwargs:
            raise TypeError("KerasTensor.__init__() got an unexpected "
                            "keyword argument 'ragged_rank'")
        return real(shape, dtype=dtype, sparse=sparse, ragged=ragged,
                    **kwargs)

    monkeypatch.setattr(module, "_HAS_RAGGED_RANK", False)
    monkeypatch.setattr(module.keras, "KerasTensor", keras_tensor_3_10)
    layer = RaggedEmbeddingBag(10, 4)
    dense = layer.compute_output_spec(real((None, None), "int64",
                                           ragged=True))
    assert dense.shape == (None, 4) and not dense.ragged
    nested = layer.compute_output_spec(real((None, None, None), "int64",
                                            ragged=True))
    assert nested.shape == (None, None, 4) and nested.ragged
