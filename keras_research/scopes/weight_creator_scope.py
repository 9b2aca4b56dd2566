"""`weight_creator_scope`: the Keras 3 counterpart of variable creators."""

import threading

from keras_research.scopes import _add_weight_hook

_state = threading.local()


def _creator_stack():
    if not hasattr(_state, "creators"):
        _state.creators = []
    return _state.creators


def in_add_weight():
    """Whether this thread is inside a `Layer.add_weight` call we hooked.

    TensorFlow variable creators use it to leave alone the `tf.Variable`
    that Keras creates inside each `keras.Variable`.
    """
    return getattr(_state, "add_weight_depth", 0) > 0


def _dispatch(layer, kwargs):
    """Runs one `add_weight` call through this thread's creators."""
    creators = list(_creator_stack())

    def check_layer(kw):
        if kw.get("layer", layer) is not layer:
            raise ValueError(
                "A weight creator cannot move a weight to another "
                f"layer. Received: layer={kw['layer']!r}, while "
                f"creating a weight of layer {layer.name!r}."
            )
        kw["layer"] = layer

    def base_creator(**kw):
        check_layer(kw)
        del kw["layer"]
        return _add_weight_hook.original_add_weight(layer, **kw)

    def make_next(index):
        if index < 0:
            return base_creator

        def next_creator(**kw):
            check_layer(kw)
            return creators[index](make_next(index - 1), **kw)

        return next_creator

    _state.add_weight_depth = getattr(_state, "add_weight_depth", 0) + 1
    try:
        return make_next(len(creators) - 1)(**kwargs)
    finally:
        _state.add_weight_depth -= 1


class weight_creator_scope:
    """Routes every Keras weight created inside it through `creator`.

    The Keras 3 counterpart of `tf.variable_creator_scope`. In Keras 3 a
    TensorFlow variable creator only sees the `tf.Variable` hidden inside
    each `keras.Variable` (with `shape=None` and a callable initial value),
    too late to change how a layer stores its state. This scope works one
    level up: every call to `keras.layers.Layer.add_weight` (which every
    Keras layer uses for its weights, in `build` or in `__init__`) made in
    this thread while the scope is active goes through

    ```python
    creator(next_creator, **kwargs)
    ```

    where `kwargs` are the arguments given to `add_weight` (`shape`,
    `initializer`, `dtype`, `trainable`, `autocast`, `regularizer`,
    `constraint`, `aggregation`, `overwrite_with_gradient`, `name`, as
    passed: arguments the layer left out are absent) plus `layer`, the
    layer that asked for the weight. The creator may call
    `next_creator(**kwargs)` unchanged, call it with changed arguments
    (any number of times, e.g. to create the parts of a composite weight:
    each call creates and tracks a weight of `layer`), or return a
    substitute object of its own. Whatever it returns is what the layer
    receives from `add_weight`.

    Scopes nest: the innermost creator runs first and its `next_creator`
    is the next scope out; the outermost one's `next_creator` is Keras's
    own `add_weight`. Scopes are thread-local, so a scope in one thread
    never affects layers built in another.

    Only layers *built* inside the scope are affected: Keras layers create
    their weights lazily, on their first call (or an explicit `build`).

    Implementation note: Keras 3 has no public hook for this, so while at
    least one scope is active (in any thread) `keras.layers.Layer.add_weight`
    is a thin dispatcher wrapping the `add_weight` that was current when the
    first scope opened (Keras's own, or another library's wrapper); that
    function is put back when the last scope exits. Importing keras_research
    changes nothing. Threads with no active scope go straight through.

    Args:
        creator: callable `creator(next_creator, **kwargs)` returning the
            weight to give to the layer.

    Raises:
        ValueError: if `creator` is not callable.

    Example:

    >>> import keras
    >>> import keras_research
    >>> names = []
    >>> def log_creator(next_creator, **kwargs):
    ...     names.append((kwargs["layer"].name, kwargs["name"]))
    ...     return next_creator(**kwargs)
    >>> with keras_research.weight_creator_scope(log_creator):
    ...     layer = keras.layers.Dense(3, name="dense_logged")
    ...     layer.build((None, 2))
    >>> names
    [('dense_logged', 'kernel'), ('dense_logged', 'bias')]
    """

    def __init__(self, creator):
        if not callable(creator):
            raise ValueError(
                "`creator` must be a callable "
                "`creator(next_creator, **kwargs)`. "
                f"Received: creator={creator!r}"
            )
        self.creator = creator
        self._entered = 0

    def __enter__(self):
        _add_weight_hook.acquire_add_weight_hook(_dispatch)
        _creator_stack().append(self.creator)
        self._entered += 1
        return self

    def __exit__(self, *exc_info):
        stack = _creator_stack()
        # Scopes are normally exited in reverse order; tolerate a generator
        # or a thread that exits them out of order.
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is self.creator:
                del stack[index]
                break
        self._entered -= 1
        _add_weight_hook.release_add_weight_hook()
        return False

