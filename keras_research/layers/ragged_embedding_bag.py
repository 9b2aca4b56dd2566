"""RaggedEmbeddingBag: one vector per bag of ids, without padding."""

import inspect

import keras
import tensorflow as tf

from keras_research import _checks
from keras_research._export import register
from keras_research._xla import in_xla_context
from keras_research.layers import _ragged_inputs as inputs_lib
from keras_research.layers import _ragged_ops

COMBINERS = _ragged_ops.COMBINERS
INVALID_IDS = ("error", "ignore")
NONPOSITIVE_WEIGHTS = ("keep", "ignore")

# `KerasTensor(ragged_rank=...)` exists from Keras 3.11 (`ragged=` from 3.9).
_HAS_RAGGED_RANK = (
    "ragged_rank" in inspect.signature(keras.KerasTensor.__init__).parameters
)


@register
class RaggedEmbeddingBag(keras.layers.Layer):
    """Embeds bags of ids and reduces each bag to one vector.

    The Keras counterpart of `torch.nn.EmbeddingBag` and of TensorFlow's
    `tf.nn.safe_embedding_lookup_sparse`, working on `tf.RaggedTensor` ids
    directly: time and memory grow with the number of ids rather than with
    `batch * longest_bag` as with padding, an `Embedding` layer and a
    masked pooling.

    With ids `i_1..i_n` in a bag, per-id weights `w_1..w_n` (all `1` when
    no `weights` are passed) and rows `e_i` of the table, the combiners are:

    - `"sum"`: `sum_k w_k e_{i_k}`.
    - `"mean"`: `sum_k w_k e_{i_k} / sum_k w_k` (as
      `tf.nn.safe_embedding_lookup_sparse`; the plain mean without weights).
    - `"sqrtn"`: `sum_k w_k e_{i_k} / sqrt(sum_k w_k^2)`.
    - `"max"`: the element-wise maximum of `w_k e_{i_k}` over the bag
      (as `torch.nn.EmbeddingBag(mode="max")`).

    An empty bag (or a bag whose weights sum to zero for `"mean"` and
    `"sqrtn"`) gives a zero vector, never `NaN`. Ids equal to `padding_id`
    are removed before reduction: they add nothing and are not counted by
    `"mean"` or `"sqrtn"`. Unlike `tf.nn.safe_embedding_lookup_sparse`, ids
    whose weight is `<= 0` are kept by default (a negative weight is
    meaningful for `"sum"`); `nonpositive_weights="ignore"` drops them as
    that op does.

    The gradient with respect to the table is a `tf.IndexedSlices` with one
    row per *distinct* looked-up id, never a dense table-sized tensor and
    never a repeated index (Keras 3's Adam-family optimizers square
    `IndexedSlices` values row by row, which is wrong for repeated indices).
    A regularizer on the table makes its gradient dense, as for
    `keras.layers.Embedding`. The table stays in the variable dtype (float32
    under mixed precision); float16 and bfloat16 tables are reduced in
    float32, and the output is cast to the compute dtype.

    Execution paths (timings: `benchmarks/RESULTS.md`):

    - Without XLA, padding and ignored ids are removed first, then the ids
      are split into 8 groups by `id % 8` that run in parallel on
      TensorFlow's inter-op threads. Each unweighted float32/float64 group
      runs one fused TensorFlow kernel each way (`tf.sparse.segment_sum`
      with `sparse_gradient=True`); weighted groups, float16/bfloat16
      tables and `max_norm` gather each distinct row once and reduce with
      one sparse x dense product; `"max"` gathers distinct rows too.
    - Under XLA (`jit_compile=True`) those kernels do not exist: the layer
      masks padding instead of removing it, finds distinct ids with a sort
      and reduces with `tf.math.unsorted_segment_sum` / `_max`. On CPU the
      sort makes this slower than the graph path: leave `jit_compile` off
      for models built on this layer there. Every distinct number of ids
      compiles a new program; pad ids to a few bucketed lengths (with
      `padding_id`) when using `jit_compile=True` on ragged data.

    Both paths give the same values. The layer runs under
    `tf.distribute.MirroredStrategy` with ragged, sparse or dense ids.

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
            `max_norm` are rescaled to norm `max_norm` before reduction, as
            `tf.nn.embedding_lookup(max_norm=...)`: the stored table is not
            modified, and the gradient is that of the function computed,
            through the rescaling (a clipped row gets no gradient along its
            own direction). `torch.nn.EmbeddingBag(max_norm=...)` instead
            renormalizes the stored rows in place and passes the gradient
            through as if no rescaling happened. Defaults to `None`.
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
        nonpositive_weights: str. What to do with ids whose weight is
            `<= 0`: `"keep"` them, or `"ignore"` them (drop them before
            reduction, as `tf.nn.safe_embedding_lookup_sparse` does, so a
            bag of only such ids gives zeros). Defaults to `"keep"`.
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
            differs from the ids' (inside a `tf.function`, a difference
            that only shows at run time raises `InvalidArgumentError` with
            the same message).

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
        nonpositive_weights: str = "keep",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_dim = _checks.check_positive_int("input_dim", input_dim)
        self.output_dim = _checks.check_positive_int("output_dim", output_dim)
        for name, value, allowed in (
            ("combiner", combiner, COMBINERS),
            ("invalid_ids", invalid_ids, INVALID_IDS),
            ("nonpositive_weights", nonpositive_weights, NONPOSITIVE_WEIGHTS),
        ):
            if value not in allowed:
                raise ValueError(
                    f"`{name}` must be one of {allowed}. "
                    f"Received: {name}={value!r}"
                )
        if max_norm is not None:
            _checks.check_positive("max_norm", max_norm)
        if padding_id is not None and not _checks.is_integer(padding_id):
            raise ValueError(
                "`padding_id` must be `None` or an integer. "
                f"Received: padding_id={padding_id!r}"
            )
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
        self.nonpositive_weights = nonpositive_weights
        # The table stays in the variable dtype: reducing in it and casting
        # only the output is cheaper (no cast of the whole table per step)
        # and more accurate for long bags.
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

    def _check_rank(self, shape):
        if shape is None or len(shape) < 2:
            raise ValueError(
                "RaggedEmbeddingBag expects ids of rank >= 2, "
                "`(batch, ..., bag)` with the bags in the last dimension. "
                f"Received: inputs.shape={shape}"
            )

    def _check_ids_dtype(self, dtype):
        dtype = tf.as_dtype(keras.backend.standardize_dtype(dtype))
        if dtype not in (tf.int32, tf.int64):
            raise ValueError(
                "RaggedEmbeddingBag expects integer ids (int32 or int64). "
                f"Received: inputs.dtype={dtype.name}"
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
        kwargs = {"ragged_rank": 1} if ragged and _HAS_RAGGED_RANK else {}
        return keras.KerasTensor(
            shape, dtype=self.compute_dtype, ragged=ragged, **kwargs
        )

    def _flatten(self, inputs, weights):
        if isinstance(inputs, tf.RaggedTensor):
            self._check_ids_dtype(inputs.dtype)
            if inputs.flat_values.shape.rank != 1:
                raise ValueError(
                    "RaggedEmbeddingBag expects the ragged bag dimension to "
                    "be the last one (flat values of rank 1). "
                    f"Received: inputs.shape={inputs.shape} with "
                    f"flat_values.shape={inputs.flat_values.shape}"
                )
            return inputs_lib.flatten_ragged(inputs, weights, self.output_dim)
        self._check_ids_dtype(inputs.dtype)
        self._check_rank(inputs.shape)
        if isinstance(inputs, tf.SparseTensor):
            return inputs_lib.flatten_sparse(inputs, weights, self.output_dim)
        return inputs_lib.flatten_dense(inputs, weights, self.output_dim)

    def call(self, inputs, weights=None):
        if isinstance(inputs, (list, tuple, dict)):
            raise ValueError(
                "RaggedEmbeddingBag expects one tensor of ids "
                "(tf.RaggedTensor, tf.SparseTensor or dense). "
                f"Received: inputs of type {type(inputs).__name__}"
            )
        if not isinstance(inputs, (tf.RaggedTensor, tf.SparseTensor)):
            inputs = tf.convert_to_tensor(inputs)
        bags = self._flatten(inputs, weights)
        return bags.restore(tf.cast(self._reduce(bags), self.compute_dtype))

    def _reduce(self, bags):
        """Drops or masks ids, checks them, and reduces every bag."""
        xla = in_xla_context()
        ids, weights, segment_ids = bags.ids, bags.weights, bags.segment_ids
        num_bags = tf.cast(bags.num_bags, tf.int32)
        if segment_ids is None:
            if xla:
                segment_ids = _ragged_ops.segment_ids_from_splits(
                    tf.cast(bags.row_splits, tf.int32), tf.size(ids)
                )
            else:
                segment_ids = tf.RaggedTensor.from_row_splits(
                    ids, bags.row_splits, validate=False
                ).value_rowids()

        masks = []
        if self.padding_id is not None:
            masks.append(tf.not_equal(ids, tf.cast(self.padding_id, ids.dtype)))
        if weights is not None and self.nonpositive_weights == "ignore":
            masks.append(tf.greater(weights, 0))
        keep = None
        for mask in masks:
            keep = mask if keep is None else tf.logical_and(keep, mask)
        poisoned = None
        if self.invalid_ids == "ignore":
            in_range = inputs_lib.in_range(ids, self.input_dim)
            keep = in_range if keep is None else tf.logical_and(keep, in_range)
        elif xla:
            # XLA cannot raise: bags holding an invalid id become NaN.
            invalid = tf.logical_not(inputs_lib.in_range(ids, self.input_dim))
            if keep is not None:
                invalid = tf.logical_and(invalid, keep)
            poisoned = tf.math.unsorted_segment_max(
                tf.cast(invalid, tf.int32), segment_ids, num_bags
            )
        else:
            ids = inputs_lib.check_ids(ids, self.input_dim, self.padding_id)

        table = self.embeddings.value
        if xla:
            reduced = _ragged_ops.reduce_bags_masked(
                table, ids, segment_ids, num_bags, self.combiner,
                weights=weights, keep=keep, max_norm=self.max_norm,
            )
            if poisoned is not None:
                reduced = tf.where(
                    tf.greater(poisoned, 0)[:, None],
                    tf.constant(float("nan"), reduced.dtype),
                    reduced,
                )
            return reduced
        if keep is not None:
            ids = tf.boolean_mask(ids, keep)
            segment_ids = tf.boolean_mask(segment_ids, keep)
            if weights is not None:
                weights = tf.boolean_mask(weights, keep)
        return _ragged_ops.reduce_bags(
            table, ids, segment_ids, num_bags, self.combiner,
            weights=weights, max_norm=self.max_norm,
        )

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
            "nonpositive_weights": self.nonpositive_weights,
        }
