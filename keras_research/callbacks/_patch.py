"""How `JacobianRegularizer` enters and leaves a `fit` (private).

`TrainingPatch` sets a few instance attributes on the model for the duration
of one `fit` and removes them afterwards; why each one is needed is in the
docstring of `keras_research.callbacks.jacobian_regularizer`. All of the
Jacobian arithmetic is in `_jacobian.py`.
"""

import threading

import keras
import tensorflow as tf

from keras_research._xla import in_xla_context
from keras_research.callbacks._jacobian import (
    describe,
    is_float,
    jacobian_target,
    squared_norms,
    to_float32,
)

_MISSING = object()


class _BatchMean(keras.losses.Loss):
    """Keras's own loss reduction, applied to per-example penalty values.

    The mean over the batch, then the per-replica scaling that Keras applies
    to every compiled loss under `tf.distribute` (the gradients of the
    replicas are summed), so the penalty is scaled exactly like the loss it
    is added to.
    """

    def call(self, y_true, y_pred):
        return y_pred


def patch_of(model):
    """The `TrainingPatch` installed on `model`, or `None`."""
    return getattr(model.__dict__.get("compute_loss"), "_jacobian_patch", None)


def compute_loss_args(args, kwargs):
    """`(x, y_pred)` from the arguments of a `compute_loss` call."""
    names = ("x", "y", "y_pred")
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    return values.get("x"), values.get("y_pred")


