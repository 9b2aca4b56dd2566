"""`JacobianRegularizer`: penalizes the input-output Jacobian during `fit`.

How the callback changes the training loss, and why each override is needed
(all are instance attributes, set in `on_train_begin` after checking the
model and removed in `on_train_end`, or as soon as a train step raises):

- `model.compute_loss` (the override point Keras documents for changing
  the training loss) is wrapped to add `weight * penalty` to the loss it
  returns. The penalty goes through Keras's own loss reduction (a
  `keras.losses.Loss`), so it is averaged over the batch and scaled per
  replica under `tf.distribute` exactly like the compiled loss.
- `model.train_step` is wrapped to open the `tf.GradientTape` that records
  the forward pass with respect to the input (or the `wrt` layer's output)
  before the model is called: `compute_loss` runs only after the forward
  pass, too late to record it, and recomputing the forward pass there
  would update `BatchNormalization` statistics twice and draw other dropout
  masks. The wrapper also adds `jacobian_norm` to the step's logs.
- `model.make_train_function(force=True)` retraces the train function with
  both wrappers. Keras's `fit` calls no callback hook when it raises, so
  the new `model.train_function` is wrapped too: an error or
  `KeyboardInterrupt` inside a train step restores the model at once. A
  `fit` that raises elsewhere (another callback, validation) leaves the
  wrappers in place but inert: the next `train_function` call that does not
  belong to the `fit` that installed them (each `fit` sets a new
  `model.history` before its callbacks run, and this callback allows one
  call per `on_train_batch_begin`) removes them and runs the model's own
  train function.
- With `wrt=<layer name>`, the layer's `call` is wrapped to watch its
  output on the tape: Keras 3 has no public hook on a layer's output.

Nothing else of the model is touched; no frame walking, no global registry.
"""

import math
import random

import keras
import tensorflow as tf

from keras_research._export import register
from keras_research.callbacks._patch import (
    TrainingPatch,
    patch_of,
    resolve_wrt,
)

_METHODS = ("exact", "projection")
_ARGUMENTS = (
    "weight",
    "method",
    "num_projections",
    "wrt",
    "per_example",
    "log_norm",
    "seed",
)


