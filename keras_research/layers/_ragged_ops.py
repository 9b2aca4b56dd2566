"""Bag reductions behind `RaggedEmbeddingBag` (private).

Every function takes flat `ids` (int32 or int64, shape `(n,)`), the bag of
each id (`segment_ids`, shape `(n,)`), the number of bags and optional
per-id `weights`, and returns `(num_bags, dim)` in the accumulation dtype
(`accumulation_dtype(table.dtype)`). The table gradient is always a
`tf.IndexedSlices` with one row per *distinct* id: Keras's Adam-family
optimizers square `IndexedSlices` values row by row, which is wrong when an
index repeats.

Two paths:

- `reduce_bags` (eager and graph): ids already filtered, `segment_ids`
  sorted. The ids are split into `NUM_SHARDS` groups by `id %
  NUM_SHARDS` (order kept, so each group's `segment_ids` stay sorted).
  Unweighted float32/float64 groups run one fused kernel each way
  (`tf.sparse.segment_sum(..., sparse_gradient=True)`, whose backward sums
  one gradient row per distinct id); the other groups gather each of their
  distinct rows once (`tf.unique`) and reduce their bags with one sparse
  (bags x distinct ids) x dense (distinct rows) product, whose gradient with
  respect to those rows is dense. The groups' partial sums are added (`max`:
  their maximum) and divided once. TensorFlow's segment, unique and sparse
  kernels run on one thread each: independent groups run in parallel on the
  inter-op thread pool, and each group's smaller working set stays in
  cache. A group's distinct ids are distinct from every other group's, so
  the table gradient (the groups' `IndexedSlices`, concatenated by the
  tape) still repeats no index.
- `reduce_bags_masked` (XLA): no sorted-segment, sparse or `tf.unique`
  kernel exists, so ids to drop are masked instead of removed, distinct ids
  come from a sort (`unique_static`) and bags are reduced with
  `tf.math.unsorted_segment_sum` / `unsorted_segment_max`.
"""

import tensorflow as tf

COMBINERS = ("sum", "mean", "sqrtn", "max")

# Groups of ids reduced independently on the graph path. 8 was the fastest
# of 1-32 on 2 cores for 5k-170k ids per batch (benchmarks/RESULTS.md),
# also on one core (smaller working sets), and costs ~0.2 ms per call on
# batches of a few hundred ids.
NUM_SHARDS = 8


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


def shard_by_id(ids, segment_ids, weights, num_shards):
    """Splits `(ids, segment_ids, weights)` into groups by `id % num_shards`.

    Returns a list of `(ids, segment_ids, weights)` triples, one per group
    (`weights` may be `None`); equal ids always land in the same group.
    """
    if num_shards == 1:
        return [(ids, segment_ids, weights)]
    group = tf.cast(tf.math.floormod(ids, num_shards), tf.int32)
    parts = [
        tf.dynamic_partition(ids, group, num_shards),
        tf.dynamic_partition(segment_ids, group, num_shards),
        [None] * num_shards
        if weights is None
        else tf.dynamic_partition(weights, group, num_shards),
    ]
    return list(zip(*parts))


def _sum_bags(table, ids, segment_ids, num_bags, weights, max_norm):
    """`sum_k w_k e_{i_k}` per bag: distinct rows x a sparse bag matrix."""
    rows, position = distinct_rows(table, ids, max_norm)
    if weights is None:
        weights = tf.ones_like(ids, rows.dtype)
    matrix = tf.SparseTensor(
        tf.stack([tf.cast(segment_ids, tf.int64), position], axis=1),
        weights,
        tf.stack(
            [tf.cast(num_bags, tf.int64), tf.shape(rows, out_type=tf.int64)[0]]
        ),
    )
    return tf.sparse.sparse_dense_matmul(matrix, rows)


def _max_bags(table, ids, segment_ids, num_bags, weights, max_norm):
    """Element-wise max of `w_k e_{i_k}` per bag; empty bags: lowest."""
    rows, position = distinct_rows(table, ids, max_norm)
    vectors = tf.gather(rows, position)
    if weights is not None:
        vectors = vectors * weights[:, None]
    return tf.math.unsorted_segment_max(vectors, segment_ids, num_bags)


def reduce_bags(
    table,
    ids,
    segment_ids,
    num_bags,
    combiner,
    weights=None,
    max_norm=None,
    num_shards=NUM_SHARDS,
):
    """Eager/graph path: every id kept and valid, `segment_ids` sorted."""
    num_bags = tf.cast(num_bags, tf.int32)
    acc = accumulation_dtype(table.dtype)
    if weights is not None:
        weights = tf.cast(weights, acc)
    table = read_table(table)
    shards = shard_by_id(ids, segment_ids, weights, num_shards)
    # Ids per bag: only `"max"` (empty bags) and unweighted `"mean"` /
    # `"sqrtn"` (the divisor) use them.
    counts = None
    if combiner == "max" or (weights is None and combiner != "sum"):
        counts = tf.math.bincount(
            tf.cast(segment_ids, tf.int32),
            minlength=num_bags,
            maxlength=num_bags,
            dtype=acc,
        )
    if combiner == "max":
        partial = [
            _max_bags(table, i, s, num_bags, w, max_norm) for i, s, w in shards
        ]
        # `reduce_max` splits the gradient between equal maxima, as
        # `segment_max` does within a bag.
        reduced = (
            partial[0]
            if len(partial) == 1
            else tf.reduce_max(tf.stack(partial), axis=0)
        )
        return tf.where(tf.greater(counts, 0)[:, None], reduced, 0.0)
    if weights is None and max_norm is None and acc == table.dtype:
        # One fused kernel each way per group (gather + segment sum; its
        # backward sums one gradient row per distinct id). float16/bfloat16
        # tables take the product below instead, which accumulates the
        # groups in float32.
        partial = [
            tf.sparse.segment_sum(
                table, i, s, num_segments=num_bags, sparse_gradient=True
            )
            for i, s, _ in shards
        ]
    else:
        partial = [
            _sum_bags(table, i, s, num_bags, w, max_norm)
            for i, s, w in shards
        ]
    total = tf.add_n(partial)
    return _divide(
        total, _divisor(combiner, weights, segment_ids, num_bags, counts)
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