class TrainingPatch:
    """The train step, loss and layer wrappers of one `fit`.

    Args:
        callback: the `JacobianRegularizer` (read for its settings, its
            weight variable and its `jacobian_norm` metric).
        model: the compiled model.
        layer: the `wrt` layer, or `None` for the model's input.
    """

    def __init__(self, callback, model, layer):
        self.callback = callback
        self.model = model
        self.layer = layer
        # Per thread: `MirroredStrategy` traces each replica in its own.
        self.local = threading.local()
        # Python flags read when the train function runs and is traced.
        self.armed = False
        self.step_allowed = False
        self.history = getattr(model, "history", None)
        self.saved = None
        self.reduce = _BatchMean(name="jacobian_penalty")

    # ------------------------------------------------------------------
    # Entering and leaving.

    def install(self):
        model, layer = self.model, self.layer
        names = ("train_step", "compute_loss", "train_function")
        self.saved = {n: model.__dict__.get(n, _MISSING) for n in names}
        if layer is not None:
            self.saved["layer_call"] = layer.__dict__.get("call", _MISSING)
        train_step = self._wrap_train_step(model.train_step)
        compute_loss = self._wrap_compute_loss(model.compute_loss)
        compute_loss._jacobian_patch = self
        object.__setattr__(model, "train_step", train_step)
        object.__setattr__(model, "compute_loss", compute_loss)
        if layer is not None:
            object.__setattr__(layer, "call", self._wrap_layer(layer.call))
        model.make_train_function(force=True)
        compiled = model.train_function

        def train_function(iterator):
            if not (self.step_allowed and self.is_live()):
                # Left by a `fit` that raised outside a train step: undo it
                # and run the model's own train function.
                self.restore()
                model.make_train_function()
                return model.train_function(iterator)
            self.step_allowed = False
            self.armed = True
            try:
                return compiled(iterator)
            except BaseException:
                self.restore()
                raise
            finally:
                self.armed = False

        object.__setattr__(model, "train_function", train_function)

    def is_live(self):
        """Whether the `fit` that installed this patch is still running.

        Every `fit` gives the model a new `model.history` before any
        callback runs (`keras.callbacks.CallbackList` sets it).
        """
        return getattr(self.model, "history", None) is self.history

    def restore(self):
        """Removes every attribute this patch set; safe to call twice."""
        saved, self.saved = self.saved, None
        if saved is None:
            return
        model = self.model
        for name in ("train_step", "compute_loss", "train_function"):
            _put_back(model, name, saved[name])
        if self.layer is not None:
            _put_back(self.layer, "call", saved["layer_call"])
        self.armed = False
        self.step_allowed = False

    # ------------------------------------------------------------------
    # The wrappers (they run when the train function is traced).

    def _wrap_train_step(self, train_step):
        def wrapped(data):
            state = self.local
            if not self.armed or getattr(state, "tape", None) is not None:
                return train_step(data)
            # The tape must record the forward pass, which starts before
            # `compute_loss` is called. Several gradient calls on it only
            # in an XLA cluster (see `_jacobian.squared_norms`).
            tape = tf.GradientTape(
                watch_accessed_variables=False, persistent=in_xla_context()
            )
            state.tape, state.source, state.applied = tape, None, False
            try:
                with tape:
                    if self.layer is None:
                        state.source = self._watch_input(tape, data)
                    logs = train_step(data)
                if not state.applied:
                    raise ValueError(
                        "JacobianRegularizer adds its penalty in "
                        "`model.compute_loss`, but the train step of model "
                        f"{self.model.name!r} did not call it with the "
                        "model's predictions (`y_pred`). Custom train steps "
                        "must call `self.compute_loss(x=x, y=y, "
                        "y_pred=self(x, training=True), ...)`; see the "
                        "JacobianRegularizer docstring."
                    )
            finally:
                state.tape = state.source = None
            metric = self.callback._norm_metric
            if metric is not None and isinstance(logs, dict):
                logs = {**logs, "jacobian_norm": metric.result()}
            return logs

        return wrapped

    def _watch_input(self, tape, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        flat = tf.nest.flatten(x)
        name = self.model.name
        if len(flat) != 1:
            raise ValueError(
                "JacobianRegularizer with `wrt=None` needs a model with a "
                f"single input; model {name!r} received {len(flat)} "
                "tensors. Pass `wrt=<layer name>` to take the Jacobian "
                "with respect to one layer's output. Received: wrt=None"
            )
        x = flat[0]
        if not isinstance(x, tf.Tensor) or not is_float(x.dtype):
            raise ValueError(input_error(name, describe(x)))
        tape.watch(x)
        return x

    def _wrap_layer(self, call):
        def wrapped(*args, **kwargs):
            outputs = call(*args, **kwargs)
            state = self.local
            tape = getattr(state, "tape", None)
            if tape is None:
                return outputs
            wrt = self.callback.wrt
            if state.source is not None:
                raise ValueError(
                    f"JacobianRegularizer: layer {wrt!r} (the `wrt` "
                    "argument) is called more than once in the forward "
                    "pass; the Jacobian with respect to its output is "
                    "ambiguous. Name a layer that is called once."
                )
            if not isinstance(outputs, tf.Tensor) or not is_float(
                outputs.dtype
            ):
                raise ValueError(
                    f"JacobianRegularizer: layer {wrt!r} (the `wrt` "
                    "argument) must return one dense floating-point tensor "
                    "to differentiate with respect to; it returned "
                    f"{describe(outputs)}."
                )
            source = to_float32(outputs)
            tape.watch(source)
            state.source = source
            return tf.cast(source, outputs.dtype)

        return wrapped

    def _wrap_compute_loss(self, compute_loss):
        def wrapped(*args, **kwargs):
            loss = compute_loss(*args, **kwargs)
            state = self.local
            tape = getattr(state, "tape", None)
            if tape is None or state.applied:
                return loss
            _, y_pred = compute_loss_args(args, kwargs)
            penalty = self._penalty(state, tape, y_pred)
            state.applied = True
            if loss is None:
                return penalty
            return loss + tf.cast(penalty, loss.dtype)

        return wrapped

    def _penalty(self, state, tape, y_pred):
        callback, model = self.callback, self.model
        source = state.source
        if source is None:
            raise ValueError(
                f"JacobianRegularizer: layer {callback.wrt!r} (the `wrt` "
                "argument) was not called in the forward pass of model "
                f"{model.name!r}."
            )
        if y_pred is None:
            raise ValueError(
                "JacobianRegularizer: the train step of model "
                f"{model.name!r} called `compute_loss` without `y_pred`."
            )
        target = jacobian_target(
            y_pred,
            source,
            method=callback.method,
            num_projections=callback.num_projections,
            per_example=callback.per_example,
            seed=callback._seed,
            step=model.optimizer.iterations,
            model_name=model.name,
        )
        if target["jit"]:  # The tape is persistent in XLA only.
            with tape.stop_recording():
                values = self._norms(tape, source, target)
        else:
            values = self._norms(tape, source, target)
        norm = tf.reduce_mean(values)
        if callback._norm_metric is not None:
            callback._norm_metric.update_state(
                norm, sample_weight=target["batch_size"]
            )
        penalty = self.reduce(values, values)
        return penalty * tf.cast(callback._weight_var, penalty.dtype)

    def _norms(self, tape, source, target):
        return squared_norms(
            tape,
            source,
            target,
            method=self.callback.method,
            per_example=self.callback.per_example,
        )


def _put_back(obj, name, value):
    if value is _MISSING:
        obj.__dict__.pop(name, None)
    else:
        object.__setattr__(obj, name, value)


def resolve_wrt(model, wrt):
    """The layer named `wrt`, or `None` after checking the model's input."""
    if wrt is not None:
        names = [layer.name for layer in model.layers]
        if wrt not in names:
            raise ValueError(
                f"`wrt` must name a layer of model {model.name!r}; its "
                f"layers are {names}. Received: wrt={wrt!r}"
            )
        return model.get_layer(wrt)
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
        ragged = getattr(x, "ragged", False)
        sparse = getattr(x, "sparse", False)
        if ragged or sparse or not is_float(x.dtype):
            what = ("ragged " if ragged else "") + ("sparse " if sparse else "")
            raise ValueError(
                input_error(model.name, f"a {what}input of dtype {x.dtype}")
            )
    return None


def input_error(model_name, what):
    return (
        "JacobianRegularizer with `wrt=None` differentiates with "
        "respect to the model input, which must be one dense "
        f"floating-point tensor; model {model_name!r} takes {what}. For "
        "integer, string, ragged or sparse inputs (e.g. text models), "
        "pass `wrt=<layer name>` to take the Jacobian with respect to "
        "that layer's output (e.g. the embedding layer). Received: "
        "wrt=None"
    )
