"""`Adam` written on the `CustomOptimizer` template (XLA-fused update)."""

import math

import keras
import tensorflow as tf
from keras import ops

from keras_research import _checks
from keras_research._export import register
from keras_research.optimizers.custom_optimizer import CustomOptimizer


@register
class Adam(CustomOptimizer):
    """Adam, fused by XLA: a drop-in replacement for `keras.optimizers.Adam`.

    Same arguments, defaults, slot variables (and so the same saved layout)
    and arithmetic as `keras.optimizers.Adam`: swap it in by changing one
    import. The update of the large variables runs in XLA-compiled calls
    (see `keras_research.optimizers.CustomOptimizer`), which makes `fit`
    faster where the update is a real share of the step (wide dense
    layers, large embedding tables) and leaves other models as fast as with
    Keras's Adam; `benchmarks/RESULTS.md` has the measured `fit` speed-ups
    per model on CPU. With `t` the step count from 1, `g` the gradient and
    `lr` the learning rate:

    ```
    m = m + (g - m) * (1 - beta_1)
    v = v + (g**2 - v) * (1 - beta_2)
    v_hat = maximum(v_hat, v)               # amsgrad=True only
    alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    variable = variable - alpha * m / (sqrt(v or v_hat) + epsilon)
    ```

    `epsilon` is "epsilon hat" of Kingma and Ba (the formula just before
    their Section 2.1), as in Keras.

    `fused_kernel=True` trades Keras 3's exact arithmetic for speed: every
    variable of 131,072 (2**17) elements or more is updated in place by
    TensorFlow's native `ResourceApplyAdam` kernel
    (`ResourceApplyAdamWithAmsgrad` with `amsgrad=True`), the kernel
    `tf.keras` 2's Adam used: one multi-threaded kernel per variable that
    starts as soon as that variable's gradient is ready; smaller variables
    run the same arithmetic op by op (a kernel launch costs them more than
    it saves), and nothing is XLA-compiled. In `fit` on CPU this is
    the fastest Adam here (on a 20 x Dense(512) MLP it removes
    most of the step time Keras's Adam spends beyond plain SGD; numbers in
    `benchmarks/RESULTS.md`). The formula is the one above, but the
    kernel computes `1 - beta_1` and `1 - beta_2` in the variable's dtype
    from the betas rounded to it, as `tf.keras` 2 did, where Keras 3
    rounds `1 - beta` computed in double: in float32, `1 - 0.999` becomes
    0.00099998713 instead of 0.00100000005 (as if `beta_2` were
    0.99900001). After 100 steps the weights differ from Keras 3's Adam by
    about 3e-7 (absolute, at learning rate 1e-3), ten times the difference
    of the default path; with betas whose `1 - beta` is exact in float32
    (0.5, 0.75, 0.875, ...) the two agree. Slots, saved layout and every
    base feature are unchanged. Only float32 and float64 variables use the
    kernel (in float16 and bfloat16 its `1 - beta` is far off); others,
    such as the weights of a `"float16"` dtype policy, keep the rule above.

    Parity with `keras.optimizers.Adam` (`fused_kernel=False`, the
    default): for dense gradients (every weight
    of `Dense`, convolution, normalization and attention layers) the
    results equal Keras's to float32 rounding (1e-6 after 100 steps, tested),
    with every base feature (schedules, weight decay, clipping, EMA,
    gradient accumulation, loss scaling, `MirroredStrategy`). For a sparse
    `tf.IndexedSlices` gradient (an `Embedding` or `tf.gather`), rows looked
    up once in the batch also match, but a row whose id is repeated in a
    batch differs: Keras's Adam adds each occurrence's `g_i` to `m` and each
    `g_i**2` to `v` separately, so an id seen twice with the same `g` moves
    `sqrt(2)` times as far as one seen once; this Adam densifies the gradient
    first (`g = sum_i g_i`) and applies Adam to that true gradient, exactly
    as Keras's Adam does for the same gradient passed dense. The Keras
    result is an artifact of the sparse representation, not Adam.

    Args:
        learning_rate: A float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the learning rate.
            Defaults to `0.001`.
        beta_1: Float in [0, 1). Decay rate of the first-moment estimates.
            Defaults to `0.9`.
        beta_2: Float in [0, 1). Decay rate of the second-moment estimates.
            Defaults to `0.999`.
        epsilon: Float > 0. Small constant for numerical stability.
            Defaults to `1e-7`.
        amsgrad: Boolean. Whether to apply the AMSGrad variant ("On the
            Convergence of Adam and Beyond"). Defaults to `False`.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
            ema_momentum, ema_overwrite_frequency, loss_scale_factor,
            gradient_accumulation_steps, name: The arguments of
            `keras.optimizers.Optimizer`, with the same meaning and
            defaults (see `keras.optimizers.Adam`).
        jit_compile: Boolean. Whether the rule is compiled by XLA as
            described in `CustomOptimizer` (`True`, the default) or runs
            op by op (`False`). Ignored with `fused_kernel=True`.
        fused_kernel: Boolean. If `True`, float32 and float64 variables
            use `tf.keras` 2's rounding of `1 - beta`, and those of 2**17
            elements or more are updated by TensorFlow's native fused Adam
            kernel (see above). Defaults to `False`: Keras 3's arithmetic.

    Example:

    >>> import keras
    >>> import keras_research
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras_research.optimizers.Adam(1e-3),
    ...               loss="mse")
    >>> x, y = keras.random.normal((32, 3)), keras.random.normal((32, 1))
    >>> history = model.fit(x, y, epochs=2, verbose=0)
    >>> int(model.optimizer.iterations)
    2

    References:
        - [Kingma and Ba, 2014](https://arxiv.org/abs/1412.6980)
        - [Reddi et al., 2018](https://openreview.net/pdf?id=ryQu7f-RZ)
          for `amsgrad`.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        jit_compile=True,
        fused_kernel=False,
        **kwargs,
    ):
        _checks.check_unit_interval("beta_1", beta_1)
        _checks.check_unit_interval("beta_2", beta_2)
        _checks.check_positive("epsilon", epsilon)
        _checks.check_bool("amsgrad", amsgrad)
        _checks.check_bool("fused_kernel", fused_kernel)
        super().__init__(
            learning_rate=learning_rate,
            jit_compile=jit_compile,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.amsgrad = amsgrad
        self.fused_kernel = fused_kernel

    def _compiles_update(self):
        # The native kernel is already fused: no XLA calls around it.
        return self.jit_compile and not self.fused_kernel

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # Same creation order (and so the same saved layout) as Keras Adam:
        # momentum and velocity interleaved, then the velocity hats.
        for variable in var_list:
            self.add_slot(variable, "momentum")
            self.add_slot(variable, "velocity")
        if self.amsgrad:
            for variable in var_list:
                self.add_slot(variable, "velocity_hat")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        m = self.get_slot(variable, "momentum")
        v = self.get_slot(variable, "velocity")

        def step_size():
            lr = ops.cast(learning_rate, dtype)
            local_step = ops.cast(self.iterations + 1, dtype)
            beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
            beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
            return lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

        # The same for every variable of a dtype: computed once per step.
        alpha = self._shared(("alpha", dtype), step_size)
        one_minus_beta_1, one_minus_beta_2 = 1 - self.beta_1, 1 - self.beta_2
        if self.fused_kernel and tf.as_dtype(dtype) in _FUSED_DTYPES:
            if math.prod(variable.shape) >= self._op_by_op_below:
                self._apply_fused_kernel(gradient, variable, m, v, alpha)
                return
            # A small variable's few ops cost less than a kernel launch:
            # the kernel's arithmetic (`1 - beta` in `dtype`), op by op.
            one_minus_beta_1, one_minus_beta_2 = self._shared(
                ("kernel_one_minus_betas", dtype),
                lambda: (
                    tf.constant(1, dtype) - tf.constant(self.beta_1, dtype),
                    tf.constant(1, dtype) - tf.constant(self.beta_2, dtype),
                ),
            )
        self.assign_add(
            m, ops.multiply(ops.subtract(gradient, m), one_minus_beta_1)
        )
        self.assign_add(
            v,
            ops.multiply(
                ops.subtract(ops.square(gradient), v), one_minus_beta_2
            ),
        )
        if self.amsgrad:
            v_hat = self.get_slot(variable, "velocity_hat")
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        self.assign_sub(
            variable,
            ops.divide(
                ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)
            ),
        )

    def _apply_fused_kernel(self, gradient, variable, m, v, alpha):
        dtype = variable.dtype

        def constants():
            # With both beta powers 0 the kernel's step size is `lr`
            # exactly, so passing Keras's `alpha` as `lr` keeps Keras's
            # step size.
            return dict(
                beta1_power=tf.zeros((), dtype),
                beta2_power=tf.zeros((), dtype),
                beta1=tf.constant(self.beta_1, dtype),
                beta2=tf.constant(self.beta_2, dtype),
                epsilon=tf.constant(self.epsilon, dtype),
            )

        # Once per step and dtype, not once per variable (graph nodes).
        args = dict(
            self._shared(("fused_kernel_constants", dtype), constants),
            var=_handle(variable),
            m=_handle(m),
            v=_handle(v),
            lr=alpha,
            grad=gradient,
        )
        if self.amsgrad:
            v_hat = self.get_slot(variable, "velocity_hat")
            tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=_handle(v_hat), **args)
        else:
            tf.raw_ops.ResourceApplyAdam(**args)

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "amsgrad": self.amsgrad,
            "fused_kernel": self.fused_kernel,
        }


# In float16 and bfloat16, the kernel's `1 - beta` is far off (bfloat16
# rounds 0.999 to 1): those variables keep the rule above.
_FUSED_DTYPES = (tf.float32, tf.float64)


def _handle(variable):
    """The resource handle of a `keras.Variable` or `tf.Variable`.

    Under `tf.distribute`, inside the optimizer's per-device update, this is
    the handle of that device's copy.
    """
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle
