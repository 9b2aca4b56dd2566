"""Input handling behind `RaggedEmbeddingBag` (private).

Turns ragged, sparse and dense ids (and their optional per-id weights) into
flat ids, flat weights and bags (`FlatBags`), checks that the weights have
the ids' structure, and checks the ids' range. The reductions themselves
are in `_ragged_ops.py`.
"""

import typing

import numpy as np
import tensorflow as tf

# ----------------------------------------------------------------------------
# Id checks.


def in_range(ids, input_dim):
    """Whether each id is in `[0, input_dim)`."""
    return tf.logical_and(
        tf.greater_equal(ids, 0), tf.less(ids, tf.cast(input_dim, ids.dtype))
    )


def check_ids(ids, input_dim, padding_id=None):
    """Raises for ids outside `[0, input_dim)`; returns `ids` gated on it.

    `padding_id` is allowed anywhere. Two reductions (smallest and largest
    id) decide, instead of an element-wise test, unless the padding id is
    itself out of range. Eagerly the error is a `ValueError`; in a graph an
    `InvalidArgumentError` from `tf.debugging.Assert`, a host op that raises
    on CPU and GPU alike (a GPU gather alone would return zeros).
    """
    checked = ids
    if padding_id is not None and not 0 <= padding_id < input_dim:
        padding = tf.equal(ids, tf.cast(padding_id, ids.dtype))
        checked = tf.where(padding, tf.zeros_like(ids), ids)
    smallest = tf.reduce_min(checked)
    largest = tf.reduce_max(checked)
    valid = tf.logical_or(
        tf.equal(tf.size(checked), 0),
        tf.logical_and(
            tf.greater_equal(smallest, 0),
            tf.less(largest, tf.cast(input_dim, ids.dtype)),
        ),
    )
    allowed = "" if padding_id is None else f" (or padding_id={padding_id})"
    message = (
        f"RaggedEmbeddingBag: every id must be in [0, input_dim) with "
        f"input_dim={input_dim}{allowed}; pass invalid_ids=\"ignore\" to "
        "drop other ids. Received ids outside that range; smallest and "
        "largest id in the batch:"
    )
    if tf.executing_eagerly():
        if not bool(valid):
            raise ValueError(f"{message} {int(smallest)}, {int(largest)}")
        return ids
    check = tf.debugging.Assert(valid, [message, smallest, largest])
    with tf.control_dependencies([check]):
        return tf.identity(ids)


# ----------------------------------------------------------------------------
# Input forms -> flat ids, flat weights and bags.


class FlatBags(typing.NamedTuple):
    """Flat ids of every bag, and how to put the reduced bags back.

    `segment_ids` (sorted) or `row_splits` gives the bag of each id;
    `restore` maps the `(num_bags, dim)` reduction to the output.
    """

    ids: tf.Tensor
    weights: tf.Tensor | None
    num_bags: tf.Tensor
    segment_ids: tf.Tensor | None
    row_splits: tf.Tensor | None
    restore: typing.Callable


def _summary(tensor):
    return np.array2string(np.asarray(tensor), threshold=12)


def check_same(ids_part, weights_part, what):
    """Checks that `weights_part` equals `ids_part` (splits or indices).

    Raises a `ValueError` naming `weights` when executing eagerly or when
    the static shapes differ; otherwise returns the assertions to run
    before the weights are used (inside a `tf.function` a mismatch raises
    `InvalidArgumentError` with the same message, never a raw shape error).
    """
    message = f"`weights` must have the same {what} as the ids."
    weights_part = tf.cast(weights_part, ids_part.dtype)
    if tf.executing_eagerly():
        if ids_part.shape != weights_part.shape or not bool(
            tf.reduce_all(tf.equal(ids_part, weights_part))
        ):
            raise ValueError(
                f"{message} Received: weights {what}="
                f"{_summary(weights_part)}, ids {what}={_summary(ids_part)}"
            )
        return []
    if not ids_part.shape.is_compatible_with(weights_part.shape):
        raise ValueError(
            f"{message} Received: weights {what} of shape "
            f"{weights_part.shape}, ids {what} of shape {ids_part.shape}"
        )
    # Compare shapes first, so that values are compared only when they can
    # be (an element-wise comparison of different lengths fails with a
    # shape error that does not name `weights`).
    same_shape = tf.debugging.assert_equal(
        tf.shape(ids_part), tf.shape(weights_part), message=message
    )
    with tf.control_dependencies([same_shape]):
        return [
            tf.debugging.assert_equal(ids_part, weights_part, message=message)
        ]


