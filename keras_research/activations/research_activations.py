"""Ready research activations, fused with `activations.fused`.

Each public name here is a `FusedActivation` registered under
`keras_research>name`, so models using it save and load with
`safe_mode=True`. The unfused, op-by-op TensorFlow function is available as
`.function` (for example `gelu_tanh.function`) for comparison. Keras also
resolves each by that name as a string: `activation="keras_research>mish"`,
`keras.layers.Activation("keras_research>mish")`,
`keras.activations.get("keras_research>mish")`.
"""

import math

import tensorflow as tf

from keras_research._export import register
from keras_research.activations import _activation_names
from keras_research.activations.fused_activation import fused

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# Beyond this |x| the tanh in `gelu_tanh` is exactly +-1 in every float
# dtype; clipping its argument there keeps `x**3` (and its gradient) finite
# in float16, where 1e4**3 overflows. The clip is a `tf.where` on `|x| > 10`
# rather than `tf.clip_by_value`: XLA before TF 2.21 maps NaN to a finite
# value in the `clamp` that `clip_by_value` compiles to, which made the
# fused gradient at NaN 0.0. A comparison with NaN is false, so `tf.where`
# passes NaN (and its gradient) through on every version.
_GELU_CLIP = 10.0


@register
@fused
def gelu_tanh(x):
    """Gaussian error linear unit, tanh approximation (fused).

    `gelu_tanh(x) = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))`

    The approximation used by BERT and GPT-2. For `|x| > 10` the tanh is
    exactly +-1 in every float dtype, so its argument is computed from `x`
    clipped to [-10, 10]: the result is unchanged and the cube cannot
    overflow in float16. NaN propagates to the value and the gradient.

    Args:
        x: floating-point tensor.

    Returns:
        A tensor of the shape and dtype of `x`.

    Example:

    >>> y = keras_research.activations.gelu_tanh(tf.constant([-1.0, 2.0]))
    >>> [round(float(v), 4) for v in y]
    [-0.1588, 1.9546]

    References:
        - [Hendrycks and Gimpel, 2016](https://arxiv.org/abs/1606.08415)
    """
    xc = tf.where(tf.abs(x) > _GELU_CLIP, tf.sign(x) * _GELU_CLIP, x)
    inner = _SQRT_2_OVER_PI * (xc + 0.044715 * xc * xc * xc)
    return 0.5 * x * (1.0 + tf.tanh(inner))


# Above this x, tanh(softplus(x)) = 1 - 2 / (n (n + 2) + 2) is exactly 1
# in float32 and float64 (1 - 1e-17).
_MISH_LIMIT = 20.0


@register
@fused
def mish(x):
    """Mish: a self-regularized non-monotonic activation (fused).

    `mish(x) = x * tanh(softplus(x))`

    Computed as `x * n (n + 2) / (n (n + 2) + 2)` with `n = exp(x)`, the
    same function with one `exp` and one division instead of `softplus`
    and `tanh` (XLA's CPU `softplus` is about 3x slower than its `exp`).
    `exp` is evaluated at `min(x, 20)`, past which the factor is exactly 1
    and `mish(x) = x`: nothing overflows. float16 and bfloat16 inputs are
    computed in float32 inside the fused kernel (float16 would overflow in
    `n (n + 2)`) and returned in their own dtype.

    Args:
        x: floating-point tensor.

    Returns:
        A tensor of the shape and dtype of `x`.

    Example:

    >>> y = keras_research.activations.mish(tf.constant([-1.0, 2.0]))
    >>> [round(float(v), 4) for v in y]
    [-0.3034, 1.944]

    References:
        - [Misra, 2019](https://arxiv.org/abs/1908.08681)
    """
    half = x.dtype in (tf.float16, tf.bfloat16)
    xf = tf.cast(x, tf.float32) if half else x
    n = tf.exp(tf.minimum(xf, _MISH_LIMIT))
    p = n * (n + 2.0)
    y = tf.where(xf > _MISH_LIMIT, xf, xf * p / (p + 2.0))
    return tf.cast(y, x.dtype) if half else y


@register
@fused
def silu(x):
    """Sigmoid linear unit, also called Swish with beta = 1 (fused).

    `silu(x) = x * sigmoid(x)`

    Args:
        x: floating-point tensor.

    Returns:
        A tensor of the shape and dtype of `x`.

    Example:

    >>> y = keras_research.activations.silu(tf.constant([-1.0, 2.0]))
    >>> [round(float(v), 4) for v in y]
    [-0.2689, 1.7616]

    References:
        - [Elfwing et al., 2017](https://arxiv.org/abs/1702.03118)
        - [Ramachandran et al., 2017](https://arxiv.org/abs/1710.05941)
    """
    return x * tf.sigmoid(x)


@register
@fused
def snake(x):
    """Snake: a periodic activation with a linear trend (fused, a = 1).

    `snake(x) = x + sin(x)^2`, the paper's `x + sin^2(a x) / a` at the
    frequency `a = 1`. It extrapolates periodic functions that ReLU and
    tanh networks cannot.

    Performance note: XLA's CPU `sin` is several times slower than
    TensorFlow's (measured here: forward+backward at 4096x1024 about 4x
    slower), so on CPU the fused Snake is slower than `snake.function`
    run op by op; fusion pays on GPU and for activations built from
    `exp`, `log`, `tanh` and arithmetic.

    Args:
        x: floating-point tensor.

    Returns:
        A tensor of the shape and dtype of `x`.

    Example:

    >>> y = keras_research.activations.snake(tf.constant([-1.0, 2.0]))
    >>> [round(float(v), 4) for v in y]
    [-0.2919, 2.8268]

    References:
        - [Liu Ziyin et al., 2020](https://arxiv.org/abs/2006.08195)
    """
    s = tf.sin(x)
    return x + s * s


@register
@fused
def silu_softplus_tanh_squared(x):
    """The talk's deliberately odd activation, fused.

    `x * sigmoid(x) + 0.1 * log1p(exp(-|x|)) - tanh(x)^2`: SiLU, plus a
    tenth of the softplus of `-|x|`, minus the squared tanh. The TF Dev
    Summit 2020 talk "Research with TensorFlow" used it as an example of
    the many tiny element-wise ops that activation research writes, and of
    what compiling them with XLA buys. `exp(-|x|)` never overflows, so it
    is safe for any finite input.

    Args:
        x: floating-point tensor.

    Returns:
        A tensor of the shape and dtype of `x`.

    Example:

    >>> y = keras_research.activations.silu_softplus_tanh_squared(
    ...     tf.constant([-1.0, 2.0]))
    >>> [round(float(v), 4) for v in y]
    [-0.8176, 0.8449]
    """
    return (
        x * tf.sigmoid(x)
        + 0.1 * tf.math.log1p(tf.exp(-tf.abs(x)))
        - tf.square(tf.tanh(x))
    )


# `keras.activations.get("keras_research>gelu_tanh")` and
# `keras.layers.Activation("keras_research>gelu_tanh")` find these by name.
_activation_names.add_names(
    [gelu_tanh, mish, silu, silu_softplus_tanh_squared, snake]
)