@register
class JacobianRegularizer(keras.callbacks.Callback):
    """Adds a penalty on the model's input-output Jacobian to `fit`'s loss.

    Jacobian regularization (Hoffman, Roberts & Yaida, 2019) adds
    `weight * mean_b ||d f(x_b) / d x_b||_F^2` to the training loss, which
    flattens the model around the training data and makes classifiers more
    robust to input perturbations. Passing this callback to `model.fit` is
    the whole change: no model code is touched.

    Supported models: any compiled model whose train step calls
    `self.compute_loss(x, y, y_pred, ...)` with the model's predictions
    `y_pred`. Keras's own `train_step` does (Sequential, functional and
    subclassed models), and so does a custom `train_step` that calls
    `compute_loss`. A custom `train_step` that computes its loss without
    `compute_loss` (for example keras-io's VAE) is refused at the first
    step with `ValueError: JacobianRegularizer adds its penalty in
    `model.compute_loss`, but the train step of model '...' did not call
    it ...`. With `wrt=None` the Jacobian is taken with respect to the `x`
    of `keras.utils.unpack_x_y_sample_weight(data)` in the train step.

    During `fit` the callback wraps the model's `train_step` and
    `compute_loss` (instance attributes only) and rebuilds the train
    function: the forward pass is recorded on an extra `tf.GradientTape`
    and the penalty is added to the value returned by `compute_loss`.
    Validation, `evaluate` and `predict` never see the penalty. Everything
    is undone when `fit` returns, and also when it raises (see the module
    docstring). The reported `loss` includes the weighted penalty, as it
    includes weight regularization losses.

    The Jacobian is taken of all outputs of the model (flattened per
    example and concatenated) in float32, also under a mixed precision
    policy, with respect to:

    - the model's input (`wrt=None`), which must be a single floating-point
      dense tensor;
    - or the activations of the layer named `wrt`, for models whose inputs
      are integers, strings or ragged (text models): e.g. the output of an
      embedding or `keras_research.layers.RaggedEmbeddingBag` layer. The
      layer must be a direct layer of the model, called exactly once in the
      forward pass, and return one dense floating-point tensor.

    `method="projection"` (the default, as in the authors' reference code)
    uses the unbiased estimator of Hoffman et al.: for `num_projections`
    random unit vectors `v` per example, `||J||_F^2 = K * E[||v^T J||^2]`
    where `K` is the number of outputs. It costs one extra backward pass
    (and its gradient) per projection whatever `K`: 1.5-2.5x a plain
    step with one projection (`benchmarks/RESULTS.md`). The directions are
    drawn by a stateless generator from `seed`, the optimizer's step and
    the replica, so runs are reproducible. `method="exact"` computes the
    full Jacobian with `tape.batch_jacobian` (`per_example=True`) or
    `tape.jacobian` (`per_example=False`), both vectorized with pfor,
    costing about one backward pass per model output: about 2x a plain
    step for a 10-output MLP, but 18-29x on keras-io's 10-class
    `mnist_convnet` (pfor vectorizes convolution gradients poorly) and ~140x
    at 1000 outputs (a warning is given above 100).

    With `jit_compile=True`, pfor-vectorized Jacobians are not used: inside
    an XLA cluster their second-order gradients make XLA treat the model's
    weights as compile-time constants, so every step recompiles (seconds per
    step). The compiled train step instead runs one vector-Jacobian product
    per Jacobian row (per output for `"exact"`, per projection for
    `"projection"`) in a `tf.while_loop`, which XLA compiles once; `"exact"`
    then supports `per_example=True` only.

    `per_example=True` assumes each output row depends only on its own
    input row (no batch statistics such as `BatchNormalization` in training
    mode mixing examples); `per_example=False` differentiates the whole
    batch's outputs with respect to the whole batch's inputs and divides
    the squared norm by the batch size, which costs a batch-size factor
    more with `"exact"`.

    The squared Frobenius norm (before weighting, averaged over the batch
    and the epoch) is logged as `jacobian_norm`, so it shows in the progress
    bar, `History`, `CSVLogger` and `TensorBoard`. Sample weights and class
    weights do not weight the penalty.

    Args:
        weight: float >= 0, a `keras.optimizers.schedules.LearningRateSchedule`
            (called with the optimizer's iteration count) or a callable
            `weight(epoch, step)` returning a float >= 0, where `epoch` is
            the 0-based epoch and `step` the optimizer's iteration count;
            evaluated before each training batch, for warm-up schedules.
            Defaults to `0.01`.
        method: `"projection"` or `"exact"`. Defaults to `"projection"`.
        num_projections: int >= 1. Random projections per example and step
            for `method="projection"`. Defaults to `1`.
        wrt: `None` or str. Name of the layer whose output the Jacobian is
            taken with respect to; `None` takes it with respect to the
            model's input. Defaults to `None`.
        per_example: bool. Whether outputs of one example depend on that
            example's input only (see above). Defaults to `True`.
        log_norm: bool. Whether to log `jacobian_norm`. Defaults to `True`.
        seed: `None` or int >= 0. Seed of the random projections; `None`
            draws one from Python's `random` (seeded by
            `keras.utils.set_random_seed`) when training begins. Defaults
            to `None`.

    Raises:
        ValueError: for an invalid or unknown argument, and at the start of
            `fit` for a model that is not compiled, a `wrt` that names no
            layer, a model with several inputs, or with integer, string,
            ragged or sparse input, and no `wrt`; at the first step for a
            train step that does not call `compute_loss`.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="tanh"),
    ...     keras.layers.Dense(3),
    ... ])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x = np.random.rand(32, 4).astype("float32")
    >>> y = np.random.rand(32, 3).astype("float32")
    >>> history = model.fit(
    ...     x, y, epochs=1, verbose=0,
    ...     callbacks=[keras_research.callbacks.JacobianRegularizer(0.1)],
    ... )
    >>> "jacobian_norm" in history.history
    True

    References:
        - [Hoffman, Roberts & Yaida, 2019. Robust Learning with Jacobian
          Regularization](https://arxiv.org/abs/1908.02729)
    """

    def __init__(
        self,
        weight=0.01,
        *,
        method: str = "projection",
        num_projections: int = 1,
        wrt: str | None = None,
        per_example: bool = True,
        log_norm: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        if kwargs:
            raise ValueError(
                "Unrecognized keyword arguments passed to JacobianRegularizer: "
                f"{kwargs}. Accepted: {', '.join(_ARGUMENTS)}."
            )
        super().__init__()
        if isinstance(weight, bool) or not (
            isinstance(weight, (int, float)) or callable(weight)
        ):
            raise ValueError(
                "`weight` must be a float >= 0, a LearningRateSchedule or a "
                f"callable `weight(epoch, step)`. Received: weight={weight!r}"
            )
        if not callable(weight) and not (math.isfinite(weight) and weight >= 0):
            raise ValueError(
                "`weight` must be a finite float >= 0. "
                f"Received: weight={weight!r}"
            )
        if method not in _METHODS:
            raise ValueError(
                f"`method` must be one of {_METHODS}. "
                f"Received: method={method!r}"
            )
        if (
            isinstance(num_projections, bool)
            or not isinstance(num_projections, int)
            or num_projections < 1
        ):
            raise ValueError(
                "`num_projections` must be an integer >= 1. "
                f"Received: num_projections={num_projections!r}"
            )
        if wrt is not None and (not isinstance(wrt, str) or not wrt):
            raise ValueError(
                "`wrt` must be None or the name of a layer of the model. "
                f"Received: wrt={wrt!r}"
            )
        for name, value in (
            ("per_example", per_example),
            ("log_norm", log_norm),
        ):
            if not isinstance(value, bool):
                raise ValueError(
                    f"`{name}` must be a bool. Received: {name}={value!r}"
                )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or seed < 0
        ):
            raise ValueError(
                "`seed` must be None or an integer >= 0. "
                f"Received: seed={seed!r}"
            )
        self.weight = weight
        self.method = method
        self.num_projections = num_projections
        self.wrt = wrt
        self.per_example = per_example
        self.log_norm = log_norm
        self.seed = seed

        self._patch = None
        self._seed = seed
        self._weight_var = None
        self._weight_value = None
        self._norm_metric = None
        self._epoch = 0

    def get_config(self):
        weight = self.weight
        if callable(weight):
            weight = keras.saving.serialize_keras_object(weight)
        return {
            "weight": weight,
            "method": self.method,
            "num_projections": self.num_projections,
            "wrt": self.wrt,
            "per_example": self.per_example,
            "log_norm": self.log_norm,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("weight"), dict):
            config["weight"] = keras.saving.deserialize_keras_object(
                config["weight"]
            )
        return cls(**config)

    # ------------------------------------------------------------------
    # Callback hooks.

    def on_train_begin(self, logs=None):
        model = self.model
        other = patch_of(model)
        if other is not None:
            live = other.is_live()
            other.restore()
            if live:
                # Both in this `fit`, which this error aborts.
                raise ValueError(
                    "Only one JacobianRegularizer can be passed to a `fit` "
                    f"call of a model; model {model.name!r} already has one."
                )
        if (
            not getattr(model, "compiled", False)
            or getattr(model, "optimizer", None) is None
        ):
            raise ValueError(
                "JacobianRegularizer needs a compiled model: call "
                "`model.compile(optimizer=..., loss=...)` before `fit`. "
                f"Received: model {model.name!r}, which is not compiled."
            )
        layer = resolve_wrt(model, self.wrt)
        jit = bool(model.jit_compile) and not model.run_eagerly
        if jit and self.method == "exact" and not self.per_example:
            raise ValueError(
                "`method='exact'` with `per_example=False` is not supported "
                "in an XLA-compiled train step. Use `method='projection'`, "
                "`per_example=True`, or compile the model with "
                "`jit_compile=False`. Received: per_example=False, "
                "jit_compile=True"
            )
        if self.seed is None and self.method == "projection":
            self._seed = random.randint(1, 2**31 - 1)
        with model.distribute_strategy.scope():
            # Build the optimizer's slots now, eagerly, as Keras's first step
            # would: if that first step is refused (a train step that never
            # calls `compute_loss`), slots built inside its aborted trace
            # would stay uninitialized and break every later `fit`.
            optimizer = model.optimizer
            every_layer_built = model.built or all(
                layer.built for layer in model.layers
            )
            if (
                not optimizer.built
                and every_layer_built
                and model.trainable_variables
            ):
                optimizer.build(model.trainable_variables)
            self._weight_var = tf.Variable(
                0.0, trainable=False, dtype=tf.float32, name="jacobian_weight"
            )
            self._weight_value = None
            self._norm_metric = None
            if self.log_norm:
                self._norm_metric = keras.metrics.Mean(name="jacobian_norm")
        self._epoch = 0
        if not callable(self.weight):
            self._set_weight(0)
        self._patch = TrainingPatch(self, model, layer)
        self._patch.install()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._norm_metric is not None:
            self._norm_metric.reset_state()

    def on_train_batch_begin(self, batch, logs=None):
        if self._patch is None:
            return
        if callable(self.weight):
            try:
                self._set_weight(int(self.model.optimizer.iterations.numpy()))
            except BaseException:
                self._restore()
                raise
        self._patch.step_allowed = True

    def on_train_end(self, logs=None):
        self._restore()

    # ------------------------------------------------------------------
    # Helpers.

    def _restore(self):
        if self._patch is not None:
            self._patch.restore()
            self._patch = None

    def _set_weight(self, step):
        weight = self.weight
        if isinstance(weight, keras.optimizers.schedules.LearningRateSchedule):
            value = weight(step)
        elif callable(weight):
            value = weight(self._epoch, step)
        else:
            value = weight
        value = float(keras.ops.convert_to_numpy(value))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                "`weight` must give a finite float >= 0; at epoch "
                f"{self._epoch}, step {step} it gave {value!r}."
            )
        if value != self._weight_value:
            self._weight_var.assign(value)
            self._weight_value = value
