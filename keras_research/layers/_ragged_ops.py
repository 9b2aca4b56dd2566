"""Bag reductions behind `RaggedEmbeddingBag` (private).

Every function takes flat `ids` (int32 or int64, shape `(n,)`), the bag of
each id (`segment_ids`, shape `(n,)`), the number of bags and optional
per-id `weights`, and returns `(num_bags, dim)` in the accumulation dtype
(`accumulation_dtype(table.dtype)`). The table gradient is always a
`tf.IndexedSlices` with one row per *distinct* id: Keras's Adam-family
optimizers square `IndexedSlices` values row by row, which is wrong when an
index repeats.

Two paths:

- `reduce_bags` (eager and graph): `segment_ids` sorted, ids already
  filtered. Unweighted `"sum"`/`"mean"`/`"sqrtn"` use one fused TF kernel
  (`tf.sparse.segment_*(..., sparse_gradient=True)`) whose gradient
  de-duplicates the ids itself. Weighted bags gather each distinct row once
  (`tf.unique`) and reduce with one sparse x dense product, whose gradient
  with respect to those rows is dense. `"max"` and `max_norm` gather
  distinct rows too.
- `reduce_bags_masked` (XLA): no sorted-segment, sparse or `tf.unique`
  kernel exists, so ids to drop are masked instead of removed, distinct ids
  come from a sort (`unique_static`) and bags are reduced with
  `tf.math.unsorted_segment_sum` / `unsorted_segment_max`.
"""

import inspect
import typing

import numpy as np
import tensorflow as tf

COMBINERS = ("sum", "mean", "sqrtn", "max")

# `sparse_gradient` exists in every TF this package supports (2.16+); it came
# with TF 2.15. Without it, the distinct-rows path gives the same results.
HAS_SPARSE_GRADIENT = (
    "sparse_gradient" in inspect.signature(tf.sparse.segment_sum).parameters
)

_FUSED = {
    "sum": tf.sparse.segment_sum,
    "mean": tf.sparse.segment_mean,
    "sqrtn": tf.sparse.segment_sqrt_n,
}


def accumulation_dtype(dtype):
    """float32 for float16/bfloat16 tables (as torch and TF's lookups)."""
    dtype = tf.as_dtype(dtype)
    if dtype in (tf.float16, tf.bfloat16):
        return tf.float32
    return dtype


def read_table(table):
    """Reads a variable without the copy TF makes after sparse updates.

    A resource variable that an optimizer updated sparsely is in
    copy-on-read mode: a plain read copies the whole table.
    `tf.nn.embedding_lookup_sparse` reads with `read_value_no_copy` for the
    same reason. Distributed variables and tensors are read as usual.
    """
    if hasattr(type(table), "read_value_no_copy"):
        return table.read_value_no_copy()
    return tf.convert_to_tensor(table)


def segment_ids_from_splits(row_splits, num_values):
    """Value-to-row ids from `row_splits`, with a static output shape.

    `RaggedTensor.value_rowids()` uses `tf.repeat`, whose output size XLA
    cannot infer; counting row starts and taking a cumulative sum gives the
    same ids with the shape of the values.
    """
    starts = row_splits[1:-1]
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(starts), starts, num_values + 1
    )
    return tf.cumsum(counts[:num_values])


def unique_static(ids):
    """`tf.unique` with static shapes, for XLA.

    Returns `(slots, position)`: `slots` has the shape of `ids` and holds
    each distinct id once, then zeros; `ids == tf.gather(slots, position)`.
    Gathering the table at `slots` gives a gradient whose repeated indices
    (only the padding zeros) carry zero rows.
    """
    num_values = tf.size(ids)
    order = tf.argsort(ids, stable=True)
    sorted_ids = tf.gather(ids, order)
    is_new = tf.concat(
        [
            tf.ones([1], tf.int32),
            tf.cast(sorted_ids[1:] != sorted_ids[:-1], tf.int32),
        ],
        axis=0,
    )[:num_values]
    sorted_position = tf.cumsum(is_new) - 1
    slots = tf.math.unsorted_segment_max(
        sorted_ids, sorted_position, num_values
    )
    occupied = tf.range(num_values) <= sorted_position[-1:]
    slots = tf.where(occupied, slots, tf.zeros_like(slots))
    position = tf.scatter_nd(order[:, None], sorted_position, [num_values])
    return slots, position


def distinct_rows(table, ids, max_norm=None, xla=False):
    """Gathers each distinct row once, renormalized, in accumulation dtype.

    Returns `(rows, position)` with `ids[k]`'s row at `rows[position[k]]`.
    `max_norm` rescales rows whose L2 norm exceeds it to norm `max_norm`
    (as `tf.nn.embedding_lookup(max_norm=...)`); the gradient goes through
    that rescaling.
    """
    if xla:
        unique_ids, position = unique_static(ids)
    else:
        unique_ids, position = tf.unique(ids, out_idx=tf.int64)
    rows = tf.gather(table, unique_ids)
    rows = tf.cast(rows, accumulation_dtype(rows.dtype))
    if max_norm is not None:
        rows = tf.clip_by_norm(rows, max_norm, axes=[1])
    return rows, position