def _flat_weights(weights, checks):
    with tf.control_dependencies(checks):
        return tf.identity(weights)


def flatten_ragged(ids, weights, output_dim):
    """`(batch, [fields or (fields)], (bag))` ragged ids -> `FlatBags`."""
    flat_weights = None
    if weights is not None:
        if not isinstance(weights, tf.RaggedTensor) or (
            weights.ragged_rank != ids.ragged_rank
        ):
            raise ValueError(
                "`weights` must be a tf.RaggedTensor with the same row "
                f"splits as the ids (ragged_rank={ids.ragged_rank}). "
                f"Received: weights={weights!r}"
            )
        checks = []
        for a, b in zip(ids.nested_row_splits, weights.nested_row_splits):
            if a is not b:
                checks += check_same(a, b, "row splits")
        flat_weights = _flat_weights(weights.flat_values, checks)
    inner = ids
    while isinstance(inner.values, tf.RaggedTensor):
        inner = inner.values
    inner_dims = ids.shape[1:-1]

    def restore(combined):
        if ids.ragged_rank == 1:
            return combined
        if all(dim is not None for dim in inner_dims):
            return tf.reshape(
                combined, [-1, *inner_dims.as_list(), output_dim]
            )

        def rebuild(rt):
            if rt.ragged_rank == 1:
                return combined
            return rt.with_values(rebuild(rt.values))

        return rebuild(ids)

    return FlatBags(
        inner.values, flat_weights, inner.nrows(), None, inner.row_splits,
        restore,
    )


def flatten_sparse(ids, weights, output_dim):
    """`(batch, ..., max_bag)` `tf.SparseTensor` ids -> `FlatBags`."""
    flat_weights = None
    if weights is not None:
        if not isinstance(weights, tf.SparseTensor):
            raise ValueError(
                "`weights` must be a tf.SparseTensor with the same "
                "indices as the ids. "
                f"Received: weights of type {type(weights).__name__}"
            )
        checks = check_same(ids.indices, weights.indices, "indices")
        flat_weights = _flat_weights(weights.values, checks)
    lead_shape = ids.dense_shape[:-1]
    # Row-major bag index of each value from its leading indices.
    strides = tf.math.cumprod(lead_shape, exclusive=True, reverse=True)
    segment_ids = tf.reduce_sum(ids.indices[:, :-1] * strides, axis=1)
    static_lead = ids.shape[:-1].as_list()

    def restore(combined):
        out_shape = tf.concat(
            [tf.cast(lead_shape, tf.int32), [output_dim]], axis=0
        )
        outputs = tf.reshape(combined, out_shape)
        outputs.set_shape(static_lead + [output_dim])
        return outputs

    return FlatBags(
        ids.values, flat_weights, tf.reduce_prod(lead_shape), segment_ids,
        None, restore,
    )


def flatten_dense(ids, weights, output_dim):
    """`(batch, ..., max_bag)` dense (padded) ids -> `FlatBags`."""
    shape = tf.shape(ids)
    flat_weights = None
    if weights is not None:
        if isinstance(weights, (tf.RaggedTensor, tf.SparseTensor)):
            raise ValueError(
                "`weights` must be a dense tensor of the same shape as "
                "the dense ids. "
                f"Received: weights of type {type(weights).__name__}"
            )
        weights = tf.convert_to_tensor(weights)
        if not weights.shape.is_compatible_with(ids.shape):
            raise ValueError(
                "`weights` must have the same shape as the ids. "
                f"Received: weights.shape={weights.shape}, "
                f"inputs.shape={ids.shape}"
            )
        checks = check_same(shape, tf.shape(weights), "shape")
        flat_weights = _flat_weights(tf.reshape(weights, [-1]), checks)
    flat_ids = tf.reshape(ids, [-1])
    segment_ids = tf.range(tf.size(flat_ids)) // tf.maximum(shape[-1], 1)

    def restore(combined):
        out_shape = tf.concat([shape[:-1], [output_dim]], axis=0)
        outputs = tf.reshape(combined, out_shape)
        outputs.set_shape(ids.shape[:-1].as_list() + [output_dim])
        return outputs

    return FlatBags(
        flat_ids, flat_weights, tf.reduce_prod(shape[:-1]), segment_ids,
        None, restore,
    )
