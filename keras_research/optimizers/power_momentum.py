"""`PowerMomentum`: the talk's research optimizer on the XLA template."""

from keras import ops

from keras_research import _checks
from keras_research._export import register
from keras_research.optimizers.custom_optimizer import CustomOptimizer


@register
class PowerMomentum(CustomOptimizer):
    """Momentum over a signed power of the gradient, fused by XLA.

    The research optimizer of the TF Dev Summit 2020 talk "Research with
    TensorFlow": a deliberately unusual rule that keeps a moving average of
    a higher-order power of the gradient and steps along it. It is the kind
    of rule real optimizers are made of (element-wise powers, signs,
    moving averages), and run op by op it is several kernel launches per
    variable; on `CustomOptimizer` XLA fuses them into one kernel per large
    variable. With `g` the gradient, `p` the `power`, `mu` the
    `momentum` and `lr` the learning rate:

    ```
    a = mu * a + (1 - mu) * sign(g) * |g|**p
    variable = variable - lr * a
    ```

    The sign keeps non-integer powers defined and the direction of descent;
    for odd integer `p` it equals `g**p`, and `power=1` is SGD with an
    exponential moving average of the gradient. Powers above 1 amplify
    large gradient components and damp small ones (below 1 the opposite).

    Args:
        learning_rate: A float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the learning rate.
            Defaults to `0.01`.
        power: Float > 0. The power `p` applied to the gradient's magnitude.
            Defaults to `2.0`.
        momentum: Float in [0, 1). Decay `mu` of the moving average.
            Defaults to `0.9`.
        jit_compile: Boolean. Whether the rule is compiled by XLA as
            described in `CustomOptimizer` (`True`, the default) or runs
            op by op (`False`).
        **kwargs: The other arguments of `keras.optimizers.Optimizer`
            (`weight_decay`, `clipnorm`, `clipvalue`, `global_clipnorm`,
            `use_ema`, `ema_momentum`, `ema_overwrite_frequency`,
            `loss_scale_factor`, `gradient_accumulation_steps`, `name`).

    Example:

    >>> import keras
    >>> import keras_research
    >>> variable = keras.Variable([1.0, 1.0])
    >>> optimizer = keras_research.optimizers.PowerMomentum(
    ...     learning_rate=1.0, power=2.0, momentum=0.5)
    >>> optimizer.apply([keras.ops.convert_to_tensor([2.0, -3.0])],
    ...                 [variable])
    >>> [float(x) for x in variable.numpy()]
    [-1.0, 5.5]
    """

    def __init__(
        self,
        learning_rate=0.01,
        power=2.0,
        momentum=0.9,
        jit_compile=True,
        name=None,
        **kwargs,
    ):
        _checks.check_positive("power", power)
        _checks.check_unit_interval("momentum", momentum)
        super().__init__(
            learning_rate=learning_rate,
            jit_compile=jit_compile,
            name=name,
            **kwargs,
        )
        self.power = float(power)
        self.momentum = float(momentum)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for variable in var_list:
            self.add_slot(variable, "average")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = self._shared(
            ("lr", dtype), lambda: ops.cast(learning_rate, dtype)
        )
        gradient = ops.cast(gradient, dtype)
        momentum = ops.convert_to_tensor(self.momentum, dtype=dtype)
        average = self.get_slot(variable, "average")
        if self.power == 1.0:
            powered = gradient
        elif self.power == 2.0:
            powered = gradient * ops.abs(gradient)
        elif self.power.is_integer() and int(self.power) % 2 == 1:
            powered = ops.power(gradient, int(self.power))
        else:
            magnitude = ops.power(
                ops.abs(gradient),
                ops.convert_to_tensor(self.power, dtype=dtype),
            )
            powered = ops.sign(gradient) * magnitude
        self.assign(average, momentum * average + (1 - momentum) * powered)
        self.assign_sub(variable, lr * average)

    def get_config(self):
        return {
            **super().get_config(),
            "power": self.power,
            "momentum": self.momentum,
        }
