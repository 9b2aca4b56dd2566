"""FactorizedDense: a Dense layer whose kernel is stored as two factors."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_research import _low_rank
from keras_research._export import register


@register
class FactorizedDense(keras.layers.Layer):
    """A densely-connected layer whose kernel is a product of two factors.

    A drop-in for `keras.layers.Dense` that stores its
    `(input_dim, units)` kernel only as `left` of shape
    `(input_dim, rank)` and `right` of shape `(rank, units)`, and computes
    `output = activation((inputs @ left) @ right + bias)` without ever
    materializing the kernel. With rank r this takes
    `r * (input_dim + units)` parameters instead of `input_dim * units`,
    and about as many multiply-adds per example.

    The default initializers (`"lecun_uniform"` for both factors) keep the
    variance of the activations through both matmuls, so the product
    starts with the variance of a Glorot-initialized kernel of a square
    layer. Use `FactorizedDense.from_dense` to compress a trained `Dense`
    layer.

    Args:
        units: int. Dimensionality of the output space.
        rank: int >= 1, the inner dimension of the factors, or a float in
            (0, 1], a fraction of the full rank `min(input_dim, units)`
            (rounded, at least 1). An int rank may not exceed
            `min(input_dim, units)`, checked when the layer is built.
        activation: Activation function to use. Defaults to `None` (linear).
        use_bias: bool. Whether the layer uses a bias vector. Defaults to
            `True`.
        left_initializer: Initializer of `left`. Defaults to
            `"lecun_uniform"`.
        right_initializer: Initializer of `right`. Defaults to
            `"lecun_uniform"`.
        bias_initializer: Initializer of the bias. Defaults to `"zeros"`.
        left_regularizer: Regularizer of `left`. Defaults to `None`.
        right_regularizer: Regularizer of `right`. Defaults to `None`.
        bias_regularizer: Regularizer of the bias. Defaults to `None`.
        activity_regularizer: Regularizer of the output. Defaults to `None`.
        left_constraint: Constraint on `left`. Defaults to `None`.
        right_constraint: Constraint on `right`. Defaults to `None`.
        bias_constraint: Constraint on the bias. Defaults to `None`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: tensor of rank >= 2 whose last dimension is `input_dim`.
            Masks pass through unchanged, as in `Dense`.

    Input shape:
        N-D tensor with shape `(batch_size, ..., input_dim)`.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`.

    Raises:
        ValueError: on `units` that is not a positive integer, a `rank`
            that is not an int >= 1 or a float in (0, 1], an unknown
            initializer, regularizer, constraint or activation, or (at
            build time) an int `rank` larger than `min(input_dim, units)`.

    Example:

    >>> import numpy as np
    >>> import keras_research
    >>> layer = keras_research.layers.FactorizedDense(units=32, rank=4)
    >>> layer(np.ones((2, 64), "float32")).shape
    TensorShape([2, 32])
    >>> [tuple(w.shape) for w in layer.weights]
    [(64, 4), (4, 32), (32,)]
    >>> layer.kernel.shape
    TensorShape([64, 32])

    References:
        - [Sainath et al., 2013. Low-rank matrix factorization for deep
          neural network training with high-dimensional output targets](
          https://doi.org/10.1109/ICASSP.2013.6638949)
        - [Denil et al., 2013. Predicting Parameters in Deep Learning](
          https://arxiv.org/abs/1306.0543)
    """

    # Already factorized: `factorized_scope` leaves its weights alone.
    _kr_skip_factorization = True

    def __init__(
        self,
        units: int,
        rank,
        activation=None,
        use_bias: bool = True,
        left_initializer="lecun_uniform",
        right_initializer="lecun_uniform",
        bias_initializer="zeros",
        left_regularizer=None,
        right_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        left_constraint=None,
        right_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)):
            raise ValueError(
                f"`units` must be a positive integer. Received: units={units!r}"
            )
        if units <= 0:
            raise ValueError(
                f"`units` must be a positive integer. Received: units={units}"
            )
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = int(units)
        self.rank = _low_rank.validate_rank(rank)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.left_initializer = _get(
            keras.initializers, left_initializer, "left_initializer"
        )
        self.right_initializer = _get(
            keras.initializers, right_initializer, "right_initializer"
        )
        self.bias_initializer = _get(
            keras.initializers, bias_initializer, "bias_initializer"
        )
        self.left_regularizer = _get(
            keras.regularizers, left_regularizer, "left_regularizer"
        )
        self.right_regularizer = _get(
            keras.regularizers, right_regularizer, "right_regularizer"
        )
        self.bias_regularizer = _get(
            keras.regularizers, bias_regularizer, "bias_regularizer"
        )
        self.left_constraint = _get(
            keras.constraints, left_constraint, "left_constraint"
        )
        self.right_constraint = _get(
            keras.constraints, right_constraint, "right_constraint"
        )
        self.bias_constraint = _get(
            keras.constraints, bias_constraint, "bias_constraint"
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "The last dimension of the inputs to `FactorizedDense` must "
                f"be defined. Received: input_shape={input_shape}"
            )
        full_rank = min(int(input_dim), self.units)
        rank = _low_rank.resolve_rank(self.rank, full_rank)
        if rank > full_rank:
            raise ValueError(
                "`rank` may not exceed min(input_dim, units) = "
                f"min({input_dim}, {self.units}) = {full_rank}. "
                f"Received: rank={self.rank}"
            )
        self.left = self.add_weight(
            name="left",
            shape=(input_dim, rank),
            initializer=self.left_initializer,
            regularizer=self.left_regularizer,
            constraint=self.left_constraint,
        )
        self.right = self.add_weight(
            name="right",
            shape=(rank, self.units),
            initializer=self.right_initializer,
            regularizer=self.right_regularizer,
            constraint=self.right_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: input_dim}
        )

    @property
    def kernel(self):
        """The product `left @ right` (read-only, for inspection)."""
        if not self.built:
            raise AttributeError(
                "You must build the layer before accessing `kernel`."
            )
        return ops.matmul(self.left, self.right)

    def call(self, inputs):
        return _low_rank.low_rank_dense(
            inputs, self.left, self.right, self.bias, self.activation
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "units": self.units,
            "rank": self.rank,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "left_initializer": keras.initializers.serialize(
                self.left_initializer
            ),
            "right_initializer": keras.initializers.serialize(
                self.right_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            "left_regularizer": keras.regularizers.serialize(
                self.left_regularizer
            ),
            "right_regularizer": keras.regularizers.serialize(
                self.right_regularizer
            ),
            "bias_regularizer": keras.regularizers.serialize(
                self.bias_regularizer
            ),
            "left_constraint": keras.constraints.serialize(
                self.left_constraint
            ),
            "right_constraint": keras.constraints.serialize(
                self.right_constraint
            ),
            "bias_constraint": keras.constraints.serialize(
                self.bias_constraint
            ),
        }
        return {**base_config, **config}

    @classmethod
    def from_dense(cls, dense, rank, **kwargs):
        """Builds a `FactorizedDense` from a trained `Dense` by truncated SVD.

        The factors are the best rank-`rank` approximation of the kernel
        (Eckart-Young), with the singular values split evenly:
        `left = U_r sqrt(S_r)`, `right = sqrt(S_r) V_r^T`. The bias,
        activation, bias settings and dtype policy are copied; the new
        layer is built. At full rank it reproduces `dense` to float32
        round-off; at rank r the relative reconstruction error
        `||W - left @ right||_F / ||W||_F` is
        `sqrt(sum(S[r:]^2) / sum(S^2))`.

        Args:
            dense: a built `keras.layers.Dense` (not quantized).
            rank: int in [1, min(input_dim, units)], or a float in (0, 1]
                (a fraction of the full rank).
            **kwargs: other `FactorizedDense` arguments (e.g. `name`),
                overriding those copied from `dense`.

        Returns:
            A built `FactorizedDense`.

        Raises:
            ValueError: if `dense` is not a `keras.layers.Dense`, is not
                built or is quantized, or on a bad `rank`.

        Example:

        >>> import numpy as np
        >>> import keras
        >>> import keras_research
        >>> dense = keras.layers.Dense(16)
        >>> x = np.random.rand(4, 8).astype("float32")
        >>> y = dense(x)
        >>> small = keras_research.layers.FactorizedDense.from_dense(
        ...     dense, rank=8)
        >>> bool(np.allclose(small(x), y, atol=1e-5))
        True
        """
        if not isinstance(dense, keras.layers.Dense):
            raise ValueError(
                "`dense` must be a `keras.layers.Dense` layer. "
                f"Received: dense={dense!r}"
            )
        if not dense.built:
            raise ValueError(
                "`dense` must be built (call it on data or `build` it) "
                "before it can be factorized. "
                f"Received: dense={dense.name!r}, which is not built"
            )
        if dense.quantization_mode is not None:
            raise ValueError(
                "`dense` must not be quantized. Received: dense with "
                f"quantization_mode={dense.quantization_mode!r}"
            )
        rank = _low_rank.validate_rank(rank)
        kernel = np.asarray(keras.ops.convert_to_numpy(dense.kernel))
        full_rank = min(kernel.shape)
        absolute = _low_rank.resolve_rank(rank, full_rank)
        if absolute > full_rank:
            raise ValueError(
                "`rank` may not exceed min(input_dim, units) = "
                f"min{kernel.shape} = {full_rank}. Received: rank={rank}"
            )
        left, right, _ = _low_rank.truncated_factors(kernel, absolute)
        config = dict(
            units=dense.units,
            rank=absolute,
            activation=dense.activation,
            use_bias=dense.use_bias,
            bias_initializer=dense.bias_initializer,
            bias_regularizer=dense.bias_regularizer,
            bias_constraint=dense.bias_constraint,
            activity_regularizer=dense.activity_regularizer,
            dtype=dense.dtype_policy,
        )
        for what in ("constraint", "regularizer"):
            if getattr(dense, f"kernel_{what}") is not None:
                warnings.warn(
                    f"The kernel {what} of {dense.name!r} does not carry "
                    "over to the factors and is dropped; pass "
                    f"`left_{what}` / `right_{what}` to set one.",
                    stacklevel=2,
                )
        config.update(kwargs)
        layer = cls(**config)
        layer.build((None, kernel.shape[0]))
        layer.left.assign(left.astype(layer.left.dtype))
        layer.right.assign(right.astype(layer.right.dtype))
        if dense.use_bias:
            layer.bias.assign(dense.bias)
        return layer


def _get(module, identifier, argument):
    """`module.get(identifier)`, re-raised naming the argument."""
    try:
        return module.get(identifier)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Could not interpret `{argument}`: {error} "
            f"Received: {argument}={identifier!r}"
        ) from None