def _divisor(combiner, weights, segment_ids, num_bags, counts):
    """The per-bag divisor of "mean" and "sqrtn" (`None` for "sum")."""
    if combiner == "sum":
        return None
    if weights is None:
        divisor = counts
    elif combiner == "mean":
        divisor = tf.math.unsorted_segment_sum(weights, segment_ids, num_bags)
    else:
        divisor = tf.math.unsorted_segment_sum(
            weights * weights, segment_ids, num_bags
        )
    return tf.sqrt(divisor) if combiner == "sqrtn" else divisor


def _divide(total, divisor):
    # Divide (never multiply by a rounded reciprocal); empty bags and bags
    # whose weights sum to zero give zeros.
    if divisor is None:
        return total
    return tf.math.divide_no_nan(total, divisor[:, None])


def reduce_bags(
    table, ids, segment_ids, num_bags, combiner, weights=None, max_norm=None
):
    """Eager/graph path: sorted `segment_ids`, every id kept and valid."""
    num_bags = tf.cast(num_bags, tf.int32)
    acc = accumulation_dtype(table.dtype)
    if weights is not None:
        weights = tf.cast(weights, acc)
    if combiner != "max" and weights is None and max_norm is None:
        if HAS_SPARSE_GRADIENT:
            # One kernel forward (gather + segment reduction); the backward
            # kernel sorts the ids and sums one gradient row per distinct id.
            # It accumulates float16/bfloat16 in float32.
            reduced = _FUSED[combiner](
                read_table(table),
                ids,
                segment_ids,
                num_segments=num_bags,
                sparse_gradient=True,
            )
            return tf.cast(reduced, acc)
        rows, position = distinct_rows(table, ids)
        return _FUSED[combiner](
            rows, position, segment_ids, num_segments=num_bags
        )

    rows, position = distinct_rows(table, ids, max_norm)
    if combiner == "max":
        vectors = tf.gather(rows, position)
        if weights is not None:
            vectors = vectors * weights[:, None]
        reduced = tf.math.segment_max(vectors, segment_ids)
        # Sorted segment ops stop at the last non-empty bag: pad the rest.
        missing = num_bags - tf.shape(reduced, out_type=tf.int32)[0]
        reduced = tf.pad(reduced, [[0, missing], [0, 0]])
        counts = tf.math.bincount(
            tf.cast(segment_ids, tf.int32),
            minlength=num_bags,
            maxlength=num_bags,
        )
        return tf.where(tf.greater(counts, 0)[:, None], reduced, 0.0)
    if weights is None:
        return _FUSED[combiner](
            rows, position, segment_ids, num_segments=num_bags
        )
    # Weighted: one sparse (bags x distinct ids) x dense (distinct rows)
    # product. Its gradient with respect to the rows is dense, so the table
    # gradient has one row per distinct id, and no (ids, dim) tensor is
    # materialized in either direction.
    matrix = tf.SparseTensor(
        tf.stack([tf.cast(segment_ids, tf.int64), position], axis=1),
        weights,
        tf.stack(
            [tf.cast(num_bags, tf.int64), tf.shape(rows, out_type=tf.int64)[0]]
        ),
    )
    total = tf.sparse.sparse_dense_matmul(matrix, rows)
    return _divide(
        total, _divisor(combiner, weights, segment_ids, num_bags, None)
    )


def reduce_bags_masked(
    table,
    ids,
    segment_ids,
    num_bags,
    combiner,
    weights=None,
    keep=None,
    max_norm=None,
):
    """XLA path: ids where `keep` is False are masked, not removed."""
    num_bags = tf.cast(num_bags, tf.int32)
    acc = accumulation_dtype(table.dtype)
    if weights is not None:
        weights = tf.cast(weights, acc)
    if keep is not None:
        ids = tf.where(keep, ids, tf.zeros_like(ids))
        mask = tf.cast(keep, acc)
        weights = mask if weights is None else weights * mask
    rows, position = distinct_rows(table, ids, max_norm, xla=True)
    vectors = tf.gather(rows, position)
    if weights is not None:
        vectors = vectors * weights[:, None]
    ones = (
        tf.ones_like(segment_ids) if keep is None else tf.cast(keep, tf.int32)
    )
    counts = tf.math.unsorted_segment_sum(ones, segment_ids, num_bags)
    if combiner == "max":
        if keep is not None:
            vectors = tf.where(keep[:, None], vectors, acc.min)
        reduced = tf.math.unsorted_segment_max(vectors, segment_ids, num_bags)
        return tf.where(tf.greater(counts, 0)[:, None], reduced, 0.0)
    total = tf.math.unsorted_segment_sum(vectors, segment_ids, num_bags)
    divisor = _divisor(
        combiner, weights, segment_ids, num_bags, tf.cast(counts, acc)
    )
    return _divide(total, divisor)


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
