"""RaggedEmbeddingBag: one vector per bag of ids, without padding."""

import numbers

import keras
import tensorflow as tf

from keras_research._export import register
from keras_research._xla import in_xla_context

COMBINERS = ("sum", "mean", "sqrtn", "max")
INVALID_IDS = ("error", "ignore")


def _segment_ids_from_splits(row_splits, num_values):
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


def _unique_static(ids):
    """`tf.unique` with static shapes, for XLA.

    Returns `(slots, position)`: `slots` has the shape of `ids` and holds
    each distinct id once, then zeros; `ids == tf.gather(slots, position)`.
    Gathering the table at `slots` gives a gradient whose repeated indices
    (only the padding zeros) carry zero rows.
    """
    order = tf.argsort(ids, stable=True)
    sorted_ids = tf.gather(ids, order)
    is_new = tf.concat(
        [
            tf.ones([1], tf.int32),
            tf.cast(sorted_ids[1:] != sorted_ids[:-1], tf.int32),
        ],
        axis=0,
    )[: tf.size(ids)]
    sorted_position = tf.cumsum(is_new) - 1
    num_values = tf.size(ids)
    slots = tf.math.unsorted_segment_max(
        sorted_ids, sorted_position, num_values
    )
    occupied = tf.range(num_values) <= sorted_position[-1:]
    slots = tf.where(occupied, slots, tf.zeros_like(slots))
    position = tf.scatter_nd(order[:, None], sorted_position, [num_values])
    return slots, position


