"""Weights stored as two factors, and the SVD arithmetic behind them.

`FactorizedWeight` is what a Keras layer receives from `add_weight` under
`factorized_scope`: two trainable `keras.Variable`s `left` (m x r) and
`right` (r x n), both created with the layer's own `add_weight` (so the
layer tracks, trains and saves them), standing for the weight
`reshape(left @ right, shape)` with m = prod(shape[:-1]), n = shape[-1].

`FactorizedVariable` is the same idea for raw `tf.Variable`s created by
`tf.Module` code: a `tf.Module` holding the two factor `tf.Variable`s.

Both convert to a tensor (`__tf_tensor__`), so any code that uses the
weight as a tensor (`ops.matmul(x, self.kernel)`, `tf.nn.conv2d`, ...)
works unchanged and differentiates into the factors.
"""

import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

# Above this size `spectral_factors` uses a randomized SVD: an exact one of
# a 4096 x 4096 initial kernel would take tens of seconds on a CPU.
_EXACT_SVD_MAX_DIM = 512


def validate_rank(rank, argument="rank"):
    """Raises unless `rank` is an int >= 1 or a float in (0, 1]."""
    if isinstance(rank, bool) or not isinstance(
        rank, (numbers.Integral, numbers.Real)
    ):
        raise ValueError(
            f"`{argument}` must be a positive integer or a float in (0, 1] "
            f"(a fraction of the full rank). Received: {argument}={rank!r}"
        )
    if isinstance(rank, numbers.Integral):
        if rank < 1:
            raise ValueError(
                f"`{argument}` must be a positive integer or a float in "
                f"(0, 1] (a fraction of the full rank). "
                f"Received: {argument}={rank}"
            )
        return int(rank)
    rank = float(rank)
    if not (0.0 < rank <= 1.0) or math.isnan(rank):
        raise ValueError(
            f"A float `{argument}` is a fraction of the full rank and must "
            f"be in (0, 1]. Use an int for an absolute rank. "
            f"Received: {argument}={rank}"
        )
    return rank


def resolve_rank(rank, full_rank):
    """The absolute rank for `rank` (int, or fraction of `full_rank`)."""
    if isinstance(rank, float):
        # Round half up: 0.25 of a full rank of 10 is 3.
        return max(1, int(math.floor(rank * full_rank + 0.5)))
    return int(rank)


def matrix_shape(shape):
    """The matrix view (prod(shape[:-1]), shape[-1]) of a weight shape."""
    shape = tuple(int(d) for d in shape)
    return int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]


def svd(matrix):
    """Exact thin SVD in float64: `(u, s, vt)`."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.linalg.svd(matrix, full_matrices=False)


def split_factors(u, s, vt, rank):
    """Best rank-`rank` factors, singular values split evenly.

    Returns `(left, right)` with `left = u_r sqrt(s_r)` and
    `right = sqrt(s_r) vt_r`, so `left @ right` is the truncated SVD.
    """
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def relative_error(s, rank):
    """||W - W_r||_F / ||W||_F from the singular values `s` of W."""
    total = float(np.sum(np.square(s)))
    if total == 0.0:
        return 0.0
    return math.sqrt(float(np.sum(np.square(s[rank:]))) / total)


def energy_rank(s, energy):
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2) (at least 1)."""
    squares = np.square(np.asarray(s, dtype=np.float64))
    total = squares.sum()
    if total == 0.0:
        return 1
    kept = np.cumsum(squares) / total
    # Tolerate float64 round-off at energy = 1.
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(s)))


def _top_svd(matrix, rank):
    """Top-`rank` SVD; randomized (Halko et al. 2011) for big matrices."""
    m, n = matrix.shape
    k = min(m, n)
    if k <= _EXACT_SVD_MAX_DIM or 2 * (rank + 16) >= k:
        u, s, vt = svd(matrix)
        return u[:, :rank], s[:rank], vt[:rank]
    rng = np.random.default_rng(0)
    y = matrix @ rng.standard_normal((n, rank + 16))
    for _ in range(2):  # Power iterations sharpen the spectrum.
        y, _ = np.linalg.qr(y)
        y = matrix @ (matrix.T @ y)
    q, _ = np.linalg.qr(y)
    ub, s, vt = np.linalg.svd(q.T @ matrix, full_matrices=False)
    return (q @ ub)[:, :rank], s[:rank], vt[:rank]


