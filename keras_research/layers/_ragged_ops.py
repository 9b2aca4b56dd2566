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
