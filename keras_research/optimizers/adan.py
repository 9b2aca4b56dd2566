"""`Adan`: adaptive Nesterov momentum (Xie et al., 2022) on the template."""

from keras import ops

from keras_research import _checks
from keras_research._export import register
from keras_research.optimizers.custom_optimizer import CustomOptimizer


@register
class Adan(CustomOptimizer):
    """Adan: adaptive Nesterov momentum, fused by XLA.

    Adan (Xie et al., 2022) estimates the first moment, the moment of the
    gradient *difference* (a Nesterov-style look-ahead that costs no extra
    gradient evaluation), and the second moment of the look-ahead gradient.
    It trains vision and language models (ViT, ResNet, GPT-2, BERT) as well
    as or better than AdamW and LAMB at the same or a smaller budget, and is
    a good case for fusion: about three times Adam's element-wise work per
    variable, with four slots.

    With `t` the step count from 1, `g` the gradient, `g_prev` the previous
    step's gradient (`g_prev = g` at the first step) and `lr` the learning
    rate, as in the authors' reference implementation (Algorithm 1 of the
    paper, with `beta_i` here equal to `1 - beta_i` there, plus bias
    corrections):

    ```
    d = g - g_prev
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * d
    n = beta_3 * n + (1 - beta_3) * (g + beta_2 * d)**2
    step = (m / (1 - beta_1**t) + beta_2 * v / (1 - beta_2**t))
           / (sqrt(n / (1 - beta_3**t)) + epsilon)
    variable = variable - lr * step
    ```

    `weight_decay` is the decoupled decay of `keras.optimizers.Optimizer`
    (`variable -= lr * weight_decay * variable` before the step), which is
    the reference implementation's `no_prox=True` variant; the proximal
    variant (dividing by `1 + lr * weight_decay` after the step) and the
    restart condition of the paper are not implemented.

    Args:
        learning_rate: A float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the learning rate.
            Defaults to `0.001`.
        beta_1: Float in [0, 1). Decay of the first moment. Defaults to
            `0.98`.
        beta_2: Float in [0, 1). Decay of the gradient-difference moment.
            Defaults to `0.92`.
        beta_3: Float in [0, 1). Decay of the second moment. Defaults to
            `0.99`.
        epsilon: Float > 0. Added to the denominator. Defaults to `1e-8`.
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
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras_research.optimizers.Adan(1e-3),
    ...               loss="mse")
    >>> x, y = keras.random.normal((32, 3)), keras.random.normal((32, 1))
    >>> history = model.fit(x, y, epochs=2, verbose=0)
    >>> len(model.optimizer.variables)  # iteration, lr, 4 slots x 2.
    10

    References:
        - [Xie et al., 2022. Adan: Adaptive Nesterov Momentum Algorithm for
          Faster Optimizing Deep Models](https://arxiv.org/abs/2208.06677)
          (TPAMI 2024); reference implementation:
          https://github.com/sail-sg/Adan
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.98,
        beta_2=0.92,
        beta_3=0.99,
        epsilon=1e-8,
        jit_compile=True,
        name=None,
        **kwargs,
    ):
        _checks.check_unit_interval("beta_1", beta_1)
        _checks.check_unit_interval("beta_2", beta_2)
        _checks.check_unit_interval("beta_3", beta_3)
        _checks.check_positive("epsilon", epsilon)
        super().__init__(
            learning_rate=learning_rate,
            jit_compile=jit_compile,
            name=name,
            **kwargs,
        )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.beta_3 = float(beta_3)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for variable in var_list:
            for name in (
                "momentum",
                "difference_momentum",
                "second_moment",
                "previous_gradient",
            ):
                self.add_slot(variable, name)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype

        def const(value):
            return ops.convert_to_tensor(value, dtype=dtype)

        g = ops.cast(gradient, dtype)
        beta_1, beta_2, beta_3 = (
            const(self.beta_1),
            const(self.beta_2),
            const(self.beta_3),
        )

        def step_terms():
            t = ops.cast(self.iterations + 1, dtype)
            return (
                ops.cast(learning_rate, dtype),
                # At the first step there is no previous gradient: d = 0.
                ops.cast(ops.greater(t, 1), dtype),
                1 - ops.power(beta_1, t),
                1 - ops.power(beta_2, t),
                1 - ops.power(beta_3, t),
            )

        # The same for every variable of a dtype: computed once per step.
        lr, has_previous, correction_1, correction_2, correction_3 = (
            self._shared(("terms", dtype), step_terms)
        )
        m = self.get_slot(variable, "momentum")
        v = self.get_slot(variable, "difference_momentum")
        n = self.get_slot(variable, "second_moment")
        g_prev = self.get_slot(variable, "previous_gradient")

        d = (g - g_prev) * has_previous
        self.assign(m, beta_1 * m + (1 - beta_1) * g)
        self.assign(v, beta_2 * v + (1 - beta_2) * d)
        self.assign(n, beta_3 * n + (1 - beta_3) * ops.square(g + beta_2 * d))
        self.assign(g_prev, g)
        numerator = m / correction_1 + beta_2 * v / correction_2
        denominator = ops.sqrt(n / correction_3) + const(self.epsilon)
        self.assign_sub(variable, lr * numerator / denominator)

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "beta_3": self.beta_3,
            "epsilon": self.epsilon,
        }
