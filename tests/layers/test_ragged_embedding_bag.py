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


@pytest.mark.parametrize("combiner", COMBINERS)
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
        # Keras 3.15's fit under MirroredStrategy cannot take ragged batches
        # (see test_mirrored_strategy_ragged_custom_loop).
        run_distribution_check=False,
    )


@pytest.mark.parametrize("combiner", ("mean", "max"))
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
