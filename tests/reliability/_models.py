"""Models and synthetic ragged data shared by the reliability checks.

Importable both from the tests and from the worker scripts this package
launches as subprocesses (which run with the repository root on sys.path),
so it must not import pytest or the test configuration.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

import keras_research

VOCAB = 500
EMBED_DIM = 16
HIDDEN = 32
RANK = 4
NUM_CLASSES = 3


def ragged_batches(num_batches, batch_size, *, seed=0, max_len=12,
                   vocab=VOCAB, num_classes=NUM_CLASSES, min_len=0):
    """Deterministic list of `(ids, labels)` global batches.

    `ids` is an int64 `tf.RaggedTensor` `(batch_size, (bag))` whose bag
    lengths vary in `[min_len, max_len]` (empty bags included when
    `min_len=0`); labels are int32 classes that depend on the ids, so
    models can learn them.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_batches):
        lengths = rng.integers(min_len, max_len + 1, size=batch_size)
        values = rng.integers(0, vocab, size=int(lengths.sum()))
        ids = tf.RaggedTensor.from_row_lengths(
            tf.constant(values, tf.int64), tf.constant(lengths, tf.int64)
        )
        rows = np.repeat(np.arange(batch_size), lengths)
        sums = np.bincount(rows, weights=values, minlength=batch_size)
        labels = (sums.astype("int64") % num_classes).astype("int32")
        out.append((ids, tf.constant(labels)))
    return out


def dataset(batches, *, shard=None):
    """A `tf.data.Dataset` yielding the given `(ids, labels)` batches.

    With `shard=(index, count)`, yields only the `index`-th of `count`
    equal row slices of every batch: what worker `index` of `count`
    computes of each global batch.
    """
    ids = tf.concat([b[0] for b in batches], axis=0)
    labels = tf.concat([b[1] for b in batches], axis=0)
    batch_size = int(batches[0][1].shape[0])
    ds = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(batch_size)
    if shard is not None:
        index, count = shard
        if batch_size % count:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by count={count}"
            )
        size = batch_size // count
        lo, hi = index * size, (index + 1) * size
        ds = ds.map(lambda x, y: (x[lo:hi], y[lo:hi]))
    return ds


def text_model(
    *, seed=1, jacobian_weight=0.01, learning_rate=1e-2, fused_kernel=False
):
    """The example-style text classifier, compiled, and its callbacks.

    RaggedEmbeddingBag(mean) -> FactorizedDense(relu) -> Dense head,
    keras_research Adam, JacobianRegularizer taken with respect to the
    embedding layer's output. Returns `(model, callbacks)`. With
    `fused_kernel=True`, every variable goes through TF's native Adam
    kernel (these are all under its size threshold, so it is lowered).
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(None,), dtype="int64", ragged=True,
                         name="ids")
    x = keras_research.layers.RaggedEmbeddingBag(
        VOCAB, EMBED_DIM, "mean", name="embedding"
    )(inputs)
    x = keras_research.layers.FactorizedDense(
        HIDDEN, rank=RANK, activation="relu", name="hidden"
    )(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="head")(x)
    model = keras.Model(inputs, outputs, name="text_classifier")
    optimizer = keras_research.optimizers.Adam(
        learning_rate, fused_kernel=fused_kernel
    )
    if fused_kernel:
        optimizer._op_by_op_below = 0
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    callbacks = [
        # "exact": random projections are drawn per replica by design, so
        # only the exact penalty is the same on one device and on several.
        keras_research.callbacks.JacobianRegularizer(
            jacobian_weight, wrt="embedding", method="exact"
        )
    ]
    return model, callbacks


def scope_model(*, seed=2, learning_rate=1e-2):
    """A model built under `factorized_scope`: Embedding + Dense layers.

    Plain Keras layers whose matrix weights the scope creates as low-rank
    factors; trained with keras_research Adan on ragged ids padded to dense
    (the scope's Embedding path). Returns `(model, [])`.
    """
    keras.utils.set_random_seed(seed)
    with keras_research.factorized_scope(rank=RANK, min_size=0):
        inputs = keras.Input(shape=(None,), dtype="int64", ragged=True,
                             name="ids")
        x = keras_research.layers.RaggedEmbeddingBag(
            VOCAB, EMBED_DIM, "sum", name="embedding"
        )(inputs)
        x = keras.layers.Dense(
            HIDDEN, activation=keras_research.activations.mish,
            name="hidden",
        )(x)
        x = keras.layers.Dense(HIDDEN, activation="tanh", name="hidden2")(x)
        outputs = keras.layers.Dense(NUM_CLASSES, name="head")(x)
        model = keras.Model(inputs, outputs, name="scope_model")
    model.compile(
        optimizer=keras_research.optimizers.Adan(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, []


MODELS = {
    "text": text_model,
    "text-fused": functools.partial(text_model, fused_kernel=True),
    "scope": scope_model,
}


def weights_of(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]
