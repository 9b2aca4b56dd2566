"""`JacobianRegularizer`: penalizes the input-output Jacobian during `fit`."""

import inspect
import math
import threading
import weakref

import keras
import tensorflow as tf

from keras_research._export import register
from keras_research._xla import in_xla_context
from keras_research.callbacks._jacobian import (
    describe,
    is_float,
    jacobian_target,
    squared_norm,
    to_float32,
)

_METHODS = ("exact", "projection")
# Models whose train step is being patched right now, so that two
# regularizers never patch the same model at once and a patch left behind
# by an interrupted `fit` is found and removed.
_ACTIVE = weakref.WeakKeyDictionary()


@register
class JacobianRegularizer(keras.callbacks.Callback):
    """Adds a penalty on the model's input-output Jacobian to `fit`'s loss.

    Jacobian regularization (Hoffman, Roberts & Yaida, 2019) adds
    `weight * mean_b ||d f(x_b) / d x_b||_F^2` to the training loss, which
    flattens the model around the training data and makes classifiers more
    robust to input perturbations. Passing this callback to `model.fit` is
    the whole change: no model code is touched.

    For the duration of `fit` the callback wraps the model's `train_step`,
    `call`, `compute_loss` and `compute_metrics` (instance attributes only)
    and rebuilds the train function; the forward pass of the train step is
    recorded on an extra `tf.GradientTape` and the penalty is added to the
    value returned by `compute_loss`. Validation, `evaluate` and `predict`
    never see the penalty. Everything is undone when `fit` returns, and also
    when it raises: an error or `KeyboardInterrupt` inside a train step
    restores the model at once; a patch left by an error raised elsewhere
    (another callback, validation) is inert and is removed the next time the
    model trains. The reported `loss` includes the weighted penalty, as it
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

    `method="exact"` computes the full Jacobian: `tape.batch_jacobian`
    (`per_example=True`) or `tape.jacobian` (`per_example=False`), both
    vectorized with pfor, costing about one backward pass per model output.
    `method="projection"` uses the unbiased estimator of Hoffman et al.:
    for `num_projections` random unit vectors `v` per example,
    `||J||_F^2 = K * E[||v^T J||^2]` where `K` is the number of outputs; it
    costs one backward pass per projection, whatever `K`, and suits models
    with many outputs.

    With `jit_compile=True`, pfor-vectorized Jacobians are not used: inside
    an XLA cluster their second-order gradients make XLA treat the model's
    weights as compile-time constants, so every step recompiles (seconds per
    step). The compiled train step instead runs one vector-Jacobian product
    per Jacobian row (per output for `"exact"`, per projection for
    `"projection"`) in a `tf.while_loop`, which XLA compiles once; it is
    slower per step than pfor outside XLA as the rows grow (10 outputs:
    about even; 128 outputs: ~2x), and `"exact"` then supports
    `per_example=True` only.

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
        method: `"exact"` or `"projection"`. Defaults to `"exact"`.
        num_projections: int >= 1. Random projections per example and step
            for `method="projection"`. Defaults to `1`.
        wrt: `None` or str. Name of the layer whose output the Jacobian is
            taken with respect to; `None` takes it with respect to the
            model's input. Defaults to `None`.
        per_example: bool. Whether outputs of one example depend on that
            example's input only (see above). Defaults to `True`.
        log_norm: bool. Whether to log `jacobian_norm`. Defaults to `True`.
        **kwargs: forwarded to `keras.callbacks.Callback`.

    Raises:
        ValueError: for an invalid argument, and at the start of `fit` for
            a model that is not compiled, a `wrt` that names no layer, a
            model with several inputs, or with integer, string, ragged or
            sparse input, and no `wrt`.

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
        method: str = "exact",
        num_projections: int = 1,
        wrt: str | None = None,
        per_example: bool = True,
        log_norm: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
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
        self.weight = weight
        self.method = method
        self.num_projections = num_projections
        self.wrt = wrt
        self.per_example = per_example
        self.log_norm = log_norm

        self._local = threading.local()
        self._patched_model = None
        self._saved = None
        self._fit_frame = None
        self._armed = False
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
        _remove_stale_patch(model)
        if model in _ACTIVE:
            # The `fit` is aborted by this error: undo the other's patch.
            _ACTIVE[model]._restore()
            raise ValueError(
                "Only one JacobianRegularizer can be passed to a `fit` call "
                f"of a model; model {model.name!r} already has one."
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
        target_layer = self._resolve_wrt(model)
        jit = bool(model.jit_compile) and not model.run_eagerly
        if jit and self.method == "exact" and not self.per_example:
            raise ValueError(
                "`method='exact'` with `per_example=False` is not supported "
                "in an XLA-compiled train step. Use `method='projection'`, "
                "`per_example=True`, or compile the model with "
                "`jit_compile=False`. Received: per_example=False, "
                "jit_compile=True"
            )
        with model.distribute_strategy.scope():
            self._weight_var = tf.Variable(
                0.0, trainable=False, dtype=tf.float32, name="jacobian_weight"
            )
            self._weight_value = None
            if self.log_norm:
                self._norm_metric = keras.metrics.Mean(name="jacobian_norm")
        self._epoch = 0
        if not callable(self.weight):
            self._set_weight(0)
        self._install(model, target_layer)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._norm_metric is not None:
            self._norm_metric.reset_state()

    def on_train_batch_begin(self, batch, logs=None):
        if callable(self.weight):
            try:
                self._set_weight(int(self.model.optimizer.iterations.numpy()))
            except BaseException:
                self._restore()
                raise

    def on_train_end(self, logs=None):
        self._restore()

    # ------------------------------------------------------------------
    # Set-up and tear-down.

    def _resolve_wrt(self, model):
        if self.wrt is not None:
            names = [layer.name for layer in model.layers]
            if self.wrt not in names:
                raise ValueError(
                    f"`wrt` must name a layer of model {model.name!r}; its "
                    f"layers are {names}. Received: wrt={self.wrt!r}"
                )
            return model.get_layer(self.wrt)
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if inputs:
            if len(inputs) != 1:
                raise ValueError(
                    "JacobianRegularizer with `wrt=None` needs a model with "
                    f"a single input; model {model.name!r} has "
                    f"{len(inputs)}. Pass `wrt=<layer name>` to take the "
                    "Jacobian with respect to one layer's output. Received: "
                    "wrt=None"
                )
            x = inputs[0]
            if (
                getattr(x, "ragged", False)
                or getattr(x, "sparse", False)
                or not is_float(x.dtype)
            ):
                raise ValueError(self._input_error(model, _describe_kt(x)))
        return None

    def _input_error(self, model, what):
        return (
            "JacobianRegularizer with `wrt=None` differentiates with "
            "respect to the model input, which must be one dense "
            f"floating-point tensor; model {model.name!r} takes {what}. For "
            "integer, string, ragged or sparse inputs (e.g. text models), "
            "pass `wrt=<layer name>` to take the Jacobian with respect to "
            "that layer's output (e.g. the embedding layer). Received: "
            "wrt=None"
        )

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

    def _install(self, model, target_layer):
        names = ("train_step", "call", "compute_loss", "compute_metrics")
        saved = {
            "model": {n: model.__dict__.get(n, _MISSING) for n in names},
            "train_function": model.train_function,
        }
        if target_layer is not None:
            saved["layer"] = target_layer
            saved["layer_call"] = target_layer.__dict__.get("call", _MISSING)
        self._saved = saved
        self._patched_model = model
        self._fit_frame = _find_fit_frame(model)
        _ACTIVE[model] = self

        orig_train_step = model.train_step
        orig_call = model.call
        orig_compute_loss = model.compute_loss
        orig_compute_metrics = model.compute_metrics

        def train_step(data):
            state = self._local
            if not self._armed or getattr(state, "active", False):
                return orig_train_step(data)
            state.active = True
            state.record = None
            state.norm = None
            state.applied = False
            try:
                outputs = orig_train_step(data)
                if not state.applied:
                    raise ValueError(
                        "JacobianRegularizer adds its penalty in "
                        "`model.compute_loss`, but the train step of model "
                        f"{model.name!r} did not call it after calling the "
                        "model. Call `self.compute_loss(...)` in a custom "
                        "`train_step`."
                    )
            finally:
                state.active = False
                state.record = None
                state.norm = None
            return outputs

        def call(*args, **kwargs):
            state = self._local
            if not getattr(state, "active", False) or getattr(
                state, "in_call", False
            ):
                return orig_call(*args, **kwargs)
            state.in_call = True
            try:
                return self._recorded_call(model, orig_call, args, kwargs)
            finally:
                state.in_call = False

        def compute_loss(*args, **kwargs):
            loss = orig_compute_loss(*args, **kwargs)
            state = self._local
            record = getattr(state, "record", None)
            if not getattr(state, "active", False) or record is None:
                return loss
            state.record = None
            norm = squared_norm(
                record["tape"],
                record["source"],
                record,
                method=self.method,
                per_example=self.per_example,
            )
            state.norm = norm
            state.applied = True
            if self._norm_metric is not None:
                self._norm_metric.update_state(
                    norm, sample_weight=record["batch_size"]
                )
            num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
            penalty = norm * tf.cast(self._weight_var, norm.dtype)
            if num_replicas > 1:
                penalty = penalty / num_replicas
            if loss is None:
                return tf.cast(penalty, "float32")
            return loss + tf.cast(penalty, loss.dtype)

        def compute_metrics(*args, **kwargs):
            logs = orig_compute_metrics(*args, **kwargs)
            state = self._local
            if (
                getattr(state, "active", False)
                and getattr(state, "norm", None) is not None
                and self._norm_metric is not None
                and isinstance(logs, dict)
            ):
                logs = dict(logs)
                logs["jacobian_norm"] = self._norm_metric.result()
            return logs

        for name, fn in (
            ("train_step", train_step),
            ("call", call),
            ("compute_loss", compute_loss),
            ("compute_metrics", compute_metrics),
        ):
            object.__setattr__(model, name, fn)

        if target_layer is not None:
            orig_layer_call = target_layer.call

            def layer_call(*args, **kwargs):
                outputs = orig_layer_call(*args, **kwargs)
                state = self._local
                tape = getattr(state, "tape", None)
                if tape is None:
                    return outputs
                return self._watch_layer_output(state, tape, outputs)

            object.__setattr__(target_layer, "call", layer_call)

        model.make_train_function(force=True)
        compiled_train_function = model.train_function

        def guarded_train_function(iterator):
            if not self._fit_is_live():
                _remove_stale_patch(model)
                return model.train_function(iterator)
            self._armed = True
            try:
                return compiled_train_function(iterator)
            except BaseException:
                self._restore()
                raise
            finally:
                self._armed = False

        object.__setattr__(model, "train_function", guarded_train_function)

    def _fit_is_live(self):
        if self._fit_frame is None:
            return True
        frame = inspect.currentframe()
        while frame is not None:
            if frame is self._fit_frame:
                return True
            frame = frame.f_back
        return False

    def _restore(self):
        model = self._patched_model
        saved = self._saved
        if model is None or saved is None:
            return
        for name, value in saved["model"].items():
            if value is _MISSING:
                model.__dict__.pop(name, None)
            else:
                object.__setattr__(model, name, value)
        object.__setattr__(model, "train_function", saved["train_function"])
        if "layer" in saved:
            layer = saved["layer"]
            if saved["layer_call"] is _MISSING:
                layer.__dict__.pop("call", None)
            else:
                object.__setattr__(layer, "call", saved["layer_call"])
        if _ACTIVE.get(model) is self:
            del _ACTIVE[model]
        self._patched_model = None
        self._saved = None
        self._fit_frame = None
        self._armed = False

    # ------------------------------------------------------------------
    # Inside the train step (trace time).

    def _recorded_call(self, model, orig_call, args, kwargs):
        state = self._local
        # Several gradient calls on the tape only in an XLA cluster (one
        # vector-Jacobian product per row, see `_jacobian.squared_norm`).
        tape = tf.GradientTape(
            watch_accessed_variables=False, persistent=in_xla_context()
        )
        if self.wrt is None:
            if "inputs" in kwargs:
                inputs = kwargs["inputs"]
            elif args:
                inputs = args[0]
            else:
                raise ValueError(
                    f"JacobianRegularizer could not find the input of model "
                    f"{model.name!r} in its call arguments."
                )
            flat = tf.nest.flatten(inputs)
            if len(flat) != 1:
                raise ValueError(
                    "JacobianRegularizer with `wrt=None` needs a model with "
                    f"a single input; model {model.name!r} received "
                    f"{len(flat)} tensors. Pass `wrt=<layer name>` to take "
                    "the Jacobian with respect to one layer's output. "
                    "Received: wrt=None"
                )
            x = flat[0]
            if not isinstance(x, tf.Tensor) or not is_float(x.dtype):
                raise ValueError(self._input_error(model, describe(x)))
            with tape:
                source = to_float32(x)
                tape.watch(source)
                x_in = tf.cast(source, x.dtype)
                new_inputs = tf.nest.pack_sequence_as(inputs, [x_in])
                if "inputs" in kwargs:
                    kwargs = {**kwargs, "inputs": new_inputs}
                else:
                    args = (new_inputs,) + tuple(args[1:])
                outputs = orig_call(*args, **kwargs)
                target = self._target(model, outputs, source)
            record = {"tape": tape, "source": source, **target}
        else:
            state.tape = tape
            state.source = None
            try:
                with tape:
                    outputs = orig_call(*args, **kwargs)
                    source = state.source
                    if source is None:
                        raise ValueError(
                            f"JacobianRegularizer: layer {self.wrt!r} (the "
                            "`wrt` argument) was not called in the forward "
                            f"pass of model {model.name!r}."
                        )
                    target = self._target(model, outputs, source)
            finally:
                state.tape = None
                state.source = None
            record = {"tape": tape, "source": source, **target}
        state.record = record
        return outputs

    def _target(self, model, outputs, source):
        return jacobian_target(
            outputs,
            source,
            method=self.method,
            num_projections=self.num_projections,
            per_example=self.per_example,
            model_name=model.name,
        )

    def _watch_layer_output(self, state, tape, outputs):
        if state.source is not None:
            raise ValueError(
                f"JacobianRegularizer: layer {self.wrt!r} (the `wrt` "
                "argument) is called more than once in the forward pass; "
                "the Jacobian with respect to its output is ambiguous. "
                "Name a layer that is called once."
            )
        if not isinstance(outputs, tf.Tensor) or not is_float(outputs.dtype):
            raise ValueError(
                f"JacobianRegularizer: layer {self.wrt!r} (the `wrt` "
                "argument) must return one dense floating-point tensor to "
                f"differentiate with respect to; it returned "
                f"{describe(outputs)}."
            )
        source = to_float32(outputs)
        tape.watch(source)
        state.source = source
        return tf.cast(source, outputs.dtype)


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


def _describe_kt(x):
    what = "ragged " if getattr(x, "ragged", False) else ""
    what += "sparse " if getattr(x, "sparse", False) else ""
    return f"a {what}input of dtype {x.dtype}"


def _find_fit_frame(model):
    """The frame of the `fit` call that runs these callbacks, if found."""
    frame = inspect.currentframe()
    while frame is not None:
        if (
            frame.f_code.co_name == "fit"
            and frame.f_locals.get("self") is model
        ):
            return frame
        frame = frame.f_back
    return None


def _remove_stale_patch(model):
    """Undoes a patch left on `model` by a `fit` that is no longer running."""
    owner = _ACTIVE.get(model)
    if owner is not None and not owner._fit_is_live():
        owner._restore()
