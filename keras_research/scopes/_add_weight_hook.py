"""The one module of `keras_research.scopes` that reaches into Keras.

Keras 3 offers no public hook into `keras.layers.Layer.add_weight` (the
Keras counterpart of TensorFlow's variable creators), no public view of
which layers are being built right now, and no public way to turn a class
into the header (`module`, `class_name`, `registered_name`) that
`keras.saving.serialize_keras_object` writes. Everything that needs one of
those goes through this module, and nothing else in the package imports
`keras.src`. `tests/scopes/test_add_weight_hook.py` pins each assumption
made here, so that a Keras upgrade that breaks one fails loudly.

The `add_weight` hook is installed by reference count: the first active
`weight_creator_scope` (in any thread) wraps whatever
`keras.layers.Layer.add_weight` is at that moment (Keras's own, or another
library's wrapper of it), the last one to exit puts that function back.
Importing keras_research changes nothing in Keras. While installed, the
hook only asks a dispatcher (owned by `weight_creator_scope`) what to do;
the dispatcher consults a thread-local stack, so threads without an active
scope see the original behaviour. If another library wraps `add_weight`
while a scope is active, exiting the scope leaves its wrapper in place,
and the hook inside it passes every call straight through.
"""

import re
import sys
import threading

import keras
from keras.src.backend.common import global_state
from keras.src.backend.common.name_scope import current_path, name_scope
from keras.src.saving import object_registration, serialization_lib
from keras.src.utils import naming

_lock = threading.Lock()
_refcount = 0
_dispatch = None
_previous = None  # The `add_weight` the installed hook wraps.
_installed = None  # The installed hook.

_ADD_WEIGHT_POSITIONAL = ("shape", "initializer", "dtype")


def original_add_weight(layer, **kwargs):
    """Calls the `add_weight` the hook wraps, bypassing any creator."""
    previous = _previous or keras.layers.Layer.add_weight
    return previous(layer, **kwargs)


def _make_hook(previous):
    def add_weight(self, *args, **kwargs):
        dispatch = _dispatch
        if dispatch is None or _installed is not add_weight:
            # Released (left inside another library's wrapper): pass on.
            return previous(self, *args, **kwargs)
        if args:
            # The legacy positional form `add_weight(shape, initializer,
            # dtype)`; anything else is left to Keras to reject.
            if len(args) > len(_ADD_WEIGHT_POSITIONAL) or isinstance(
                args[0], str
            ):
                return previous(self, *args, **kwargs)
            for key, value in zip(_ADD_WEIGHT_POSITIONAL, args):
                if key in kwargs:
                    return previous(self, *args, **kwargs)
                kwargs[key] = value
        return dispatch(self, kwargs)

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(add_weight, attr, getattr(previous, attr, None))
    add_weight.__wrapped__ = previous
    return add_weight


def acquire_add_weight_hook(dispatch):
    """Installs the `add_weight` hook (reference counted).

    Args:
        dispatch: callable `(layer, kwargs) -> weight`, called for every
            `add_weight` call in every thread while the hook is installed.
    """
    global _refcount, _dispatch, _previous, _installed
    with _lock:
        if _refcount == 0:
            _previous = keras.layers.Layer.add_weight
            _installed = _make_hook(_previous)
            _dispatch = dispatch
            keras.layers.Layer.add_weight = _installed
        _refcount += 1


def release_add_weight_hook():
    """Undoes one `acquire_add_weight_hook`; the last one restores Keras."""
    global _refcount, _dispatch, _previous, _installed
    with _lock:
        if _refcount <= 0:
            raise RuntimeError("The add_weight hook was released too often.")
        _refcount -= 1
        if _refcount == 0:
            if keras.layers.Layer.add_weight is _installed:
                keras.layers.Layer.add_weight = _previous
            _dispatch = None
            _installed = None
            _previous = None


def hook_installed():
    """Whether `Layer.add_weight` is currently our hook."""
    return (
        _installed is not None and keras.layers.Layer.add_weight is _installed
    )


def in_keras_variable_init(max_depth=12):
    """Whether a `keras.Variable` is being initialized up the call stack.

    A `keras.Variable` created outside `add_weight` (e.g.
    `keras.Variable(np.ones((64, 64)))`, an optimizer slot) creates its
    inner `tf.Variable` from its own methods; TensorFlow variable creators
    use this to leave that inner variable alone. TensorFlow passes a
    creator the same arguments either way, and neither Keras nor TF says
    who is creating a variable, hence the walk over the caller frames:
    `tests/scopes/test_keras_pins.py` measures how deep the
    `keras.Variable` frame really is and fails well before `max_depth`.
    """
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        if isinstance(frame.f_locals.get("self"), keras.Variable):
            return True
        frame = frame.f_back
    return False


def building_layers():
    """The layers whose name scopes are open, outermost first.

    Keras opens a name scope (with the layer as `caller`) around every
    layer's `build` and around `Layer.__call__`, so during `add_weight`
    this is the chain of layers currently building, outermost first.
    """
    stack = global_state.get_global_attribute("name_scope_stack") or []
    layers = []
    for entry in stack:
        caller = getattr(entry, "caller", None)
        if isinstance(caller, keras.layers.Layer) and (
            not layers or layers[-1] is not caller
        ):
            layers.append(caller)
    return layers


def variable_path(layer, name):
    """The `path` a weight `name` created now by `layer` will have.

    `Layer.add_weight` creates the variable inside
    `name_scope(layer.name, caller=layer)`, and a variable's path is the
    current name-scope path plus its name.
    """
    with name_scope(layer.name, caller=layer):
        parent = current_path()
    return f"{parent}/{name}" if parent else name


def class_header(cls):
    """The `module`/`class_name`/`registered_name` Keras writes for `cls`."""
    header = serialization_lib.serialize_with_public_class(cls, {})
    if header is None:
        header = {
            "module": cls.__module__,
            "class_name": cls.__name__,
            "registered_name": keras.saving.get_registered_name(cls),
        }
    header.pop("config", None)
    return header


def is_layer_container(layer):
    """Whether `layer` is a plain `Sequential` or functional `Model`.

    Those serialize each of their layers on its own, so a factorization is
    recorded on the inner layer rather than on the container.
    """
    from keras.src.models.functional import Functional

    return type(layer) in (keras.Sequential, Functional)


def is_default_get_config(cls):
    """Whether `cls.get_config` is Keras's auto-generated default."""
    return getattr(cls.get_config, "_is_default", False)


def has_auto_name(layer):
    """Whether `layer.name` is one Keras made up from its class name.

    Keras names an unnamed layer `to_snake_case(ClassName)` plus `_N`;
    such names differ each time a model is rebuilt.
    """
    base = naming.to_snake_case(type(layer).__name__)
    return re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name) is not None


def set_serialized_name(cls, registered_name):
    """Makes Keras serialize instances of `cls` as `registered_name`.

    `keras.saving.register_keras_serializable` would also point the name
    at `cls`, overwriting the loader registered under it; this sets only
    the class -> name direction that `keras.saving.get_registered_name`
    reads.
    """
    object_registration.GLOBAL_CUSTOM_NAMES[cls] = registered_name
