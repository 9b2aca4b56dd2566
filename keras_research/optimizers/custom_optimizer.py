"""`CustomOptimizer`: a template that runs a per-variable rule fused by XLA."""

import math

import keras
import tensorflow as tf

from keras_research import _checks
from keras_research._export import register
from keras_research._xla import in_xla_context
from keras_research.optimizers._update_plan import densify, plan_updates


def _check_learning_rate(learning_rate):
    """Validates `learning_rate` and returns it (ints become floats)."""
    if isinstance(
        learning_rate, keras.optimizers.schedules.LearningRateSchedule
    ):
        return learning_rate
    if isinstance(learning_rate, bool):
        pass  # Falls through to the error below.
    elif isinstance(learning_rate, (int, float)):
        if math.isfinite(learning_rate) and learning_rate >= 0:
            return float(learning_rate)
    elif callable(learning_rate):
        return learning_rate
    raise ValueError(
        "`learning_rate` must be a finite float >= 0, a "
        "`keras.optimizers.schedules.LearningRateSchedule`, or a callable "
        "taking no arguments that returns the learning rate. "
        f"Received: learning_rate={learning_rate!r}"
    )


@register
class CustomOptimizer(keras.optimizers.Optimizer):
    """Template for optimizers whose update rule XLA fuses into few kernels.

    Optimizer research means many small element-wise operations per variable.
    Run op by op they are slow (each op is a separate kernel launch that reads
    and writes memory), which is why production optimizers are hand-fused
    kernels. `CustomOptimizer` lets you write the update rule with plain,
    readable `keras.ops` / `tf` operations, and runs the rule of the large
    variables in `tf.function(jit_compile=True)` calls, so that XLA fuses
    the element-wise operations into a few kernels.

    A subclass writes only:

    - its hyperparameters in `__init__` (call `super().__init__(...)` first),
    - `build(var_list)`: call `super().build(var_list)`, then create its
      per-variable state with `self.add_slot(variable, "name")`,
    - `update_step(gradient, variable, learning_rate)`: the rule for one
      variable, using `self.get_slot(variable, "name")`, `self.assign`,
      `self.assign_add`, `self.assign_sub` and `self.iterations`,
    - `get_config()`.

    Everything else of `keras.optimizers.Optimizer` keeps working, with
    Keras's own code: learning rate schedules, `weight_decay` and
    `exclude_from_weight_decay`, `clipnorm` / `clipvalue` /
    `global_clipnorm`, `use_ema`, `gradient_accumulation_steps`,
    `keras.optimizers.LossScaleOptimizer`, `tf.distribute.MirroredStrategy`,
    variable constraints, and both compiled and uncompiled
    (`run_eagerly=True`) train steps. The template replaces one step of
    Keras's `apply`: the loop that calls `update_step` for every variable.

    What is compiled, with `jit_compile=True` (the default):

    - in a train step that is itself XLA-compiled
      (`model.compile(jit_compile=True)`), nothing separately: the rule is
      traced inline and XLA fuses it with the rest of the step;
    - otherwise, variables of 131,072 (2**17) elements or more (embedding
      tables, wide layers such as a 512 x 512 `Dense` kernel) are updated
      by compiled calls over buckets of about 4 M elements, the last
      layers' variables first (their gradients are ready first); smaller
      variables run op by op, as in Keras. One function is traced per
      bucket (and per replica device), once for a whole `fit`. Variables
      are captured by the compiled functions, gradients and the learning
      rate are passed as tensors.

    Why the threshold: in a `fit` step that is not compiled as a whole,
    Keras's op-by-op update of a variable starts as soon as its gradient is
    ready and overlaps the rest of the backward pass, while a compiled call
    waits for its whole bucket and hands its work to XLA's runtime. On CPU
    that costs more than fusion saves for small variables (convolution
    kernels, narrow layers) and less for large ones (profile and
    measurements in `benchmarks/RESULTS.md`, "Optimizers in `fit`").

    The built-in rules also compute the terms that are the same for every
    variable (cast learning rate, bias corrections) once per step and
    dtype, where Keras's optimizers recompute them for each variable: on a
    deep model of many small variables this removes most of the update's
    ops, with the same values.

    Sparse gradients: a `tf.IndexedSlices` gradient (from an `Embedding` or
    `tf.gather`) is **densified** first with `tf.math.unsorted_segment_sum`
    (rows of repeated indices are summed), and the dense rule is applied to
    the true gradient (moments of rows that were not looked up still decay,
    as in Keras). Keras's built-in optimizers apply their rule to the
    `IndexedSlices` rows instead, which differs for rows looked up more than
    once in a batch (see `keras_research.optimizers.Adam`). Densifying keeps
    the compiled function's input shapes static (XLA compiles once), at the
    cost of one dense buffer the size of the variable per step.

    Non-finite gradients are not special-cased, as in Keras: a `nan` or
    `inf` gradient is applied and propagates into the slots and the
    variable. Wrap the optimizer in `keras.optimizers.LossScaleOptimizer`
    (as `fit` does under a `mixed_float16` policy) to skip such steps.

    Args:
        learning_rate: A float >= 0, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the learning rate.
            Defaults to `0.001`.
        jit_compile: Boolean. If `True` (the default), the rule is compiled
            by XLA as described above. If `False`, the same rule runs op by
            op for every variable, uncompiled (useful for debugging with
            `run_eagerly=True`, and as a baseline).
        name: String. The name of the optimizer. Defaults to the class
            name in snake case.
        **kwargs: The other arguments of `keras.optimizers.Optimizer`,
            with the same meaning and defaults: `weight_decay`, `clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
            `ema_overwrite_frequency`, `loss_scale_factor` and
            `gradient_accumulation_steps`.

    Example:

    >>> import keras
    >>> from keras import ops
    >>> import keras_research
    >>> class MomentumSGD(keras_research.optimizers.CustomOptimizer):
    ...     def __init__(self, learning_rate=0.01, momentum=0.9, **kwargs):
    ...         super().__init__(learning_rate=learning_rate, **kwargs)
    ...         self.momentum = momentum
    ...     def build(self, var_list):
    ...         if self.built:
    ...             return
    ...         super().build(var_list)
    ...         for variable in var_list:
    ...             self.add_slot(variable, "velocity")
    ...     def update_step(self, gradient, variable, learning_rate):
    ...         lr = ops.cast(learning_rate, variable.dtype)
    ...         velocity = self.get_slot(variable, "velocity")
    ...         self.assign(velocity, self.momentum * velocity + gradient)
    ...         self.assign_sub(variable, lr * velocity)
    ...     def get_config(self):
    ...         return {**super().get_config(), "momentum": self.momentum}
    >>> variable = keras.Variable([1.0, 2.0])
    >>> optimizer = MomentumSGD(learning_rate=0.1)
    >>> optimizer.apply([ops.convert_to_tensor([1.0, 1.0])], [variable])
    >>> [round(float(x), 4) for x in variable.numpy()]
    [0.9, 1.9]
    """

    # Variables with fewer elements run op by op (see the class docstring;
    # `tests/optimizers/conftest.py` lowers it to test both paths).
    _op_by_op_below = 2**17
    # Target number of elements per compiled call.
    _bucket_elements = 2**22

    def __init__(
        self,
        learning_rate=0.001,
        jit_compile=True,
        name=None,
        **kwargs,
    ):
        if type(self).update_step is CustomOptimizer.update_step:
            raise TypeError(
                f"{type(self).__name__} subclasses CustomOptimizer but does "
                "not implement `update_step(self, gradient, variable, "
                "learning_rate)`, the per-variable update rule. Received: a "
                f"class {type(self).__name__} without `update_step`."
            )
        learning_rate = _check_learning_rate(learning_rate)
        _checks.check_bool("jit_compile", jit_compile)
        weight_decay = kwargs.get("weight_decay")
        if weight_decay is not None:
            _checks.check_non_negative("weight_decay", weight_decay)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.jit_compile = jit_compile
        # Python-side bookkeeping in a plain object, so that neither Keras
        # nor TF checkpoint tracking sees it (the slots themselves are
        # tracked by `add_variable`, in creation order).
        self._fused = _Bookkeeping()

    # ------------------------------------------------------------------
    # Slots: the one slot API of the template.

    def add_slot(self, variable, name, initializer="zeros"):
        """Creates one optimizer variable ("slot") shaped like `variable`.

        Call it from `build`, after `super().build(var_list)`. Slots are
        saved in creation order, so creating them variable by variable
        (`for v in var_list: add_slot(v, "m"); add_slot(v, "v")`) gives the
        layout of Keras's `add_optimizer_variables(var_list, ["m", "v"])`.
        A variable with `overwrite_with_gradient=True` gets no slot (Keras
        assigns its gradient directly and never calls `update_step` for it):
        `add_slot` returns `None`, as `add_optimizer_variables` does.

        Args:
            variable: one of the variables passed to `build`.
            name: string. The slot's name, e.g. `"momentum"`.
            initializer: initializer name or instance. Defaults to
                `"zeros"`.

        Returns:
            The new `keras.Variable` (or `None`, see above).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"`name` must be a non-empty string. Received: name={name!r}"
            )
        index = self._index_of(variable)
        slots = self._fused.slots.get(name)
        if slots is None:
            slots = [None] * len(self._trainable_variables)
            self._fused.slots[name] = slots
        if slots[index] is not None:
            raise ValueError(
                f"Slot {name!r} already exists for variable "
                f"{self._describe(variable)}. Received: name={name!r}"
            )
        if getattr(variable, "overwrite_with_gradient", False):
            return None
        slot = self.add_variable_from_reference(
            variable, name=name, initializer=initializer
        )
        slots[index] = slot
        return slot

    def get_slot(self, variable, name):
        """Returns the slot `name` created for `variable` by `add_slot`."""
        index = self._index_of(variable)
        slots = self._fused.slots.get(name)
        if slots is None or slots[index] is None:
            raise ValueError(
                f"No slot named {name!r} for variable "
                f"{self._describe(variable)}. Slots created with `add_slot`: "
                f"{list(self._fused.slots)}. Received: name={name!r}"
            )
        return slots[index]

    def _describe(self, variable):
        return getattr(variable, "path", None) or getattr(
            variable, "name", repr(variable)
        )

    def _index_of(self, variable):
        if not self.built:
            raise ValueError(
                "Slots can be created and read only after the optimizer is "
                "built: call `super().build(var_list)` first in `build`. "
                f"Received: variable={self._describe(variable)}"
            )
        try:
            return self._get_variable_index(variable)
        except (KeyError, AttributeError):
            known = [self._describe(v) for v in self._trainable_variables]
            raise ValueError(
                f"Unknown variable {self._describe(variable)}: this optimizer "
                f"was built for the variables {known}. "
                f"Received: variable={variable!r}"
            ) from None

    # ------------------------------------------------------------------
    # The rule.

    def update_step(self, gradient, variable, learning_rate):
        """Updates one variable (and its slots) from its gradient.

        Subclasses must implement it with `keras.ops` / `tf` operations and
        `self.assign*`. It is traced inside the compiled update, so it must
        not call `.numpy()` or use Python control flow on tensor values.

        Args:
            gradient: dense tensor, the gradient of `variable`.
            variable: the variable to update.
            learning_rate: scalar tensor, the current learning rate.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------
    # The compiled update. Keras 3 has no public hook for "update all
    # variables at once", so this is the one place that reaches inside the
    # TensorFlow backend optimizer (`keras.src.backend.tensorflow.optimizer`,
    # Keras 3.10-3.15): it overrides `_backend_update_step`, which `apply`
    # calls once a step after Keras has clipped the gradients and applied
    # weight decay with its own `_apply_weight_decay`, and it calls
    # `_all_reduce_sum_gradients`, `_distribution_strategy`, `_var_key` and
    # `_get_variable_index` as the TensorFlow optimizer does. Nothing of
    # Keras is disabled. `tests/optimizers/test_custom_optimizer.py` pins
    # these names and that `apply` still reaches `_backend_update_step`
    # exactly once a step; the Keras-parity tests check that every base
    # feature behaves as in `keras.optimizers.Adam`.

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        trainable_variables = [
            v.value if isinstance(v, keras.Variable) else v
            for v in trainable_variables
        ]
        grads = [
            densify(g, v) if isinstance(g, tf.IndexedSlices) else g
            for g, v in zip(grads, trainable_variables)
        ]
        learning_rate = tf.convert_to_tensor(learning_rate)
        grads_and_vars = list(zip(grads, trainable_variables))
        grads_and_vars = self._all_reduce_sum_gradients(grads_and_vars)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_update,
            self._distribution_strategy,
            grads_and_vars,
            learning_rate,
        )

    def _distributed_update(self, distribution, grads_and_vars, learning_rate):
        grads = [g for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]

        def update(_, grads, variables, learning_rate, compiled):
            grads = [tf.convert_to_tensor(g) for g in grads]
            if compiled:
                self._compiled_update(grads, variables, learning_rate)
            else:
                self._update_all(grads, variables, learning_rate)

        for compiled, indices in self._plan(variables):
            # `update` runs once per replica device with that device's
            # copies of the gradients and variables (once, on the default
            # strategy).
            distribution.extended.update(
                variables[indices[0]],
                update,
                args=(
                    [grads[i] for i in indices],
                    [variables[i] for i in indices],
                    learning_rate,
                    compiled,
                ),
                group=False,
            )

    def _plan(self, variables):
        """Splits the variables into groups: `[(compiled, indices), ...]`."""
        if not self._compiles_update() or in_xla_context():
            return [(False, list(range(len(variables))))]
        sizes = [math.prod(v.shape) for v in variables]
        return plan_updates(sizes, self._op_by_op_below, self._bucket_elements)

    def _compiles_update(self):
        """Whether large variables go through compiled calls (`_plan`).

        A built-in rule that updates its large variables with a native TF
        kernel (`Adam(fused_kernel=True)`) returns `False`: the kernel is
        already fused, so no XLA call is wrapped around it.
        """
        return self.jit_compile

    def _compiled_update(self, grads, variables, learning_rate):
        key = (
            variables[0].device,
            tuple(self._var_key(v) for v in variables),
        )
        compiled = self._fused.functions.get(key)
        if compiled is None:
            variables = list(variables)

            def update_all(grads, learning_rate):
                self._fused.trace_count += 1
                self._update_all(grads, variables, learning_rate)

            compiled = tf.function(
                update_all, jit_compile=True, autograph=False
            )
            self._fused.functions[key] = compiled
        compiled(grads, learning_rate)

    def _update_all(self, grads, variables, learning_rate):
        self._fused.shared = {}
        try:
            for grad, variable in zip(grads, variables):
                self.update_step(grad, variable, learning_rate)
        finally:
            self._fused.shared = None

    def _shared(self, key, compute):
        """`compute()` once per update for all the variables sharing `key`.

        For the terms of a rule that do not depend on the variable (the
        cast learning rate, bias corrections), keyed by dtype: computed once
        per step instead of once per variable, which on a deep model of
        small variables removes hundreds of scalar ops per step with the
        same values. Outside an update it just calls `compute`.
        """
        cache = self._fused.shared
        if cache is None:
            return compute()
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def get_config(self):
        return {**super().get_config(), "jit_compile": self.jit_compile}


class _Bookkeeping:
    """Untracked state of a `CustomOptimizer`."""

    def __init__(self):
        self.slots = {}  # slot name -> list aligned with the variables.
        self.functions = {}  # (device, variable keys) -> tf.function.
        self.trace_count = 0  # Traces of the compiled update, for tests.
        self.shared = None  # `_shared`'s cache during one `_update_all`.
