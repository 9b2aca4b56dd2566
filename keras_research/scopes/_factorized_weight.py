"""Weights stored as two factors.

`FactorizedWeight` is what a Keras layer receives from `add_weight` under
`factorized_scope`: two trainable `keras.Variable`s `left` (m x r) and
`right` (r x n), both created with the layer's own `add_weight` (so the
layer tracks, trains and saves them), standing for the weight
`reshape(left @ right, shape)` with m = prod(shape[:-1]), n = shape[-1].

`FactorizedVariable` is the same idea for raw `tf.Variable`s created by
`tf.Module` code: a `tf.Module` holding the two factor `tf.Variable`s.
The two differ only where the objects they stand in for differ: a
`keras.Variable` has a `value` property, a `tf.Variable` a `value()`
method and a `tf.TensorShape`. Everything else (the tensor conversion,
NumPy conversion, operators, truncated-SVD `assign`) is their shared base,
`_Factorized`. The SVD arithmetic is in `keras_research/_low_rank.py`.

Both convert to a tensor (`__tf_tensor__`), so any code that uses the
weight as a tensor (`ops.matmul(x, self.kernel)`, `tf.nn.conv2d`, ...)
works unchanged and differentiates into the factors.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_research import _low_rank


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
            _low_rank.matrix_shape(self.shape)
        )
        return _low_rank.spectral_factors(full, self.rank)

    def set_factors(self, left, right):
        """Starts the factors from `left` and `right` instead."""
        self._factors = (np.asarray(left), np.asarray(right))

    def factor_initializer(self, index):
        def initialize(shape, dtype=None):
            if self._factors is None:
                # Keras calls initializers of not-yet-initialized variables
                # inside a functional trace, for a placeholder value: draw
                # and factorize eagerly, once, for the trace and for the
                # real initialization alike.
                with tf.init_scope():
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


class _Factorized(tf.Module):
    """A weight stored as `left` (m x r) times `right` (r x n).

    Subclasses define `product()`, the tensor `reshape(left @ right,
    shape)`, and `_shape_tuple`.
    """

    # Make NumPy defer `array @ weight` and friends to our operators.
    __array_priority__ = 100

    def __init__(self, left, right, name=None):
        super().__init__(name=name)
        self.left = left
        self.right = right

    @property
    def rank(self):
        return int(self.left.shape[-1])

    @property
    def dtype(self):
        return self.left.dtype

    @property
    def trainable(self):
        return self.left.trainable

    def numpy(self):
        return keras.ops.convert_to_numpy(self.product())

    def __array__(self, dtype=None, copy=None):
        value = self.numpy()
        return value if dtype is None else value.astype(dtype)

    def __tf_tensor__(self, dtype=None, name=None):
        value = tf.convert_to_tensor(self.product())
        if dtype is not None and value.dtype != dtype:
            value = tf.cast(value, dtype)
        return value

    def assign(self, value):
        """Sets the factors to the best rank-r approximation of `value`.

        Warns with the relative reconstruction error when `value` is not
        exactly of rank r.
        """
        value = np.asarray(keras.ops.convert_to_numpy(value))
        shape = self._shape_tuple
        if value.shape != shape:
            raise ValueError(
                f"Cannot assign a value of shape {value.shape} to the "
                f"factorized weight {self._label!r} of shape {shape}."
            )
        left, right, error = _low_rank.truncated_factors(
            value.reshape(_low_rank.matrix_shape(shape)), self.rank
        )
        if error > 1e-6:
            warnings.warn(
                f"Factorized weight {self._label!r} (rank {self.rank}) was "
                f"assigned a full-rank value of shape {shape}; it keeps "
                f"its best rank-{self.rank} approximation (truncated SVD), "
                f"with relative reconstruction error "
                f"||W - W_r|| / ||W|| = {error:.4g}.",
                stacklevel=2,
            )
        self.left.assign(tf.cast(left, self.left.dtype))
        self.right.assign(tf.cast(right, self.right.dtype))
        return self

    def _on_value(op):
        def method(self, *args):
            return op(self.product(), *args)

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


class FactorizedWeight(_Factorized):
    """A Keras layer weight stored as `left` (m x r) times `right` (r x n).

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

    def __init__(self, left, right, shape, name):
        super().__init__(left, right)
        self.shape = tuple(int(d) for d in shape)
        self._weight_name = name

    @property
    def name(self):
        return self._weight_name

    @property
    def _shape_tuple(self):
        return self.shape

    @property
    def path(self):
        path = self.left.path
        return path[: -len("_left")] if path.endswith("_left") else path

    _label = path

    @property
    def value(self):
        """The product `reshape(left @ right, shape)` as a tensor."""
        return self.product()

    def product(self):
        return ops.reshape(ops.matmul(self.left, self.right), self.shape)

    def __repr__(self):
        return (
            f"<FactorizedWeight path={self.path!r} shape={self.shape} "
            f"rank={self.rank} dtype={self.left.dtype}>"
        )


class FactorizedVariable(_Factorized):
    """A raw `tf.Variable` stored as two factor `tf.Variable`s.

    What `tf.Variable(...)` returns for a matrix created by `tf.Module`
    code inside `keras_research.factorized_scope`, as in the
    `tf.variable_creator_scope` example of "Research with TensorFlow"
    (TF Dev Summit 2020). It converts to `reshape(left @ right, shape)`
    wherever a tensor is expected, and as a `tf.Module` its factors show up
    in the enclosing module's `trainable_variables`.
    """

    def __init__(self, left, right, shape, name=None):
        super().__init__(left, right, name=name)
        self._shape = tf.TensorShape(shape)

    @property
    def shape(self):
        return self._shape

    @property
    def _shape_tuple(self):
        return tuple(self._shape.as_list())

    @property
    def _label(self):
        return self.name

    def product(self):
        return tf.reshape(tf.matmul(self.left, self.right), self._shape)

    value = product
    read_value = product
