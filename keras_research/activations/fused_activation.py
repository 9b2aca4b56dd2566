"""`FusedActivation` and the `fused` decorator: XLA-fused activations."""

import functools

import keras
import tensorflow as tf

from keras_research._export import register

# One instance per wrapped function, so that `fused(f) is fused(f)`, that
# deserialization returns the activation already in use and that each
# function is traced and compiled once per input signature.
_INSTANCES = {}


def _jit(python_function):
    # Wrapped in a `partial` so that TensorFlow's retracing statistics are
    # kept per activation: it keys them by code object, which the closures
    # of all `FusedActivation`s share, and would warn about "retracing"
    # when a model merely uses several fused activations.
    return tf.function(
        functools.partial(python_function),
        jit_compile=True,
        reduce_retracing=True,
    )


def _function_name(function):
    return getattr(function, "__name__", type(function).__name__)


def _registered_name(obj):
    """The name `obj` itself is registered under, or `None`."""
    try:
        name = keras.saving.get_registered_name(obj)
    except (AttributeError, TypeError):
        return None
    if keras.saving.get_registered_object(name) is obj:
        return name
    return None


@register
class FusedActivation:
    """An activation whose forward and backward passes are each one XLA call.

    Research activations are chains of tiny element-wise ops (`exp`, `log`,
    `tanh`, products). Run op by op, as Keras does in `fit` on CPU by
    default, each op reads and writes a full tensor, and the backward pass
    doubles the traffic. A `FusedActivation` compiles the function, its
    gradient and its second derivative each with
    `tf.function(jit_compile=True)` and ties them together with
    `tf.custom_gradient`, so XLA fuses every pass into one kernel whether
    or not the model around it is compiled.

    For an element-wise function (the default, `elementwise=True`) the
    forward kernel computes `y = f(x)` and the derivative `f'(x)` together
    (they share their intermediates, so this costs little more than `y`
    alone) and the backward pass is the single multiply `dy * f'(x)`. The
    price is one saved tensor of the input's size per call while a
    gradient tape holds it. With `elementwise=False` the function may be
    any shape-preserving function (e.g. one that normalizes over an axis):
    the backward pass is then a compiled vector-Jacobian product that
    recomputes the forward intermediates. An element-wise function gives
    the same values either way; a function that is not element-wise gives
    wrong gradients with `elementwise=True`.

    Build one with the `keras_research.activations.fused` decorator rather
    than calling this class. The result is a callable usable as the
    `activation=` argument of any Keras layer, in
    `keras.layers.Activation`, and as a plain function on tensors. It
    computes in the dtype of its input (`float16` and `bfloat16` inputs
    give outputs of the same dtype), propagates NaN and Inf as TensorFlow
    does, and is differentiable to any order: first and second derivatives
    are fused, higher ones differentiate the compiled second derivative.
    `tape.jacobian` and `tape.batch_jacobian` (pfor) work through it.

    The wrapped function must return a tensor of the shape and dtype of
    its input, and use only XLA-compilable TensorFlow (or `keras.ops`) ops
    and no variables.

    Serialization: a layer using a fused activation saves and loads
    (`.keras`, `safe_mode=True`) when Keras can find the activation by
    name. Register either the fused activation or the function it wraps:

    ```python
    @keras.saving.register_keras_serializable(package="my_research")
    @keras_research.activations.fused
    def bent_swish(x):
        return x * tf.sigmoid(x) + 0.1 * x
    ```

    Built-in Keras activations need no registration
    (`fused(keras.activations.silu)` saves as is). A lambda or an
    unregistered function is refused with a `ValueError` when the model is
    saved (at `get_config()`), rather than producing a file that cannot be
    loaded.

    Args:
        function: callable. The function of one floating-point tensor to
            fuse; it returns a tensor of the same shape and dtype.
        elementwise: bool. Whether `function` acts on each element
            independently, so that its backward pass can reuse the
            derivative computed by the forward kernel. Defaults to `True`.

    Attributes:
        function: the wrapped (unfused) function.
        elementwise: the `elementwise` argument.

    Raises:
        ValueError: if `function` is not callable or `elementwise` not a
            bool; when called, if the
            input is not a floating-point tensor or the function changes
            the shape or dtype; from `get_config()`, if the activation
            cannot be found by name when loading.

    Example:

    >>> import tensorflow as tf
    >>> @keras_research.activations.fused
    ... def shifted_silu(x):
    ...     return x * tf.sigmoid(x) - 0.1
    >>> y = shifted_silu(tf.constant([-1.0, 0.0, 1.0]))
    >>> [round(float(v), 4) for v in y]
    [-0.3689, -0.1, 0.6311]
    >>> layer = keras.layers.Dense(4, activation=shifted_silu)
    """

    def __init__(self, function, elementwise=True):
        if isinstance(function, FusedActivation):
            function = function.function
        if not isinstance(elementwise, bool):
            raise ValueError(
                "`elementwise` must be a bool. Received: "
                f"elementwise={elementwise!r}"
            )
        self.elementwise = elementwise
        if not callable(function):
            raise ValueError(
                "`function` must be a callable taking one tensor and "
                "returning a tensor of the same shape and dtype. Received: "
                f"function={function!r} of type {type(function).__name__}"
            )
        self.function = function
        self.__name__ = _function_name(function)
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__module__ = getattr(function, "__module__", __name__)
        self.__wrapped__ = function
        if getattr(function, "__doc__", None):
            self.__doc__ = function.__doc__
        self._build()

    def _build(self):
        function = self.function
        name = self.__name__

        def forward(x):
            y = function(x)
            if not tf.is_tensor(y):
                raise ValueError(
                    f"The function `{name}` wrapped by `fused` must return "
                    "a tensor of the shape and dtype of its input. "
                    f"Received: a return value of type {type(y).__name__}"
                )
            if y.dtype != x.dtype or not y.shape.is_compatible_with(x.shape):
                raise ValueError(
                    f"The function `{name}` wrapped by `fused` must return "
                    "a tensor of the shape and dtype of its input. "
                    f"Received: input shape={x.shape} dtype={x.dtype.name}, "
                    f"output shape={y.shape} dtype={y.dtype.name}"
                )
            return y

        def value_and_derivative(x):
            # For an element-wise function, the gradient of sum(y) is the
            # derivative f'(x): one kernel computes y and f'(x) together,
            # sharing their intermediates.
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = forward(x)
            return y, tape.gradient(y, x)

        def backward(x, dy):
            # The vector-Jacobian product dy^T J(x), derived by TensorFlow
            # from `function` and compiled together with it.
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = forward(x)
            return tape.gradient(y, x, output_gradients=dy)

        def backward_of_backward(x, dy, g):
            with tf.GradientTape() as tape:
                tape.watch([x, dy])
                dx = backward(x, dy)
            gx, gdy = tape.gradient(
                dx,
                [x, dy],
                output_gradients=g,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            return gx, gdy

        self._forward = _jit(forward)
        self._value_and_derivative = _jit(value_and_derivative)
        self._backward = _jit(backward)
        self._backward_of_backward = _jit(backward_of_backward)
        fused_backward2 = self._backward_of_backward
        fused_backward = self._backward
        fused_forward = self._forward
        fused_value_and_derivative = self._value_and_derivative

        def backward_op(x, dy, derivative=None):
            # The backward pass, itself differentiable: its own gradient
            # (the second derivative) is one compiled call. For element-wise
            # functions it is `dy * f'(x)` with f'(x) saved by the forward
            # kernel (one multiply); otherwise a compiled VJP.
            @tf.custom_gradient
            def op(x, dy):
                def grad(g):
                    return fused_backward2(x, dy, g)

                if derivative is not None:
                    return dy * derivative, grad
                return fused_backward(x, dy), grad

            return op(x, dy)

        # The forward calls below stay visible to gradient tapes on purpose.
        # Hiding them (tf.stop_gradient on their inputs) would make eager
        # calls under a tape ~2x faster (TensorFlow then skips the variant
        # of the tf.function that outputs intermediates), but pfor (used by
        # tape.jacobian) drops custom gradients when it vectorizes and then
        # differentiates these very ops: second derivatives through
        # Jacobians (the JacobianRegularizer) would silently be wrong.
        if self.elementwise:

            @tf.custom_gradient
            def activation_op(x):
                y, derivative = fused_value_and_derivative(x)

                def grad(dy):
                    return backward_op(x, dy, derivative)

                return y, grad

        else:

            @tf.custom_gradient
            def activation_op(x):
                def grad(dy):
                    return backward_op(x, dy)

                return fused_forward(x), grad

        self._activation_op = activation_op

    def __call__(self, x):
        if isinstance(x, keras.KerasTensor):
            raise ValueError(
                f"The fused activation `{self.__name__}` cannot be called on "
                "a symbolic `keras.KerasTensor`. In a functional model, "
                "use it through a layer: `keras.layers.Activation("
                f"{self.__name__})` or `activation={self.__name__}`. "
                f"Received: x={x}"
            )
        if isinstance(x, (tf.RaggedTensor, tf.SparseTensor)):
            raise ValueError(
                f"The fused activation `{self.__name__}` accepts dense "
                "tensors only; for a `tf.RaggedTensor` of element-wise "
                "values use `tf.ragged.map_flat_values(activation, x)`. "
                f"Received: x of type {type(x).__name__}"
            )
        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            raise ValueError(
                f"The fused activation `{self.__name__}` accepts "
                "floating-point tensors (float16, bfloat16, float32, "
                f"float64) only. Received: x with dtype {x.dtype.name}"
            )
        return self._activation_op(x)

    def get_config(self):
        """Returns the name Keras finds this activation by when loading.

        Raises:
            ValueError: if the activation wraps a lambda or a function that
                neither it nor its wrapped function is registered under.
        """
        name = _registered_name(self)
        if name is not None:
            return {"activation": name}
        function = self.function
        if getattr(function, "__name__", None) == "<lambda>":
            raise ValueError(
                "A fused activation built from a lambda cannot be saved: "
                "a lambda has no name to load it by, and loading code from "
                "a file is unsafe. Define it with `def` and register it: "
                "put `@keras.saving.register_keras_serializable(package="
                '"my_package")` above `@keras_research.activations.fused`. '
                f"Received: function={function!r}"
            )
        try:
            function_config = keras.saving.serialize_keras_object(function)
            restored = keras.saving.deserialize_keras_object(function_config)
        except Exception:  # any failure means: not loadable by name
            restored = None
        if restored is not function:
            raise ValueError(
                f"The fused activation `{self.__name__}` cannot be saved "
                "because Keras could not load it back by name. Register it: "
                "put `@keras.saving.register_keras_serializable(package="
                '"my_package")` above `@keras_research.activations.fused` '
                "(or register the wrapped function). Received: "
                f"function={function!r}"
            )
        config = {"function": function_config}
        if not self.elementwise:
            config["elementwise"] = False
        return config

    @classmethod
    def from_config(cls, config):
        if "activation" in config:
            obj = keras.saving.get_registered_object(config["activation"])
            if not isinstance(obj, FusedActivation):
                raise ValueError(
                    "Could not find the fused activation registered as "
                    f"'{config['activation']}'. Import the module that "
                    "defines and registers it before loading. Received: "
                    f"config={config}"
                )
            return obj
        if "function" not in config:
            raise ValueError(
                "A `FusedActivation` config must have the key 'activation' "
                f"or 'function'. Received: config={config}"
            )
        function = keras.saving.deserialize_keras_object(config["function"])
        return fused(function, elementwise=config.get("elementwise", True))

    def __repr__(self):
        return f"<FusedActivation {self.__name__}>"

    # Activations are stateless: copies (e.g. `copy.deepcopy(layer)`) share
    # the instance and its compiled functions.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (FusedActivation.from_config, (self.get_config(),))


def fused(function, *, elementwise=True):
    """Fuses an element-wise activation into one XLA kernel per pass.

    Use as a decorator on a function of one tensor. The returned
    `FusedActivation` runs the function's forward pass (together with its
    derivative) and its second derivative each as one
    `tf.function(jit_compile=True)` call (one fused XLA kernel for
    element-wise chains), and the backward pass as one multiply, whether
    or not the surrounding model or `tf.function` is compiled. It works as the
    `activation=` of any Keras layer, in `keras.layers.Activation` and as a
    plain function; see `FusedActivation` for dtypes, derivatives and
    serialization. Calling `fused` twice on one function returns the same
    object.

    To save models that use your activation in `.keras` files loadable with
    `safe_mode=True`, register it (decorator order matters: registration
    goes on top):

    ```python
    @keras.saving.register_keras_serializable(package="my_research")
    @keras_research.activations.fused
    def bent_swish(x):
        return x * tf.sigmoid(x) + 0.1 * x
    ```

    Args:
        function: callable. A function of one floating-point tensor that
            returns a tensor of the same shape and dtype, written with
            XLA-compilable TensorFlow (or `keras.ops`) ops.
        elementwise: bool. `True` (the default) for element-wise
            functions: the forward kernel also computes the derivative and
            the backward pass is one multiply. Pass `False` for
            shape-preserving functions that mix elements (e.g.
            `x - reduce_mean(x, axis=-1)`); their backward pass is a
            compiled vector-Jacobian product.

    Returns:
        A `FusedActivation` wrapping `function`.

    Raises:
        ValueError: if `function` is not callable or `elementwise` is not
            a bool.

    Example:

    >>> import tensorflow as tf
    >>> @keras_research.activations.fused
    ... def softsign_shift(x):
    ...     return x / (1.0 + tf.abs(x)) + 0.5
    >>> x = tf.constant([-1.0, 1.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = softsign_shift(x)
    >>> [float(v) for v in tape.gradient(y, x)]
    [0.25, 0.25]
    """
    if isinstance(function, FusedActivation):
        if function.elementwise == elementwise:
            return function
        function = function.function
    if not callable(function):
        raise ValueError(
            "`function` must be a callable taking one tensor and returning "
            "a tensor of the same shape and dtype. Received: "
            f"function={function!r} of type {type(function).__name__}"
        )
    if not isinstance(elementwise, bool):
        raise ValueError(
            "`elementwise` must be a bool. Received: "
            f"elementwise={elementwise!r}"
        )
    key = (function, elementwise)
    try:
        instance = _INSTANCES.get(key)
    except TypeError:  # unhashable callable: do not cache
        return FusedActivation(function, elementwise=elementwise)
    if instance is None:
        instance = FusedActivation(function, elementwise=elementwise)
        _INSTANCES[key] = instance
    return instance