def spectral_factors(full, rank):
    """Factors of the best rank-`rank` approximation of `full` (m x n).

    This is the "spectral initialization" of factorized layers (Khodak et
    al., 2021, https://arxiv.org/abs/2105.01029): the factors start as the
    truncated SVD of the weight the layer would have had. An all-zero
    `full` (e.g. a zeros initializer) gives a random `left` and a zero
    `right`, so the product starts at zero but still receives gradients.
    """
    full = np.asarray(full, dtype=np.float64)
    m, n = full.shape
    if not np.any(full):
        limit = math.sqrt(3.0 / m)
        left = np.random.default_rng(0).uniform(-limit, limit, (m, rank))
        return left, np.zeros((rank, n))
    u, s, vt = _top_svd(full, rank)
    return split_factors(u, s, vt, rank)


class SpectralInitializer:
    """Initializes both factors from one sample of the layer's initializer.

    `factor_initializer(0)` and `factor_initializer(1)` give the
    initializers of `left` and `right`; the first one called draws the
    full weight with the original initializer (with its original shape, so
    fan-in and fan-out are right) and computes both factors.
    """

    def __init__(self, initializer, shape, rank):
        self.initializer = keras.initializers.get(initializer)
        self.shape = tuple(shape)
        self.rank = rank
        self._factors = None

    def _compute(self):
        full = self.initializer(self.shape, dtype="float32")
        full = keras.ops.convert_to_numpy(full).reshape(
            matrix_shape(self.shape)
        )
        return spectral_factors(full, self.rank)

    def set_factors(self, left, right):
        """Starts the factors from `left` and `right` instead."""
        self._factors = (np.asarray(left), np.asarray(right))

    def factor_initializer(self, index):
        def initialize(shape, dtype=None):
            if self._factors is None:
                self._factors = self._compute()
            value = self._factors[index]
            return tf.constant(value, dtype=dtype or "float32")

        return initialize


class ProductRegularizer(keras.regularizers.Regularizer):
    """Applies a weight's regularizer to the product of its factors.

    Attached to the `left` factor (Keras sums `variable.regularizer(v)`
    over a layer's trainable weights), so the penalty is the one the layer
    asked for, on the weight it stands for.
    """

    def __init__(self, regularizer, weight):
        self.regularizer = regularizer
        self.weight = weight

    def __call__(self, x):
        del x  # The `left` factor; the penalty is on the product.
        return self.regularizer(self.weight.value)

    def get_config(self):
        return {"regularizer": keras.regularizers.serialize(self.regularizer)}