@register
class RaggedEmbeddingBag(keras.layers.Layer):
    """Embeds bags of ids and reduces each bag to one vector.

    The Keras counterpart of `torch.nn.EmbeddingBag` and of TensorFlow's
    `tf.nn.safe_embedding_lookup_sparse`, working on `tf.RaggedTensor` ids
    directly: the ids of all bags are looked up with one gather over the
    flat values and reduced per bag, so time and memory grow with the number
    of ids rather than with `batch * longest_bag` as with padding, an
    `Embedding` layer and a masked pooling.

    With ids `i_1..i_n` in a bag, per-id weights `w_1..w_n` (all `1` when
    no `weights` are passed) and rows `e_i` of the table, the combiners are:

    - `"sum"`: `sum_k w_k e_{i_k}`.
    - `"mean"`: `sum_k w_k e_{i_k} / sum_k w_k` (as
      `tf.nn.safe_embedding_lookup_sparse`; the plain mean without weights).
    - `"sqrtn"`: `sum_k w_k e_{i_k} / sqrt(sum_k w_k^2)`.
    - `"max"`: the element-wise maximum of `w_k e_{i_k}` over the bag
      (as `torch.nn.EmbeddingBag(mode="max")`).

    An empty bag (or a bag whose weights sum to zero for `"mean"` and
    `"sqrtn"`) gives a zero vector for every combiner, never `NaN`. Ids
    equal to `padding_id` are removed before reduction: they add nothing and
    are not counted by `"mean"` or `"sqrtn"`.

    The gradient with respect to the table is a `tf.IndexedSlices` with one
    row per *distinct* looked-up id, never a dense table-sized tensor. One
    row per distinct id (rather than per occurrence, as `tf.gather` gives)
    matters: Keras 3's Adam-family optimizers square `IndexedSlices` values
    row by row, which is wrong for repeated indices, and densifying the
    smaller gradient made an Adam step ~2.3x faster. A regularizer on the
    table makes its gradient dense, as for `keras.layers.Embedding`. The
    table is always kept and reduced in the variable dtype (float32 under
    mixed precision); the output is cast to the compute dtype.

    Execution paths, chosen from measurements on CPU (see
    `benchmarks/RESULTS.md`, `benchmarks/ragged_embedding_bag_benchmark.py`):

    - Without XLA, each distinct row is gathered once (`tf.unique`);
      unweighted `"sum"`, `"mean"` and `"sqrtn"` then reduce with the fused
      `tf.sparse.segment_sum` / `segment_mean` / `segment_sqrt_n` over those
      rows (no `(ids, output_dim)` intermediate), the others gather back
      per id and reduce with `tf.math.segment_sum` / `segment_max`. Forward
      + backward alone this is ~2x slower than a bare `tf.gather` +
      `tf.math.segment_mean` (whose per-id gradient Adam mishandles) and on
      par with `tf.nn.safe_embedding_lookup_sparse`, but a whole Adam
      training step is ~2-3x faster than with the per-id gradient. Padding
      and ignored ids are removed first.
    - Under XLA (`jit_compile=True`) the sorted and sparse segment ops and
      `tf.unique` have no kernel: the layer masks padding instead of
      removing it, deduplicates ids with static shapes (sort + cumsum) and
      reduces with `tf.math.unsorted_segment_sum` / `unsorted_segment_max`.
      On CPU the sort makes this ~3x slower than a bare XLA gather +
      `unsorted_segment_sum` and a `fit` step ~1.3x slower than without
      XLA: on CPU, leave `jit_compile` off for models built on this layer.

    Both paths give the same values. Under XLA every distinct number of ids
    in a batch compiles a new program; pad the ids in the input pipeline to
    a few bucketed lengths (with `padding_id`) when using `jit_compile=True`
    on ragged data, or leave `jit_compile` off.

    Distribution: the layer runs under `tf.distribute.MirroredStrategy`
    with ragged, sparse or dense ids, in `fit` (Keras 3.15 needs the fix
    that importing `keras_research` applies, see `keras_research/_compat.py`)
    and in custom loops.

    Args:
        input_dim: int. Size of the vocabulary: ids are in
            `[0, input_dim)`.
        output_dim: int. Dimension of the embedding vectors.
        combiner: str. How the bag is reduced: `"sum"`, `"mean"`,
            `"sqrtn"` or `"max"`. Defaults to `"mean"`.
        embeddings_initializer: Initializer for the table. Defaults to
            `"uniform"`.
        embeddings_regularizer: Regularizer for the table. Defaults to
            `None`.
        embeddings_constraint: Constraint for the table. Defaults to `None`.
        max_norm: float. If set, looked-up rows with an L2 norm larger than
            `max_norm` are rescaled to norm `max_norm` before reduction (as
            `tf.nn.embedding_lookup(max_norm=...)`; unlike torch, the stored
            table is not modified). Defaults to `None`.
        padding_id: int. Id marking padding; ignored in every bag.
            Defaults to `None` (every id counts).
        invalid_ids: str. What to do with ids outside `[0, input_dim)`
            (other than `padding_id`): `"error"` raises an
            `InvalidArgumentError` (`ValueError` when executing eagerly) on
            every device, although `tf.gather` alone would return zeros on
            GPU; `"ignore"` drops them like
            `tf.nn.safe_embedding_lookup_sparse`. XLA programs cannot raise,
            so under `jit_compile=True` the `"error"` mode instead sets
            the output of every bag holding an invalid id to `NaN` (so the
            loss becomes `NaN`). Defaults to `"error"`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Integer ids (int32 or int64), as a `tf.RaggedTensor` of
            shape `(batch, (bag))`, `(batch, fields, (bag))` or
            `(batch, (fields), (bag))`; a `tf.SparseTensor` of shape
            `(batch, ..., max_bag)` in the canonical row-major order; or a
            dense tensor `(batch, ..., max_bag)`, usually padded with
            `padding_id`. The last dimension always holds the bags.
        weights: Optional float per-id weights with the same structure as
            `inputs` (same row splits, same sparse indices, or same shape).

    Input shape:
        `(batch, ..., bag)` with the bag dimension last (ragged or not).

    Output shape:
        `(batch, ..., output_dim)`: the input shape with the bag dimension
        replaced by `output_dim`. Dense, except for `(batch, (fields),
        (bag))` ragged inputs whose number of fields varies, which give a
        `tf.RaggedTensor` `(batch, (fields), output_dim)`.

    Raises:
        ValueError: For an invalid argument, ids that are not integers, an
            unsupported input type or rank, or `weights` whose structure
            differs from the ids'.

    Example:

    >>> layer = keras_research.layers.RaggedEmbeddingBag(
    ...     input_dim=10, output_dim=2, combiner="sum",
    ...     embeddings_initializer="ones")
    >>> ids = tf.ragged.constant([[1, 2, 3], [], [4]])
    >>> layer(ids).numpy()
    array([[3., 3.],
           [0., 0.],
           [1., 1.]], dtype=float32)

    In a model, with ragged `tf.data` batches:

    >>> inputs = keras.Input(shape=(None,), dtype="int64", ragged=True)
    >>> x = keras_research.layers.RaggedEmbeddingBag(100, 8)(inputs)
    >>> outputs = keras.layers.Dense(1)(x)
    >>> model = keras.Model(inputs, outputs)
    >>> model.output_shape
    (None, 1)
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        combiner: str = "mean",
        *,
        embeddings_initializer="uniform",
        embeddings_regularizer=None,
        embeddings_constraint=None,
        max_norm: float | None = None,
        padding_id: int | None = None,
        invalid_ids: str = "error",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("input_dim", input_dim),
            ("output_dim", output_dim),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Integral)
                or value <= 0
            ):
                raise ValueError(
                    f"`{name}` must be a positive integer. "
                    f"Received: {name}={value!r}"
                )
        if combiner not in COMBINERS:
            raise ValueError(
                f"`combiner` must be one of {COMBINERS}. "
                f"Received: combiner={combiner!r}"
            )
        if max_norm is not None and (
            isinstance(max_norm, bool)
            or not isinstance(max_norm, numbers.Real)
            or not max_norm > 0
        ):
            raise ValueError(
                "`max_norm` must be `None` or a positive number. "
                f"Received: max_norm={max_norm!r}"
            )
        if padding_id is not None and (
            isinstance(padding_id, bool)
            or not isinstance(padding_id, numbers.Integral)
        ):
            raise ValueError(
                "`padding_id` must be `None` or an integer. "
                f"Received: padding_id={padding_id!r}"
            )
        if invalid_ids not in INVALID_IDS:
            raise ValueError(
                f"`invalid_ids` must be one of {INVALID_IDS}. "
                f"Received: invalid_ids={invalid_ids!r}"
            )
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.combiner = combiner
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )
        self.embeddings_regularizer = keras.regularizers.get(
            embeddings_regularizer
        )
        self.embeddings_constraint = keras.constraints.get(
            embeddings_constraint
        )
        self.max_norm = None if max_norm is None else float(max_norm)
        self.padding_id = None if padding_id is None else int(padding_id)
        self.invalid_ids = invalid_ids
        # The table stays in the variable dtype: gathering and reducing in
        # float32 and casting only the output is both cheaper (no cast of
        # the whole table per step) and more accurate for long bags.
        self.autocast = False

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint,
            name="embeddings",
            trainable=True,
            # Keras autocasts variables read in `call` under a mixed policy
            # even with `self.autocast = False`; opt this one out.
            autocast=False,
        )

    # ------------------------------------------------------------------
    # Shapes.

    def _check_rank(self, shape):
        if shape is None or len(shape) < 2:
            raise ValueError(
                "RaggedEmbeddingBag expects ids of rank >= 2, "
                "`(batch, ..., bag)` with the bags in the last dimension. "
                f"Received: inputs.shape={shape}"
            )

    def compute_output_shape(self, input_shape, weights_shape=None):
        input_shape = tuple(input_shape)
        self._check_rank(input_shape)
        return input_shape[:-1] + (self.output_dim,)

    def compute_output_spec(self, inputs, weights=None):
        self._check_ids_dtype(inputs.dtype)
        shape = self.compute_output_shape(inputs.shape)
        ragged = bool(getattr(inputs, "ragged", False)) and any(
            dim is None for dim in shape[1:-1]
        )
        return keras.KerasTensor(
            shape,
            dtype=self.compute_dtype,
            ragged=ragged,
            ragged_rank=1 if ragged else None,
        )

    def _check_ids_dtype(self, dtype):
        dtype = tf.as_dtype(keras.backend.standardize_dtype(dtype))
        if dtype not in (tf.int32, tf.int64):
            raise ValueError(
                "RaggedEmbeddingBag expects integer ids (int32 or int64). "
                f"Received: inputs.dtype={dtype.name}"
            )

    # ------------------------------------------------------------------
    # Forward pass.

    def call(self, inputs, weights=None):
        if isinstance(inputs, tf.RaggedTensor):
            return self._call_ragged(inputs, weights)
        if isinstance(inputs, tf.SparseTensor):
            return self._call_sparse(inputs, weights)
        if isinstance(inputs, (list, tuple, dict)):
            raise ValueError(
                "RaggedEmbeddingBag expects one tensor of ids "
                "(tf.RaggedTensor, tf.SparseTensor or dense). "
                f"Received: inputs of type {type(inputs).__name__}"
            )
        return self._call_dense(tf.convert_to_tensor(inputs), weights)

    def _call_ragged(self, ids, weights):
        self._check_ids_dtype(ids.dtype)
        if ids.flat_values.shape.rank != 1:
            raise ValueError(
                "RaggedEmbeddingBag expects the ragged bag dimension to be "
                "the last one (flat values of rank 1). "
                f"Received: inputs.shape={ids.shape} with "
                f"flat_values.shape={ids.flat_values.shape}"
            )
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
            checks = [
                tf.debugging.assert_equal(
                    a,
                    tf.cast(b, a.dtype),
                    message="`weights` must have the same row splits as the "
                    "ids.",
                )
                for a, b in zip(
                    ids.nested_row_splits, weights.nested_row_splits
                )
                if a is not b
            ]
            with tf.control_dependencies(checks):
                flat_weights = tf.identity(weights.flat_values)
        inner = ids
        while isinstance(inner.values, tf.RaggedTensor):
            inner = inner.values
        combined = self._bag_reduce(
            inner.values,
            flat_weights,
            num_bags=inner.nrows(),
            row_splits=inner.row_splits,
        )
        inner_dims = ids.shape[1:-1]
        if ids.ragged_rank == 1:
            return combined
        if all(dim is not None for dim in inner_dims):
            return tf.reshape(
                combined, [-1, *inner_dims.as_list(), self.output_dim]
            )

        def rebuild(rt):
            if rt.ragged_rank == 1:
                return combined
            return rt.with_values(rebuild(rt.values))

        return rebuild(ids)

    def _call_sparse(self, ids, weights):
        self._check_ids_dtype(ids.dtype)
        self._check_rank(ids.shape)
        flat_weights = None
        if weights is not None:
            if not isinstance(weights, tf.SparseTensor):
                raise ValueError(
                    "`weights` must be a tf.SparseTensor with the same "
                    "indices as the ids. "
                    f"Received: weights of type {type(weights).__name__}"
                )
            check = tf.debugging.assert_equal(
                ids.indices,
                weights.indices,
                message="`weights` must have the same indices as the ids.",
            )
            with tf.control_dependencies([check]):
                flat_weights = tf.identity(weights.values)
        lead_shape = ids.dense_shape[:-1]
        num_bags = tf.reduce_prod(lead_shape)
        # Row-major bag index of each value from its leading indices.
        strides = tf.math.cumprod(lead_shape, exclusive=True, reverse=True)
        segment_ids = tf.reduce_sum(ids.indices[:, :-1] * strides, axis=1)
        combined = self._bag_reduce(
            ids.values, flat_weights, num_bags=num_bags, segment_ids=segment_ids
        )
        static_lead = ids.shape[:-1].as_list()
        out_shape = tf.concat(
            [tf.cast(lead_shape, tf.int32), [self.output_dim]], axis=0
        )
        outputs = tf.reshape(combined, out_shape)
        outputs.set_shape(static_lead + [self.output_dim])
        return outputs

    def _call_dense(self, ids, weights):
        self._check_ids_dtype(ids.dtype)
        self._check_rank(ids.shape)
        shape = tf.shape(ids)
        bag_size = shape[-1]
        flat_ids = tf.reshape(ids, [-1])
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
            check = tf.debugging.assert_equal(
                tf.shape(weights),
                shape,
                message="`weights` must have the same shape as the ids.",
            )
            with tf.control_dependencies([check]):
                flat_weights = tf.reshape(weights, [-1])
        num_bags = tf.reduce_prod(shape[:-1])
        segment_ids = tf.range(tf.size(flat_ids)) // tf.maximum(bag_size, 1)
        combined = self._bag_reduce(
            flat_ids, flat_weights, num_bags=num_bags, segment_ids=segment_ids
        )
        out_shape = tf.concat([shape[:-1], [self.output_dim]], axis=0)
        outputs = tf.reshape(combined, out_shape)
        outputs.set_shape(ids.shape[:-1].as_list() + [self.output_dim])
        return outputs

    # ------------------------------------------------------------------
    # The reduction shared by every input form.

    def _bag_reduce(
        self, ids, weights, *, num_bags, row_splits=None, segment_ids=None
    ):
        """Reduces flat `ids` into `num_bags` vectors.

        Bags are given either by `row_splits` (ragged) or by sorted
        `segment_ids` (sparse, dense).
        """
        xla = in_xla_context()
        table = self.embeddings.value
        dtype = table.dtype
        num_bags = tf.cast(num_bags, tf.int32)
        if weights is not None:
            weights = tf.cast(weights, dtype)
        num_values = tf.shape(ids, out_type=tf.int32)[0]

        if segment_ids is None:
            if xla:
                segment_ids = _segment_ids_from_splits(
                    tf.cast(row_splits, tf.int32), num_values
                )
            else:
                segment_ids = tf.RaggedTensor.from_row_splits(
                    ids, row_splits, validate=False
                ).value_rowids()

        keep = None
        if self.padding_id is not None:
            keep = tf.not_equal(ids, tf.cast(self.padding_id, ids.dtype))
        poisoned = None
        if self.invalid_ids == "ignore":
            in_range = self._in_range(ids)
            keep = in_range if keep is None else tf.logical_and(keep, in_range)
        elif xla:
            # XLA cannot raise: bags holding an invalid id become NaN.
            invalid = tf.logical_not(self._in_range(ids))
            if keep is not None:
                invalid = tf.logical_and(invalid, keep)
            poisoned = tf.math.unsorted_segment_max(
                tf.cast(invalid, tf.int32), segment_ids, num_bags
            )
        else:
            ids = self._check_ids(ids, keep)

        if xla:
            return self._reduce_masked(
                table, ids, weights, segment_ids, num_bags, keep, poisoned
            )
        if keep is not None:
            ids = tf.boolean_mask(ids, keep)
            segment_ids = tf.boolean_mask(segment_ids, keep)
            if weights is not None:
                weights = tf.boolean_mask(weights, keep)
            row_splits = None  # Bag lengths changed.
        return self._reduce_sorted(
            table, ids, weights, segment_ids, num_bags, row_splits
        )

    def _in_range(self, ids):
        return tf.logical_and(
            tf.greater_equal(ids, 0),
            tf.less(ids, tf.cast(self.input_dim, ids.dtype)),
        )

    def _check_ids(self, ids, keep):
        """Raises for invalid ids; returns `ids` gated on the check.

        Two reductions (smallest and largest id) decide, instead of an
        element-wise test, unless the padding id itself is out of range.
        """
        checked = ids
        if keep is not None and not 0 <= self.padding_id < self.input_dim:
            checked = tf.where(keep, ids, tf.zeros_like(ids))
        smallest = tf.reduce_min(checked)
        largest = tf.reduce_max(checked)
        valid = tf.logical_or(
            tf.equal(tf.size(checked), 0),
            tf.logical_and(
                tf.greater_equal(smallest, 0),
                tf.less(largest, tf.cast(self.input_dim, ids.dtype)),
            ),
        )
        allowed = ""
        if self.padding_id is not None:
            allowed = f" (or padding_id={self.padding_id})"
        message = (
            f"RaggedEmbeddingBag: every id must be in [0, input_dim) with "
            f"input_dim={self.input_dim}{allowed}; pass "
            'invalid_ids="ignore" to drop other ids. Received ids outside '
            "that range; smallest and largest id in the batch:"
        )
        if tf.executing_eagerly():
            if not bool(valid):
                raise ValueError(f"{message} {int(smallest)}, {int(largest)}")
            return ids
        # Assert is a host op: it raises on CPU and GPU alike (a GPU gather
        # alone would silently return zeros). The lookup waits for it.
        check = tf.debugging.Assert(valid, [message, smallest, largest])
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    def _distinct_rows(self, table, ids, xla=False):
        """Gathers each distinct row once (renormalized for `max_norm`).

        Returns the rows and each id's position among them. The table
        gradient then has one row per distinct id (see `_reduce_sorted`).
        """
        unique_ids, position = (_unique_static if xla else tf.unique)(ids)
        rows = tf.gather(table, unique_ids)
        if self.max_norm is not None:
            rows = tf.clip_by_norm(rows, self.max_norm, axes=[1])
        return rows, position

    def _lookup(self, table, ids, weights, xla=False):
        rows, position = self._distinct_rows(table, ids, xla=xla)
        vectors = tf.gather(rows, position)
        if weights is not None:
            vectors = vectors * weights[:, None]
        return vectors

    def _normalizer(self, weights, segment_ids, num_bags, counts, dtype):
        """The per-bag divisor of "mean" and "sqrtn"."""
        if weights is None:
            divisor = tf.cast(counts, dtype)
        elif self.combiner == "mean":
            divisor = tf.math.unsorted_segment_sum(
                weights, segment_ids, num_bags
            )
        else:
            divisor = tf.math.unsorted_segment_sum(
                weights * weights, segment_ids, num_bags
            )
        if self.combiner == "sqrtn":
            divisor = tf.sqrt(divisor)
        return tf.math.divide_no_nan(tf.ones_like(divisor), divisor)

    def _reduce_sorted(
        self, table, ids, weights, segment_ids, num_bags, row_splits
    ):
        """Fast path (no XLA): sorted segment reductions.

        Each distinct row is gathered once (`tf.unique`), so the table
        gradient is a `tf.IndexedSlices` with one row per *distinct* id:
        Keras 3 optimizers of the Adam family square `IndexedSlices` values
        row by row, which is wrong when an index repeats, and densifying a
        deduplicated gradient is also several times cheaper in `fit`.
        Unweighted "sum", "mean" and "sqrtn" then reduce with the fused
        gather + segment ops (`tf.sparse.segment_*`), with no
        `(ids, output_dim)` intermediate.
        """
        dtype = table.dtype
        if weights is None and self.combiner != "max":
            reduce = {
                "sum": tf.sparse.segment_sum,
                "mean": tf.sparse.segment_mean,
                "sqrtn": tf.sparse.segment_sqrt_n,
            }[self.combiner]
            # Reduce with the fused gather + segment op over the distinct
            # rows: its gradient with respect to them is dense (one row per
            # distinct id), the table's an `IndexedSlices` over them.
            rows, position = self._distinct_rows(table, ids)
            return self._finish(
                reduce(rows, position, segment_ids, num_segments=num_bags)
            )
        vectors = self._lookup(table, ids, weights)
        if self.combiner == "max":
            reduced = tf.math.segment_max(vectors, segment_ids)
        else:
            reduced = tf.math.segment_sum(vectors, segment_ids)
        # Sorted segment ops stop at the last non-empty bag: pad the rest.
        missing = num_bags - tf.shape(reduced, out_type=tf.int32)[0]
        reduced = tf.pad(reduced, [[0, missing], [0, 0]])
        if self.combiner == "sum":
            return self._finish(reduced)
        if row_splits is not None:
            counts = row_splits[1:] - row_splits[:-1]
        else:
            counts = tf.math.bincount(
                tf.cast(segment_ids, tf.int32),
                minlength=num_bags,
                maxlength=num_bags,
            )
        if self.combiner == "max":
            nonempty = tf.greater(counts, 0)[:, None]
            return self._finish(tf.where(nonempty, reduced, 0.0))
        scale = self._normalizer(weights, segment_ids, num_bags, counts, dtype)
        return self._finish(reduced * scale[:, None])

    def _reduce_masked(
        self, table, ids, weights, segment_ids, num_bags, keep, poisoned
    ):
        """XLA path: masks instead of removing, unsorted segment ops."""
        dtype = table.dtype
        if keep is not None:
            ids = tf.where(keep, ids, tf.zeros_like(ids))
            mask = tf.cast(keep, dtype)
            weights = mask if weights is None else weights * mask
        vectors = self._lookup(table, ids, weights, xla=True)
        ones = (
            tf.ones_like(segment_ids)
            if keep is None
            else tf.cast(keep, tf.int32)
        )
        counts = tf.math.unsorted_segment_sum(ones, segment_ids, num_bags)
        if self.combiner == "max":
            if keep is not None:
                vectors = tf.where(keep[:, None], vectors, dtype.min)
            reduced = tf.math.unsorted_segment_max(
                vectors, segment_ids, num_bags
            )
            reduced = tf.where(tf.greater(counts, 0)[:, None], reduced, 0.0)
        else:
            reduced = tf.math.unsorted_segment_sum(
                vectors, segment_ids, num_bags
            )
            if self.combiner != "sum":
                scale = self._normalizer(
                    weights, segment_ids, num_bags, counts, dtype
                )
                reduced = reduced * scale[:, None]
        if poisoned is not None:
            reduced = tf.where(
                tf.greater(poisoned, 0)[:, None],
                tf.constant(float("nan"), dtype),
                reduced,
            )
        return self._finish(reduced)

    def _finish(self, reduced):
        return tf.cast(reduced, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "combiner": self.combiner,
            "embeddings_initializer": keras.initializers.serialize(
                self.embeddings_initializer
            ),
            "embeddings_regularizer": keras.regularizers.serialize(
                self.embeddings_regularizer
            ),
            "embeddings_constraint": keras.constraints.serialize(
                self.embeddings_constraint
            ),
            "max_norm": self.max_norm,
            "padding_id": self.padding_id,
            "invalid_ids": self.invalid_ids,
        }