class FactorizedWeight(tf.Module):
    """A layer weight stored as `left` (m x r) times `right` (r x n).

    Converts to the tensor `reshape(left @ right, shape)` wherever a tensor
    is expected, so layer code that uses the weight is unchanged; inside a
    layer call under a mixed precision policy, the factors are autocast to
    the compute dtype like any Keras variable. It is not itself a
    variable: the layer tracks, trains and saves `left` and `right`. It is
    a `tf.Module`, so `tf.train.Checkpoint` finds the factors through the
    layer attribute that holds it.

    Attributes:
        left: `keras.Variable` of shape (m, r).
        right: `keras.Variable` of shape (r, n).
        shape: tuple, the shape of the weight it stands for.
        rank: int, r.
        name: str, the weight's name as the layer asked for it.
    """

    # Make NumPy defer `array @ weight` and friends to our operators.
    __array_priority__ = 100

    def __init__(self, left, right, shape, name):
        super().__init__()
        self.left = left
        self.right = right
        self.shape = tuple(int(d) for d in shape)
        self._weight_name = name

    @property
    def name(self):
        return self._weight_name

    @property
    def rank(self):
        return int(self.left.shape[-1])

    @property
    def dtype(self):
        return self.left.dtype

    @property
    def trainable(self):
        return self.left.trainable

    @property
    def path(self):
        path = self.left.path
        return path[: -len("_left")] if path.endswith("_left") else path

    @property
    def value(self):
        """The product `reshape(left @ right, shape)` as a tensor."""
        return ops.reshape(ops.matmul(self.left, self.right), self.shape)

    def numpy(self):
        return keras.ops.convert_to_numpy(self.value)

    def __array__(self, dtype=None, copy=None):
        value = self.numpy()
        return value if dtype is None else value.astype(dtype)

    def __tf_tensor__(self, dtype=None, name=None):
        value = tf.convert_to_tensor(self.value)
        if dtype is not None and value.dtype != dtype:
            value = tf.cast(value, dtype)
        return value

    def assign(self, value):
        """Sets the factors to the best rank-r approximation of `value`.

        Warns with the relative reconstruction error when `value` is not
        exactly of rank r.
        """
        value = np.asarray(keras.ops.convert_to_numpy(value))
        if value.shape != self.shape:
            raise ValueError(
                f"Cannot assign a value of shape {value.shape} to the "
                f"factorized weight {self.path!r} of shape {self.shape}."
            )
        u, s, vt = svd(value.reshape(matrix_shape(self.shape)))
        left, right = split_factors(u, s, vt, self.rank)
        error = relative_error(s, self.rank)
        if error > 1e-6:
            warnings.warn(
                f"Factorized weight {self.path!r} (rank {self.rank}) was "
                f"assigned a full-rank value of shape {self.shape}; it keeps "
                f"its best rank-{self.rank} approximation (truncated SVD), "
                f"with relative reconstruction error "
                f"||W - W_r|| / ||W|| = {error:.4g}.",
                stacklevel=2,
            )
        self.left.assign(left.astype(np.float32))
        self.right.assign(right.astype(np.float32))
        return self

    def _on_value(op):
        def method(self, *args):
            return op(self.value, *args)

        return method

    __add__ = _on_value(lambda a, b: a + b)
    __radd__ = _on_value(lambda a, b: b + a)
    __sub__ = _on_value(lambda a, b: a - b)
    __rsub__ = _on_value(lambda a, b: b - a)
    __mul__ = _on_value(lambda a, b: a * b)
    __rmul__ = _on_value(lambda a, b: b * a)
    __truediv__ = _on_value(lambda a, b: a / b)
    __matmul__ = _on_value(lambda a, b: ops.matmul(a, b))
    __rmatmul__ = _on_value(lambda a, b: ops.matmul(b, a))
    __neg__ = _on_value(lambda a: -a)
    __getitem__ = _on_value(lambda a, index: a[index])
    del _on_value

    def __repr__(self):
        return (
            f"<FactorizedWeight path={self.path!r} shape={self.shape} "
            f"rank={self.rank} dtype={self.left.dtype}>"
        )


class FactorizedVariable(tf.Module):
    """A raw `tf.Variable` stored as two factor `tf.Variable`s.

    What `tf.Variable(...)` returns for a matrix created by `tf.Module`
    code inside `keras_research.factorized_scope`, as in the
    `tf.variable_creator_scope` example of "Research with TensorFlow"
    (TF Dev Summit 2020). It converts to `reshape(left @ right, shape)`
    wherever a tensor is expected, and as a `tf.Module` its factors show up
    in the enclosing module's `trainable_variables`.
    """

    __array_priority__ = 100

    def __init__(self, left, right, shape, name=None):
        super().__init__(name=name)
        self.left = left
        self.right = right
        self._shape = tf.TensorShape(shape)

    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return self.left.dtype

    @property
    def rank(self):
        return int(self.left.shape[-1])

    @property
    def trainable(self):
        return self.left.trainable

    def value(self):
        return tf.reshape(tf.matmul(self.left, self.right), self._shape)

    read_value = value

    def numpy(self):
        return self.value().numpy()

    def __tf_tensor__(self, dtype=None, name=None):
        value = self.value()
        if dtype is not None and value.dtype != dtype:
            value = tf.cast(value, dtype)
        return value

    def __array__(self, dtype=None, copy=None):
        value = self.numpy()
        return value if dtype is None else value.astype(dtype)

    def __matmul__(self, other):
        return tf.matmul(self.value(), other)

    def __rmatmul__(self, other):
        return tf.matmul(other, self.value())

    def __add__(self, other):
        return self.value() + other

    def __radd__(self, other):
        return other + self.value()

    def __mul__(self, other):
        return self.value() * other

    __rmul__ = __mul__

    def assign(self, value):
        """Sets the factors to the best rank-r approximation of `value`."""
        value = np.asarray(value)
        u, s, vt = svd(value.reshape(matrix_shape(self._shape.as_list())))
        left, right = split_factors(u, s, vt, self.rank)
        self.left.assign(tf.cast(left, self.left.dtype))
        self.right.assign(tf.cast(right, self.right.dtype))
        return self
